"""Operator schemas (``aten::name`` components): the calling convention of a torch op, as data.

cpshim's CUDA provider calls ``torch.ops.aten._flash_attention_forward/_backward`` directly; torch
renames and adds their arguments between releases (2.4 added the window sizes, 2.7 renamed
``philox_seed, philox_offset`` to ``rng_state, unused``, 2.12 added ``block_table, num_splits``). A
schema is readable on every build, CPU ones included, and from a wheel without installing it:

- live: ``str(torch.ops.aten.<name>.default._schema)``;
- wheel: the ``- func: <name>(...)`` line of ``torchgen/packaged/ATen/native/native_functions.yaml``.

Both are parsed into a :class:`Schema` and hashed from one canonical text (namespace, spacing and
the overload-less ``.default`` spelling do not count), so a release's two readings hash the same.
"""

from __future__ import annotations

from collections import namedtuple

from .canonical import _hash
from .components import ABSENT, UNAVAILABLE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PREFIX = "aten::"
NATIVE_FUNCTIONS = "torchgen/packaged/ATen/native/native_functions.yaml"


class Arg(namedtuple("Arg", ["name", "type", "default", "kwarg_only"])):
    """One parameter: ``default`` is its text (``"None"``, ``"1.0"``) or None when it has none."""

    __slots__ = ()

    @property
    def optional(self) -> bool:
        """Whether None is a value it takes (``Tensor?``, ``float?``)."""
        return self.type.endswith("?")


class Schema(namedtuple("Schema", ["name", "args", "returns"])):
    """A parsed operator schema; ``returns`` is a tuple of (type, name or None)."""

    __slots__ = ()

    def arg(self, name: str) -> Arg | None:
        return next((a for a in self.args if a.name == name), None)

    @property
    def return_names(self) -> tuple:
        return tuple(n for _, n in self.returns)

    def canonical(self) -> str:
        parts, star = [], False
        for a in self.args:
            if a.kwarg_only and not star:
                parts.append("*")
                star = True
            parts.append(f"{a.type} {a.name}" + ("" if a.default is None else f"={a.default}"))
        rets = ", ".join(t if n is None else f"{t} {n}" for t, n in self.returns)
        return f"{self.name}({', '.join(parts)}) -> ({rets})"


def is_schema_component(component: str) -> bool:
    return component.startswith(PREFIX)


def op_name(component: str) -> str:
    name = component[len(PREFIX):]
    if not name or not name.replace("_", "a").isalnum():
        raise ValueError(f"bad operator component {component!r}: expected 'aten::<op name>'")
    return name


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets and quotes."""
    out: list[str] = []
    cur: list[str] = []
    depth, quote = 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    tail = "".join(cur).strip()
    return out + [tail] if tail else out


def parse(text: str) -> Schema:
    """``[aten::]name[.overload](args) -> returns`` as printed by torch or written in native_functions.yaml."""
    text = " ".join(text.split())
    head, sep, rest = text.partition("(")
    depth, end = 1, -1
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            end = i
            break
    arrow = rest[end + 1:].strip() if end >= 0 else ""
    if not sep or end < 0 or not arrow.startswith("->"):
        raise ValueError(f"not an operator schema: {text[:120]!r}")
    name = head.strip().removeprefix(PREFIX).partition(".")[0]
    args, kwarg_only = [], False
    for item in _split_top(rest[:end]):
        if item == "*":
            kwarg_only = True
            continue
        decl, eq, default = item.partition("=")
        typ, _, arg_name = decl.strip().rpartition(" ")
        if not typ or not arg_name:
            raise ValueError(f"bad argument {item!r} in schema of {name}")
        args.append(Arg(arg_name, typ.replace(" ", ""), default.strip() if eq else None, kwarg_only))
    ret = arrow[2:].strip()
    if ret.startswith("(") and ret.endswith(")"):
        ret = ret[1:-1]
    returns = []
    for item in _split_top(ret):
        typ, _, ret_name = item.rpartition(" ")
        returns.append((typ.replace(" ", ""), ret_name) if typ else (item.replace(" ", ""), None))
    return Schema(name, tuple(args), tuple(returns))


def schema_hash(schema: Schema) -> str:
    return _hash(schema.canonical())


def from_native_functions(yaml_text: str | None, component: str) -> Schema | None:
    """The schema of the op's default overload in native_functions.yaml (None: the op is not there)."""
    if yaml_text is None:
        return None
    head = f"- func: {op_name(component)}("
    for line in yaml_text.split("\n"):
        if line.startswith(head):
            return parse(line[len("- func: "):])
    return None


def hash_from_native_functions(yaml_text: str | None, component: str) -> str:
    schema = from_native_functions(yaml_text, component)
    return ABSENT if schema is None else schema_hash(schema)


def live_schema(component: str, *, import_missing: bool = True) -> Schema | None:
    """The schema registered in this process (None: no such op, or torch not imported)."""
    import sys

    torch: Any = sys.modules.get("torch")
    if torch is None:
        if not import_missing:
            return None
        try:
            import torch  # type: ignore[no-redef]
        except ModuleNotFoundError:
            return None
    packet = getattr(torch.ops.aten, op_name(component), None)  # torch.ops raises AttributeError when absent
    overload = getattr(packet, "default", None) if packet is not None else None
    if overload is None:
        return None
    return parse(str(overload._schema))


def hash_live(component: str, *, import_missing: bool = True) -> str:
    try:
        schema = live_schema(component, import_missing=import_missing)
    except ValueError:
        return UNAVAILABLE
    return ABSENT if schema is None else schema_hash(schema)
