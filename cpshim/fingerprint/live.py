"""The live path: hashes of already-imported code (:func:`component_hash_live`).

It reads already-imported code: ``sys.modules[module]``, then each part of
the qualname through the raw ``__dict__`` entries (for classes: of the first class in the MRO that
is defined in that same module, which is all the wheel path can see); ``property`` gives its getter,
``staticmethod``/``classmethod`` their function, ``functools.cached_property`` its ``func``. The
function is then identified by its *code object* (file and ``co_qualname``), following
``__wrapped__`` chains and closure cells of wrappers that lack ``__wrapped__`` (accelerate's
``on_main_process``; kernels' function modules, through their class's ``forward``), and stopping
at the first match (``@wraps(torch.nn.Module.cuda)`` points ``__wrapped__`` at torch). Its source
comes from ``linecache`` (the lines from ``co_firstlineno``, i.e. the first decorator, to the end of
the block), parsed alone: the whole module file is never
parsed (``transformers/trainer.py`` is huge). Results are cached per code object
(:func:`clear_cache`). Fingerprint *before* patching, or give the replacement a ``__wrapped__``
pointing at the original; otherwise the result is ``OPAQUE``.

Known limit, shared by both paths: ``Cls.attr = other`` assigned at module level after the class
body is not seen by the wheel path; the live path sees the replacement (``OPAQUE`` unless it runs
the same code, as transformers' ``copy_func`` does). The tests compare both paths on every def of
the main upstream modules.
"""

from __future__ import annotations

import ast
import inspect
import sys

from . import schemas
from .components import ABSENT, OPAQUE, SIGNATURE, UNAVAILABLE, parse_component
from .source import _node_hash, _parse_def

_MISSING = object()


def _live_object(module: str, qualname: str, import_missing: bool) -> tuple[object, str]:
    """(object, expected __qualname__) or (marker, '')."""
    mod = sys.modules.get(module)
    if mod is None:
        if not import_missing:
            return ABSENT, ""
        import importlib

        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
                return ABSENT, ""
            raise
    parts = qualname.split(".")
    obj = vars(mod).get(parts[0], _MISSING)
    owner = ""
    for part in parts[1:]:
        if obj is _MISSING:
            return ABSENT, ""
        if not isinstance(obj, type):
            return OPAQUE, ""
        if obj.__module__ != module:  # a class imported from elsewhere: not written in this module
            return OPAQUE, ""
        found = _MISSING
        for cls in obj.__mro__:
            if cls.__module__ != module:
                continue
            d = cls.__dict__
            if part in d:
                found, owner = d[part], cls.__qualname__
                break
        obj = found
    if obj is _MISSING:
        return ABSENT, ""
    if isinstance(obj, property):
        obj = obj.fget
    elif isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    elif not isinstance(obj, type) and not inspect.isfunction(obj) and inspect.isfunction(getattr(obj, "func", None)):
        obj = obj.func  # functools.cached_property
    expected = f"{owner}.{parts[-1]}" if owner else parts[-1]
    return obj, expected


def _original(obj: object, filename: str, expected: str, depth: int = 4) -> object:
    """The function whose code is `expected` (a qualname) in the file `filename`, found from `obj`
    through ``__wrapped__`` chains and, for wrappers without ``__wrapped__`` (e.g. accelerate's
    ``on_main_process``), their closure cells. None when there is none. The code object decides, not
    ``__module__``/``__qualname__``, which ``@wraps(torch.nn.Module.cuda)`` overwrites."""
    seen: set = set()
    while obj is not None and id(obj) not in seen:  # stop at the first match: `@wraps(torch...)` goes too far
        seen.add(id(obj))
        if inspect.isfunction(obj):
            code = obj.__code__
            qual = getattr(code, "co_qualname", None)  # Python 3.11+; 3.10 compares the bare name
            if code.co_filename == filename and (
                qual == expected if qual is not None else code.co_name == expected.rpartition(".")[2]
            ):
                return obj
            if depth and obj.__closure__:
                for cell in obj.__closure__:
                    try:
                        inner = cell.cell_contents
                    except ValueError:  # empty cell
                        continue
                    if callable(inner) and not isinstance(inner, type):
                        found = _original(inner, filename, expected, depth - 1)
                        if found is not None:
                            return found
        elif depth and not isinstance(obj, type) and inspect.isfunction(getattr(type(obj), "forward", None)):
            # kernels' function modules (transformers >= 5.25 requires kernels): `@use_kernel_forward_from_hub` on
            # a function leaves an nn.Module instance whose class's forward closes over the function
            found = _original(type(obj).forward, filename, expected, depth - 1)  # type: ignore[attr-defined]
            if found is not None:
                return found
        obj = getattr(obj, "__wrapped__", None)
    return None


