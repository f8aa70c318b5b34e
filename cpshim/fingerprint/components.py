"""Component names (``"module:qualname@mention"``), the fixed markers, and the normaliser's version."""

from __future__ import annotations

#: Version of the normalisation; stored in the generated data, which is ignored when it differs.
NORMALISER = 1

ABSENT = "absent"
OPAQUE = "opaque"
UNMENTIONED = "unmentioned"
UNAVAILABLE = "unavailable"
MARKERS = frozenset({ABSENT, OPAQUE, UNMENTIONED, UNAVAILABLE})


def parse_component(component: str) -> tuple[str, str, str | None]:
    """``"mod:Qual.name@mention"`` -> ``("mod", "Qual.name", "mention")`` (mention may be None)."""
    module, sep, rest = component.partition(":")
    qualname, _, mention = rest.partition("@")
    if not sep or not module or not qualname or any(not p for p in qualname.split(".")):
        raise ValueError(f"bad component {component!r}: expected 'module:qualname' or 'module:qualname@name'")
    return module, qualname, (mention or None)


def describe(component: str) -> str:
    _, qualname, mention = parse_component(component)
    return f"{qualname} (statements mentioning {mention})" if mention else qualname
