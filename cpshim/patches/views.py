"""Read-only views: an upstream function sees an object with a few attributes replaced.

This is how patches keep upstream's own code running (guard relaxation, validation, counting)
while changing the one fact it checks, without mutating the user's objects or copying upstream code.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class AttributeView:
    """`wrapped` with `overrides` in front; every other attribute is read from `wrapped`."""

    def __init__(self, wrapped: Any, **overrides: Any) -> None:
        object.__setattr__(self, "_wrapped", wrapped)
        object.__setattr__(self, "_overrides", overrides)

    def __getattr__(self, name: str) -> Any:
        overrides = object.__getattribute__(self, "_overrides")
        if name in overrides:
            return overrides[name]
        return getattr(object.__getattribute__(self, "_wrapped"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cpshim view of {type(self._wrapped).__name__} is read-only (setting {name!r})")
