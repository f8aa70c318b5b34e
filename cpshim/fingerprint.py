"""Fingerprints of the upstream code a patch depends on, comparable between wheels and a live process.

A *component* names upstream code (the `watch` entries of a `Patch` in `cpshim.patches.catalog`):

- ``"module:qualname"``: a function, method or class, e.g.
  ``"transformers.trainer:Trainer._prepare_context_parallel_inputs"`` or
  ``"transformers.trainer_pt_utils:is_attention_mask_causal"``;
- ``"module:qualname@name"``: only the statements of that function that mention ``name`` (call sites),
  e.g. ``"transformers.trainer:Trainer.training_step@_prepare_context_parallel_inputs"``.

Each component hashes to a 16-hex-digit string, or to one of the fixed markers:

- ``ABSENT`` (``"absent"``): the module, class or attribute does not exist;
- ``OPAQUE`` (``"opaque"``): the name exists but is not a ``def``/``class`` written in that module
  (an assignment, an import from elsewhere, a builtin, a wrapper without ``__wrapped__``);
- ``UNMENTIONED`` (``"unmentioned"``): the function exists but no statement of it mentions ``name``;
- ``UNAVAILABLE`` (``"unavailable"``, live path only): the code exists but its source cannot be read.

Two paths compute the same hash for the same release (the tests check it on installed releases):

- :func:`component_hash_from_source` reads a module's source text (used on files inside wheels by
  ``compat_matrix/generate.py``; nothing is imported);
- :func:`component_hash_live` reads already-imported code: ``sys.modules[module]``, then each part of
  the qualname through the raw ``__dict__`` entries (for classes: of the first class in the MRO that
  is defined in that same module, which is all the wheel path can see); ``property`` gives its getter,
  ``staticmethod``/``classmethod`` their function, ``functools.cached_property`` its ``func``. The
  function is then identified by its *code object* (file and ``co_qualname``), following
  ``__wrapped__`` chains and closure cells of wrappers that lack ``__wrapped__`` (accelerate's
  ``on_main_process``), and stopping at the first match (``@wraps(torch.nn.Module.cuda)`` points
  ``__wrapped__`` at torch). Its source comes from ``linecache`` (the lines from ``co_firstlineno``,
  i.e. the first decorator, to the end of the block), parsed alone: the whole module file is never
  parsed (``transformers/trainer.py`` is huge). Results are cached per code object
  (:func:`clear_cache`). Fingerprint *before* patching, or give the replacement a ``__wrapped__``
  pointing at the original; otherwise the result is ``OPAQUE``.

  Known limit, shared by both paths: ``Cls.attr = other`` assigned at module level after the class
  body is not seen by the wheel path; the live path sees the replacement (``OPAQUE`` unless it runs
  the same code, as transformers' ``copy_func`` does). The tests compare both paths on every def of
  the main upstream modules.

Normalisation (what is hashed), version ``NORMALISER``:

- the source is parsed with :mod:`ast`; comments, blank lines, formatting, line breaks, quoting style
  and indentation therefore do not count;
- docstrings and every other bare string-literal statement are dropped (they do nothing);
- annotations of parameters and return values are dropped (not evaluated at call time;
  ``Optional[int]`` -> ``int | None`` is not a behaviour change); annotated assignments are kept
  (in class bodies they make dataclass fields);
- everything else is kept: decorators (``@contextmanager``, ``@staticmethod`` change behaviour),
  names, default values, operators and comparisons, and string constants (error messages included:
  a changed message gives a new hash, which only ever makes a release ``untested``, never wrong);
- the AST is written by an explicit serializer, not ``ast.dump``, so that the text does not depend on
  the Python version (fields are sorted, ``None``/empty fields, ``ctx`` and ``kind`` are left out,
  adjacent f-string literal parts are merged).

``@name`` selection (call sites), kept simple on purpose:

- every simple statement in the function's body (recursing into ``if``/``for``/``while``/``with``/
  ``try``/``match`` blocks and nested ``def``s) that mentions ``name`` -- as a variable, an attribute
  (``self.name``), a keyword argument, an imported name, or a string constant equal to ``name``;
- for a compound statement whose *header* (``if`` test, ``with`` items, ``for`` iterator, ...)
  mentions ``name``: the header only, then its blocks are searched as above;
- every selected statement carries the headers of the blocks that enclose it (e.g. the ``if`` test and
  branch it sits in), so moving a call under a new condition changes the hash;
- plus every ``with`` header, anywhere in the function, whose context expressions use a variable bound
  by a selected assignment (``cp_context, inputs = self._prepare_context_parallel_inputs(...)`` then
  ``with cp_context():``). The body of that ``with`` is not included: which statements run inside it
  (the whole step in ``training_step``) changes for reasons unrelated to the call site;
- the order of the call relative to statements that do not mention ``name`` is not captured.

A patch's fingerprint (:func:`patch_fingerprint`) combines the hashes of its ``watch`` components, in
catalog order. :func:`lookup` says which tested releases (``cpshim/_data/fingerprints.json``, written by
``python compat_matrix/generate.py``) have the same fingerprint.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "NORMALISER", "ABSENT", "OPAQUE", "UNMENTIONED", "UNAVAILABLE", "MARKERS",
    "parse_component", "normalise", "source_hash", "parse_source", "ParsedSource",
    "component_hash_from_source", "component_hash_live",
    "combine", "patch_component_hashes", "patch_fingerprint", "load_data", "lookup", "lookup_component",
    "check", "FingerprintCheck", "clear_cache",
]

#: Version of the normalisation; stored in the generated data, which is ignored when it differs.
NORMALISER = 1

ABSENT = "absent"
OPAQUE = "opaque"
UNMENTIONED = "unmentioned"
UNAVAILABLE = "unavailable"
MARKERS = frozenset({ABSENT, OPAQUE, UNMENTIONED, UNAVAILABLE})

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_BLOCK_FIELDS = ("body", "orelse", "handlers", "finalbody", "cases")
_SKIP_FIELDS = frozenset({"ctx", "type_comment", "kind", "type_ignores"})


# --------------------------------------------------------------------------- component names

def parse_component(component: str) -> tuple[str, str, str | None]:
    """``"mod:Qual.name@mention"`` -> ``("mod", "Qual.name", "mention")`` (mention may be None)."""
    module, sep, rest = component.partition(":")
    qualname, _, mention = rest.partition("@")
    if not sep or not module or not qualname or any(not p for p in qualname.split(".")):
        raise ValueError(f"bad component {component!r}: expected 'module:qualname' or 'module:qualname@name'")
    return module, qualname, (mention or None)


# --------------------------------------------------------------------------- canonical text

def _is_string_stmt(st: ast.AST) -> bool:
    return isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant) and isinstance(st.value.value, str)


def _joined_values(values: list) -> list:
    """f-string parts with adjacent literal parts merged and empty ones dropped (differs by Python)."""
    out: list = []
    for v in values:
        if isinstance(v, ast.Constant) and isinstance(v.value, str):
            if not v.value:
                continue
            if out and isinstance(out[-1], str):
                out[-1] += v.value
                continue
            out.append(v.value)
        else:
            out.append(v)
    return out


_FIELDS: dict = {}
_STMT_LISTS = frozenset({"body", "orelse", "finalbody"})


def _fields_of(cls: type) -> tuple:
    """The fields of an AST class that are hashed, sorted (field order and new fields vary by Python)."""
    out = []
    for name in sorted(cls._fields):  # type: ignore[attr-defined]
        if name in _SKIP_FIELDS:
            continue
        if name == "annotation" and cls is ast.arg:
            continue
        if name == "returns" and cls in (ast.FunctionDef, ast.AsyncFunctionDef):
            continue
        out.append(name)
    return tuple(out)


def _canon(node: object, out: list, omit_blocks: bool = False) -> None:
    if isinstance(node, ast.AST):
        cls = type(node)
        out.append(cls.__name__)
        out.append("(")
        if cls is ast.JoinedStr:
            out.append("values=[")
            for v in _joined_values(node.values):  # type: ignore[attr-defined]
                if isinstance(v, str):
                    out.append("str:" + repr(v))
                else:
                    _canon(v, out)
                out.append(",")
            out.append("])")
            return
        fields = _FIELDS.get(cls)
        if fields is None:
            fields = _FIELDS[cls] = _fields_of(cls)
        for name in fields:
            if omit_blocks and name in _BLOCK_FIELDS:
                continue
            val = getattr(node, name, None)
            if name in _STMT_LISTS and isinstance(val, list):
                val = [st for st in val if not _is_string_stmt(st)]
            if val is None or (isinstance(val, list) and not val):
                continue
            out.append(name)
            out.append("=")
            _canon(val, out)
            out.append(",")
        out.append(")")
    elif isinstance(node, list):
        out.append("[")
        for item in node:
            _canon(item, out)
            out.append(",")
        out.append("]")
    elif node is None:
        out.append("None")
    else:
        out.append(type(node).__name__ + ":" + repr(node))


def _text(node: ast.AST, omit_blocks: bool = False) -> str:
    out: list = []
    _canon(node, out, omit_blocks)
    return "".join(out)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- @name selection

def _is_mention(n: ast.AST, name: str) -> bool:
    if isinstance(n, ast.Name):
        return n.id == name
    if isinstance(n, ast.Attribute):
        return n.attr == name
    if isinstance(n, ast.keyword):
        return n.arg == name
    if isinstance(n, ast.alias):
        return name in (n.asname, n.name, n.name.rpartition(".")[2])
    if isinstance(n, ast.Constant):
        return isinstance(n.value, str) and n.value == name
    if isinstance(n, _DEFS):
        return n.name == name
    if isinstance(n, ast.arg):
        return n.arg == name
    return False


def _contains(node: ast.AST, name: str) -> bool:
    if _is_mention(node, name):
        return True
    for child in ast.iter_child_nodes(node):
        if _contains(child, name):
            return True
    return False


def _header_contains(st: ast.AST, name: str) -> bool:
    if isinstance(st, _DEFS) and st.name == name:
        return True
    for field in st._fields:
        if field in _BLOCK_FIELDS:
            continue
        val = getattr(st, field, None)
        for v in val if isinstance(val, list) else [val]:
            if isinstance(v, ast.AST) and _contains(v, name):
                return True
    return False


def _touches(st: Any, hits: frozenset | None) -> bool:
    """Whether a statement's lines contain the name as text (a pre-filter; None: no filter)."""
    if hits is None:
        return True
    return any(n in hits for n in range(st.lineno, (st.end_lineno or st.lineno) + 1))


