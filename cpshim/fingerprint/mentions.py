"""The statements of a function that mention a name (``module:qualname@name`` components).

Kept simple on purpose:

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
"""

from __future__ import annotations

import ast

from .canonical import _BLOCK_FIELDS, _DEFS, _blocks, _is_string_stmt, _text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


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
