"""The wheel path: hashes from a module's source text, nothing imported (``compat_matrix/generate.py``)."""

from __future__ import annotations

import ast

from .canonical import _DEFS, _blocks, _hash, _text
from .components import ABSENT, OPAQUE, SIGNATURE, UNMENTIONED
from .mentions import _bound_names, _mention_text


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
    if mention == SIGNATURE:  # what a caller depends on: parameters (defaults kept) and decorators
        return _hash(_text(node.args) + "".join(_text(d) for d in node.decorator_list))  # type: ignore[attr-defined]
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


def _is_accessor(node: ast.AST, name: str) -> bool:
    """`@name.setter` / `@name.deleter` defs: the live path reads the property's getter."""
    return any(
        isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter", "getter")
        and isinstance(d.value, ast.Name) and d.value.id == name
        for d in getattr(node, "decorator_list", ())
    )


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