def _blocks(st: ast.AST) -> list[tuple[str, list]]:
    """(label, statements) for each block of a compound statement, in source order."""
    out = []
    for field in _BLOCK_FIELDS:
        val = getattr(st, field, None)
        if not val:
            continue
        if field == "handlers":
            for h in val:
                out.append(("except " + _text(h, omit_blocks=True), h.body))
        elif field == "cases":
            for c in val:
                out.append(("case " + _text(c, omit_blocks=True), c.body))
        else:
            out.append((field, val))
    return out


def _select(stmts: list, name: str, hits: frozenset | None, path: tuple, out: list) -> None:
    for st in stmts:
        if _is_string_stmt(st) or not _touches(st, hits):
            continue
        blocks = _blocks(st)
        if not blocks:
            if _contains(st, name):
                out.append((st, path, False))
            continue
        if _header_contains(st, name):
            out.append((st, path, True))
        header = _text(st, omit_blocks=True)
        for label, block in blocks:
            _select(block, name, hits, path + (header + "." + label,), out)


def _with_users(stmts: list, bound: set, path: tuple, out: list) -> None:
    """Every with-header whose context expressions use a name in `bound`."""
    for st in stmts:
        blocks = _blocks(st)
        if not blocks:
            continue
        if isinstance(st, (ast.With, ast.AsyncWith)) and any(
            isinstance(n, ast.Name) and n.id in bound for it in st.items for n in ast.walk(it.context_expr)
        ):
            out.append((st, path, True))
        header = _text(st, omit_blocks=True)
        for label, block in blocks:
            _with_users(block, bound, path + (header + "." + label,), out)


