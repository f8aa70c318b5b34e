"""Who shards: the process-wide mode and per-Trainer / per-Accelerator overrides.

Modes change state only; the wrappers read them at call time, so changing a mode never re-patches.
"""

from __future__ import annotations

import threading
import weakref

from .errors import ConfigurationError

TYPE_CHECKING = False  # typing costs import time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

NATIVE, EXTERNAL, RING = "native", "external", "ring"
MODES = (NATIVE, EXTERNAL, RING)

_lock = threading.Lock()
_process_mode = NATIVE
_overrides: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def check(mode: object) -> str:
    if mode not in MODES:
        raise ConfigurationError(f"unknown cpshim mode {mode!r}: use one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


def process_mode() -> str:
    return _process_mode


def set_process_mode(mode: str) -> None:
    global _process_mode
    with _lock:
        _process_mode = check(mode)


def set_override(obj: Any, mode: str) -> None:
    """Override `obj` (a Trainer: also its Accelerator) for the rest of its life."""
    check(mode)
    with _lock:
        _overrides[obj] = mode
        accelerator = getattr(obj, "accelerator", None)
        if accelerator is not None:
            _overrides[accelerator] = mode


def mode_for(obj: Any) -> str:
    try:
        return _overrides.get(obj, _process_mode)
    except TypeError:  # not weak-referenceable or unhashable: only the process mode applies
        return _process_mode


def cp_owned(pc: Any) -> bool:
    """True when CP is on and nobody else (DeepSpeed Ulysses SP) owns the sequence dimension."""
    return pc is not None and bool(getattr(pc, "cp_enabled", False)) and not getattr(pc, "sp_enabled", False)
