"""Requirement ranges for the registry, evaluated without `packaging.specifiers`.

Importing `packaging.specifiers` costs ~30-50 ms (packaging 26), half of `import cpshim`'s budget.
Selection only ever matches *final* releases (pre/dev/post/local builds are matched by their
release, see README "Version policy"), and for final releases PEP 440's comparison operators are
plain ordering. So ranges are limited to `<, <=, >, >=, ==, !=` with a version, and a test checks
the result against `SpecifierSet.contains(..., prereleases=True)` on generated versions.
"""

from __future__ import annotations

import operator
import re
from typing import Callable, NamedTuple

from packaging.version import InvalidVersion, Version

_OPS: dict[str, Callable[[Version, Version], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
}
_CLAUSE = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*([0-9][0-9A-Za-z.!+]*)\s*$")


class InvalidRange(ValueError):
    """A range uses syntax the registry does not allow (wildcards, ~=, ===, bad versions)."""


class Clause(NamedTuple):
    op: str
    version: Version

    def __str__(self) -> str:
        return f"{self.op}{self.version}"


def parse(spec: str) -> tuple[Clause, ...]:
    clauses = []
    for part in spec.split(","):
        m = _CLAUSE.match(part)
        if not m:
            raise InvalidRange(f"{spec!r}: {part.strip()!r} is not one of <, <=, >, >=, ==, != followed by a version")
        try:
            version = Version(m.group(2))
        except InvalidVersion as e:
            raise InvalidRange(f"{spec!r}: {e}") from e
        if version.is_prerelease or version.is_postrelease or version.local:
            raise InvalidRange(f"{spec!r}: bounds must be final releases (got {version})")
        clauses.append(Clause(m.group(1), version))
    return tuple(clauses)


def contains(clauses: tuple[Clause, ...], release: Version) -> bool:
    """True if the final release `release` satisfies every clause."""
    return all(_OPS[c.op](release, c.version) for c in clauses)