def _mention_text(func: Any, name: str, lines: list | None = None) -> str | None:
    body = getattr(func, "body", None)
    if not isinstance(body, list):
        return None
    hits = None
    if lines is not None:  # lines[i] is line i + 1 of the text `func` was parsed from
        hits = frozenset(n for n in range(func.lineno, (func.end_lineno or func.lineno) + 1)
                         if name in lines[n - 1])
    picked: list = []
    _select(body, name, hits, (), picked)
    if not picked:
        return None
    bound = set()
    for st, _, _ in picked:
        if isinstance(st, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = st.targets if isinstance(st, ast.Assign) else [st.target]
            bound |= _bound_names(targets)
    if bound:
        users: list = []
        _with_users(body, bound, (), users)
        seen = {id(st) for st, _, _ in picked}
        picked.extend(u for u in users if id(u[0]) not in seen)
    picked.sort(key=lambda item: (item[0].lineno, item[0].col_offset))
    lines = []
    for st, path, header_only in picked:
        lines.append(" > ".join(path) + " :: " + _text(st, omit_blocks=header_only))
    return "\n".join(lines)


def normalise(node: ast.AST, mention: str | None = None, lines: list | None = None) -> str | None:
    """Canonical text of a def/class node, or of its statements mentioning `mention` (None if none).

    `lines`: the lines of the text `node` was parsed from (``text.split("\\n")``). With them, only
    statements whose lines contain `mention` as text are examined (much faster on big functions); both
    the wheel and the live path pass them, so a mention spelled without its text (``"_pre" "p"``) is
    not seen by either.
    """
    if mention is None:
        return _text(node)
    return _mention_text(node, mention, lines)


def _node_hash(node: ast.AST, mention: str | None, lines: list | None) -> str:
    if mention is not None and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return OPAQUE
    text = normalise(node, mention, lines)
    return UNMENTIONED if text is None else _hash(text)


def _newlines(text: str) -> str:
    """Universal newlines, as the import system reads source (line numbers then match ``split``)."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _parse_def(source: str) -> tuple[ast.AST, list]:
    """Parse the source of one def/class as returned by inspect.getsource (possibly indented).

    Returns the node and the lines of the parsed text (node line numbers index them, 1-based)."""
    source = _newlines(source)
    if source[:1] in (" ", "\t"):
        source = "if 1:\n" + source
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    else:
        body = ast.parse(source).body
    if len(body) != 1 or not isinstance(body[0], _DEFS):
        raise ValueError("source is not a single def or class statement")
    return body[0], source.split("\n")


def source_hash(source: str, mention: str | None = None) -> str:
    """Hash of the source text of one function or class (the text ``inspect.getsource`` returns)."""
    node, lines = _parse_def(source)
    return _node_hash(node, mention, lines)


# --------------------------------------------------------------------------- wheel path

def _is_accessor(node: ast.AST, name: str) -> bool:
    """`@name.setter` / `@name.deleter` defs: the live path reads the property's getter."""
    return any(
        isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter", "getter")
        and isinstance(d.value, ast.Name) and d.value.id == name
        for d in getattr(node, "decorator_list", ())
    )


def _bound_names(targets: list) -> set:
    """Names an assignment binds (``a``, ``a, b``, ``*a``); not ``a.x = ...`` or ``a[i] = ...``."""
    out: set = set()
    stack = list(targets)
    while stack:
        t = stack.pop()
        if isinstance(t, ast.Name):
            out.add(t.id)
        elif isinstance(t, (ast.Tuple, ast.List)):
            stack.extend(t.elts)
        elif isinstance(t, ast.Starred):
            stack.append(t.value)
    return out


def _binding(body: list, name: str) -> object:
    """The last statement binding `name` in a module or class body (looking into if/try/with blocks):
    the def/class node, OPAQUE for any other binding (assignment, import), None when unbound."""
    found: object = None

    def scan(stmts: list) -> None:
        nonlocal found
        for st in stmts:
            if isinstance(st, _DEFS):
                if st.name == name and not _is_accessor(st, name):
                    found = st
            elif isinstance(st, (ast.If, ast.Try, ast.With, ast.AsyncWith)) or type(st).__name__ == "TryStar":
                for _, block in _blocks(st):
                    scan(block)
            elif isinstance(st, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = st.targets if isinstance(st, ast.Assign) else [st.target]
                if isinstance(st, ast.AnnAssign) and st.value is None:
                    continue
                if name in _bound_names(targets):
                    found = OPAQUE
            elif isinstance(st, (ast.Import, ast.ImportFrom)):
                for a in st.names:
                    if (a.asname or a.name.partition(".")[0]) == name:
                        found = OPAQUE

    scan(body)
    return found


def _same_module_mro(tree: ast.Module, cls: ast.ClassDef) -> list:
    """`cls` and its base classes defined (as plain names) in the same module, depth first."""
    out: list = []

    def visit(c: ast.ClassDef) -> None:
        if any(c is o for o in out):
            return
        out.append(c)
        for base in c.bases:
            if isinstance(base, ast.Name):
                b = _binding(tree.body, base.id)
                if isinstance(b, ast.ClassDef):
                    visit(b)

    visit(cls)
    return out


def _resolve_in_tree(tree: ast.Module, qualname: str) -> object:
    parts = qualname.split(".")
    node = _binding(tree.body, parts[0])
    for part in parts[1:]:
        if node is None:
            return None
        if not isinstance(node, ast.ClassDef):
            return OPAQUE
        found = None
        for cls in _same_module_mro(tree, node):
            found = _binding(cls.body, part)
            if found is not None:
                break
        node = found
    return node


class ParsedSource:
    """A module's source, parsed once for several components (see :func:`parse_source`)."""

    __slots__ = ("tree", "lines")

    def __init__(self, text: str):
        text = _newlines(text)
        self.tree = ast.parse(text)
        self.lines = text.split("\n")


def parse_source(module_source_text: str) -> ParsedSource:
    """Parse a module's text once, to hash several of its components (``transformers/trainer.py``)."""
    return ParsedSource(module_source_text)


def component_hash_from_source(module_source_text: str | ParsedSource | None, qualname: str,
                               mention: str | None = None) -> str:
    """Hash of `qualname` (optionally only its statements mentioning `mention`) in a module's source.

    `module_source_text` is the module's text, a :func:`parse_source` of it (to parse a big module
    once for several components), or None when the module does not exist (-> ``ABSENT``).
    """
    if module_source_text is None:
        return ABSENT
    parsed = module_source_text if isinstance(module_source_text, ParsedSource) else ParsedSource(module_source_text)
    node = _resolve_in_tree(parsed.tree, qualname)
    if node is None:
        return ABSENT
    if node is OPAQUE:
        return OPAQUE
    return _node_hash(node, mention, parsed.lines)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- live path

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
        obj = getattr(obj, "__wrapped__", None)
    return None


def component_hash_live(component: str, *, import_missing: bool = True) -> str:
    """Hash of `component` in this process (see the module docstring for how it is found).

    A module that is not imported yet is imported when `import_missing` (a module that does not exist
    gives ``ABSENT``); with ``import_missing=False`` it counts as ``ABSENT``.
    """
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
            if parsed is None:
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


# --------------------------------------------------------------------------- patches

def combine(components, hashes) -> str:
    """Fingerprint of a patch: its components (in catalog order) with their hashes, hashed together."""
    return _hash("".join(f"{c}={hashes[c]}\n" for c in components))


def patch_component_hashes(patch, *, import_missing: bool = True) -> dict[str, str]:
    """``{component: hash}`` (live) for every ``watch`` entry of `patch`, in catalog order."""
    return {c: component_hash_live(c, import_missing=import_missing) for c in patch.watch}


def patch_fingerprint(patch, *, import_missing: bool = True) -> str:
    """Combined live fingerprint of `patch`'s ``watch`` components."""
    return combine(patch.watch, patch_component_hashes(patch, import_missing=import_missing))


_DATA: dict | None = None


def load_data() -> dict:
    """The shipped ``cpshim/_data/fingerprints.json`` (read once, cached). ``{}`` if it is missing."""
    global _DATA
    if _DATA is None:
        import json
        import os

        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_data", "fingerprints.json")
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            data = {}
        if data.get("normaliser") != NORMALISER:
            data = {}
        _DATA = data
    return _DATA


def _entry(patch_id: str) -> dict:
    return load_data().get("patches", {}).get(patch_id, {})


def lookup(patch_id: str, fingerprint: str) -> tuple[str, ...]:
    """Tested releases (of the patch's dist) whose fingerprint for `patch_id` equals `fingerprint`.

    Empty: it differs from every tested release (or the patch is not in the shipped data).
    """
    return tuple(_entry(patch_id).get("fingerprints", {}).get(fingerprint, ()))


def lookup_component(patch_id: str, component: str, component_hash: str) -> tuple[str, ...]:
    """Tested releases in which `component` (a watch entry of `patch_id`) hashes to `component_hash`."""
    return tuple(_entry(patch_id).get("components", {}).get(component, {}).get(component_hash, ()))


class FingerprintCheck:
    """Outcome of :func:`check`: the live fingerprint of one patch against the tested releases.

    ``releases``: tested releases with the same fingerprint (empty: untested code). ``unmatched``:
    components whose own hash matches no tested release. ``stale``: the shipped data was generated
    for another ``watch`` list (regenerate it). ``reason``: None when matched, else a sentence for the
    report (without the version prefix, which the caller adds).
    """

    __slots__ = ("patch_id", "fingerprint", "components", "releases", "unmatched", "stale", "reason")

    def __init__(self, patch_id, fingerprint, components, releases, unmatched, stale, reason):
        self.patch_id = patch_id
        self.fingerprint = fingerprint
        self.components = components
        self.releases = releases
        self.unmatched = unmatched
        self.stale = stale
        self.reason = reason

    @property
    def matched(self) -> bool:
        return bool(self.releases)

    def __repr__(self) -> str:
        return (f"FingerprintCheck({self.patch_id!r}, fingerprint={self.fingerprint!r}, "
                f"releases={self.releases!r}, unmatched={self.unmatched!r}, stale={self.stale!r})")


def _short(component: str) -> str:
    _, qualname, mention = parse_component(component)
    return f"{qualname} (statements mentioning {mention})" if mention else qualname


def check(patch, *, import_missing: bool = True) -> FingerprintCheck:
    """Live fingerprint of `patch` compared with the shipped data, with a reason when it matches nothing."""
    hashes = patch_component_hashes(patch, import_missing=import_missing)
    fp = combine(patch.watch, hashes)
    entry = _entry(patch.id)
    stale = tuple(entry.get("watch", ())) != tuple(patch.watch)
    releases = () if stale else lookup(patch.id, fp)
    unmatched = tuple(c for c in patch.watch if not lookup_component(patch.id, c, hashes[c]))
    reason = None
    if stale:
        reason = (f"cpshim's fingerprint data has no entry for patch {patch.id!r} with its current watch list "
                  f"(regenerate it: python compat_matrix/generate.py)")
    elif not releases:
        if unmatched:
            reason = "; ".join(f"{_short(c)} differs from every tested release" for c in unmatched)
        else:
            reason = ("each watched component matches some tested release, but their combination "
                      "matches none")
    return FingerprintCheck(patch.id, fp, hashes, releases, unmatched, stale, reason)