def component_hash_live(component: str, *, import_missing: bool = True) -> str:
    """Hash of `component` in this process (see the module docstring for how it is found).

    A module that is not imported yet is imported when `import_missing` (a module that does not exist
    gives ``ABSENT``); with ``import_missing=False`` it counts as ``ABSENT``.
    """
    if schemas.is_schema_component(component):
        return schemas.hash_live(component, import_missing=import_missing)
    module, qualname, mention = parse_component(component)
    obj, expected = _live_object(module, qualname, import_missing)
    if isinstance(obj, str):
        return obj
    if obj is None:
        return OPAQUE
    mod = sys.modules[module]
    if isinstance(obj, type):
        if obj.__module__ != module or obj.__qualname__ != expected:
            return OPAQUE
        try:
            node, lines = _parse_def(inspect.getsource(obj))
            return _node_hash(node, mention, lines)
        except (OSError, TypeError, SyntaxError, ValueError, IndexError):
            return UNAVAILABLE
    func = _original(obj, getattr(mod, "__file__", None) or "", expected)
    if func is None:
        return OPAQUE
    key = (func.__code__, mention)  # type: ignore[attr-defined]
    cached = _HASHES.get(key)
    if cached is None:
        try:
            parsed = _NODES.get(key[0])
            if parsed is None and mention == SIGNATURE:
                parsed = _header_node(func, mod)  # what is hashed is in the header: skip the body
            elif parsed is None:
                parsed = _function_node(func, mod)
                if len(_NODES) >= 4:
                    _NODES.pop(next(iter(_NODES)))
                _NODES[key[0]] = parsed
        except (OSError, TypeError, SyntaxError, ValueError, IndexError):
            return UNAVAILABLE
        cached = _HASHES[key] = _node_hash(parsed[0], mention, parsed[1])
    return cached


#: Live results by (code object, mention): the code that runs cannot change under a code object.
_HASHES: dict = {}
#: The last few parsed functions, for several `@name` components of one function (Accelerator.__init__).
_NODES: dict = {}


def clear_cache() -> None:
    """Forget cached live results (tests; or after editing upstream files in place)."""
    _HASHES.clear()
    _NODES.clear()


def _last_line(code: object) -> int:
    """The last source line that has bytecode in `code` or in the code objects nested in it."""
    last = max((ln for _, _, ln in code.co_lines() if ln is not None), default=0)  # type: ignore[attr-defined]
    for const in code.co_consts:  # type: ignore[attr-defined]
        if hasattr(const, "co_lines"):
            last = max(last, _last_line(const))
    return last


def _header_node(func: object, mod: object) -> tuple[ast.AST, list]:
    """The def's decorators and header alone, parsed with a `pass` body (signature components): the
    shortest run of lines from the first decorator that ends with `:` and parses as one def."""
    import linecache

    code = func.__code__  # type: ignore[attr-defined]
    lines = linecache.getlines(code.co_filename, vars(mod))
    start = code.co_firstlineno - 1
    if not lines or not (0 <= start < len(lines)):
        raise OSError(f"no source for {code.co_name}")
    indent = lines[start][:len(lines[start]) - len(lines[start].lstrip())]
    for end in range(start + 1, min(len(lines), code.co_firstlineno + 200) + 1):
        text = "".join(lines[start:end]).rstrip()
        if not text.endswith(":"):
            continue
        try:
            node, parsed_lines = _parse_def(text + "\n" + indent + "    pass\n")
        except (SyntaxError, ValueError):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return node, parsed_lines
    return _function_node(func, mod)


def _function_node(func: object, mod: object) -> tuple[ast.AST, list]:
    """The parsed ``inspect.getsource(func)``, without following ``__wrapped__`` (which would leave
    the module for ``@wraps(torch...)`` methods), without ``inspect.getmodule``'s scan of sys.modules,
    and (fast path) without tokenizing: the function ends after the last line that has bytecode, at the
    first following code line indented no deeper than its first line. When that text does not parse
    (a string literal with lines at column 0 at the very end), ``inspect.getblock`` decides."""
    import linecache

    code = func.__code__  # type: ignore[attr-defined]
    lines = linecache.getlines(code.co_filename, vars(mod))
    start = code.co_firstlineno - 1  # the first decorator's line, for decorated functions
    if not lines or not (0 <= start < len(lines)):
        raise OSError(f"no source for {code.co_name}")
    first = lines[start]
    indent = len(first) - len(first.lstrip())
    end = max(_last_line(code), start + 1)
    while end < len(lines):
        line = lines[end]
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and len(line) - len(line.lstrip()) <= indent:
            break
        end += 1
    try:
        return _parse_def("".join(lines[start:end]))
    except (SyntaxError, ValueError):
        return _parse_def("".join(inspect.getblock(lines[start:])))
