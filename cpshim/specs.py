"""Versions and requirement ranges for the registry, without importing `packaging` on the common path.

`import packaging.version` costs ~6 ms and `packaging.specifiers` 30-50 ms (packaging 26): most of
`import cpshim`'s budget. Selection only ever compares *releases* (pre/dev/post/local builds are
matched by their release, README "Version policy"), and for releases PEP 440 ordering is tuple
ordering of (epoch, release without trailing zeros). Plain versions (`5.24.0`, `2.13.0+cpu`) are
parsed here; anything else goes through `packaging.version`. Ranges are limited to
`<, <=, >, >=, ==, !=` with a final release; tests check both against `packaging` on generated input.
"""

from __future__ import annotations

import operator
import re

Key = tuple  # (epoch, *release) with trailing zeros stripped

_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt}
_CLAUSE = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")
_PLAIN = re.compile(r"^\s*v?(\d+(?:\.\d+)*)(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?\s*$", re.IGNORECASE)


class InvalidRange(ValueError):
    """A range uses syntax the registry does not allow (wildcards, ~=, ===, non-final bounds)."""


def _key(epoch: int, release: tuple[int, ...]) -> Key:
    rel = list(release)
    while len(rel) > 1 and rel[-1] == 0:
        rel.pop()
    return (epoch, *rel)


def parse(raw: str) -> tuple[Key, bool] | None:
    """(release key, is a pre/dev release) of a PEP 440 version; None if it is not one."""
    m = _PLAIN.match(raw)
    if m:
        return _key(0, tuple(int(p) for p in m.group(1).split("."))), False
    from packaging.version import InvalidVersion, Version

    try:
        v = Version(raw)
    except InvalidVersion:
        return None
    return _key(v.epoch, v.release), v.is_prerelease


def release_key(raw: str) -> Key:
    """Key of a version that must be a final release (registry data: floors, ceilings, bounds)."""
    parsed = parse(raw)
    if parsed is None or parsed[1] or not _PLAIN.match(raw) or "+" in raw:
        raise InvalidRange(f"{raw!r} is not a final release (write it like 5.24.0)")
    return parsed[0]


def parse_range(spec: str) -> tuple[tuple[str, Key], ...]:
    clauses = []
    for part in spec.split(","):
        m = _CLAUSE.match(part)
        if not m:
            raise InvalidRange(f"{spec!r}: {part.strip()!r} is not one of <, <=, >, >=, ==, != followed by a version")
        clauses.append((m.group(1), release_key(m.group(2))))
    return tuple(clauses)


def contains(clauses: tuple[tuple[str, Key], ...], key: Key) -> bool:
    """True if the release `key` satisfies every clause."""
    return all(_OPS[op](key, bound) for op, bound in clauses)
