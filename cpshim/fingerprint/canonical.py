"""The canonical text of an AST node and its hash: what a fingerprint hashes.

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
"""

from __future__ import annotations

import ast
import hashlib

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_BLOCK_FIELDS = ("body", "orelse", "handlers", "finalbody", "cases")
_SKIP_FIELDS = frozenset({"ctx", "type_comment", "kind", "type_ignores"})


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
