"""Component names, the fixed markers, and the normaliser's version.

``"module:qualname"`` (a def or class), ``"module:qualname@name"`` (its statements mentioning
``name``), ``"module:qualname()"`` (a function's call signature only: parameter names, kinds, defaults
and decorators, for APIs cpshim calls but does not patch, whose bodies change every release), and
``"aten::op"`` (an operator schema, :mod:`.schemas`).
"""

from __future__ import annotations

#: Version of the normalisation; stored in the generated data, which is ignored when it differs.
NORMALISER = 1

ABSENT = "absent"
OPAQUE = "opaque"
UNMENTIONED = "unmentioned"
UNAVAILABLE = "unavailable"
MARKERS = frozenset({ABSENT, OPAQUE, UNMENTIONED, UNAVAILABLE})
#: The `mention` of a ``module:qualname()`` component (not an identifier, so no name can clash).
SIGNATURE = "()"


def parse_component(component: str) -> tuple[str, str, str | None]:
    """``"mod:Qual.name@mention"`` -> ``("mod", "Qual.name", "mention")`` (mention may be None);
    ``"mod:Qual.name()"`` -> ``("mod", "Qual.name", SIGNATURE)``."""
    module, sep, rest = component.partition(":")
    qualname, _, mention = rest.partition("@")
    if not mention and qualname.endswith(SIGNATURE):
        qualname, mention = qualname[:-len(SIGNATURE)], SIGNATURE
    if not sep or not module or not qualname or any(not p for p in qualname.split(".")):
        raise ValueError(f"bad component {component!r}: expected 'module:qualname' or 'module:qualname@name'")
    return module, qualname, (mention or None)


def describe(component: str) -> str:
    if component.startswith("aten::"):
        return f"the schema of {component}"
    _, qualname, mention = parse_component(component)
    if mention == SIGNATURE:
        return f"the signature of {qualname}"
    return f"{qualname} (statements mentioning {mention})" if mention else qualname
