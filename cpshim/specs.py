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

Key = tuple  # (epoch, *release) with trailing zeros stripped

# Two-character operators first: "<=" must not parse as "<" and "=5".
_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt}
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


class InvalidRange(ValueError):
    """A range uses syntax the registry does not allow (wildcards, ~=, ===, non-final bounds)."""


def _key(epoch: int, release: tuple[int, ...]) -> Key:
    rel = list(release)
    while len(rel) > 1 and rel[-1] == 0:
        rel.pop()
    return (epoch, *rel)


def _digits(part: str) -> bool:
    return part.isascii() and part.isdigit()


def _plain(raw: str) -> tuple[int, ...] | None:
    """The release of `[v]N(.N)*[+local]` (PEP 440 local segments: alphanumerics joined by - _ .),
    else None. String methods, not `re`: importing `re` would cost `import cpshim` ~2.5 ms."""
    text = raw.strip()
    if text[:1] in ("v", "V"):
        text = text[1:]
    release, plus, local = text.partition("+")
    parts = release.split(".")
    if not all(_digits(p) for p in parts):
        return None
    if plus:
        segments = local.lower().replace("-", ".").replace("_", ".").split(".")
        if not all(seg and _ALNUM.issuperset(seg) for seg in segments):
            return None
    return tuple(int(p) for p in parts)


def parse(raw: str) -> tuple[Key, bool] | None:
    """(release key, is a pre/dev release) of a PEP 440 version; None if it is not one."""
    release = _plain(raw)
    if release is not None:
        return _key(0, release), False
    from packaging.version import InvalidVersion, Version

    try:
        v = Version(raw)
    except InvalidVersion:
        return None
    return _key(v.epoch, v.release), v.is_prerelease


def release_key(raw: str) -> Key:
    """Key of a version that must be a final release (registry data: floors, ceilings, bounds)."""
    release = _plain(raw)
    if release is None or "+" in raw:
        raise InvalidRange(f"{raw!r} is not a final release (write it like 5.24.0)")
    return _key(0, release)


def parse_range(spec: str) -> tuple[tuple[str, Key], ...]:
    clauses = []
    for part in spec.split(","):
        text = part.strip()
        op = next((op for op in _OPS if text.startswith(op)), "")
        bound = text[len(op):].strip()
        if not op or not bound or len(bound.split()) != 1:
            raise InvalidRange(f"{spec!r}: {text!r} is not one of <, <=, >, >=, ==, != followed by a version")
        clauses.append((op, release_key(bound)))
    return tuple(clauses)


def contains(clauses: tuple[tuple[str, Key], ...], key: Key) -> bool:
    """True if the release `key` satisfies every clause."""
    return all(_OPS[op](key, bound) for op, bound in clauses)
