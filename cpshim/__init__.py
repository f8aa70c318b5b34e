"""cpshim: ring-flash-attn context parallelism on HF Trainer + accelerate, on every released pair.

`import cpshim` reads installed versions and selects one variant per patch; it patches nothing and
imports none of torch, transformers or accelerate. `apply()` patches (mode `external`), `enable()`
shards with ring-flash-attn (mode `ring`), `revert()` undoes everything, `report()` says what happened.
"""

from __future__ import annotations

from . import lifecycle as _lifecycle
from . import modes as _modes
from .errors import (
    ConfigurationError,
    CpshimError,
    CpshimRuntimeError,
    CpshimWarning,
    DependencyConflict,
    RegistrationError,
    UnsupportedVersionError,
)

TYPE_CHECKING = False  # typing costs import time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

    from .records import PatchRecord, Report

__version__ = "0.1.0"
__all__ = [
    "apply", "revert", "report", "set_mode", "enable", "disable",
    "Report", "PatchRecord", "DependencyConflict",
    "CpshimError", "CpshimWarning", "CpshimRuntimeError", "ConfigurationError", "RegistrationError",
    "UnsupportedVersionError",
]

apply = _lifecycle.apply
revert = _lifecycle.revert
report = _lifecycle.report


def set_mode(obj: Any, mode: str) -> "Report":
    """Override the mode of one Trainer (and its Accelerator) or one Accelerator.

    `native` passes straight through to upstream; `external` and `ring` need the wrappers, so they
    are installed (without changing the process mode) if `apply()` has not run yet.
    """
    _modes.check(mode)
    if mode == _modes.RING:
        from .ring import runtime

        runtime.ensure_loaded()
    if mode != _modes.NATIVE:
        _lifecycle.apply(mode=_modes.process_mode())
    _modes.set_override(obj, mode)
    return _lifecycle.report()


def enable(strategy: str = "zigzag", heads_k_stride: int = 1, **kwargs: Any) -> "Report":
    """Mode `ring` for the process: cpshim shards batches and routes attention through the ring."""
    from .ring import runtime

    return runtime.enable(strategy=strategy, heads_k_stride=heads_k_stride, **kwargs)


def disable() -> "Report":
    """Leave mode `ring` (back to `external`); the wrappers stay installed."""
    from .ring import runtime

    return runtime.disable()




def __getattr__(name: str) -> Any:
    """`Report` and `PatchRecord` load on first use: `import cpshim` stays cheap."""
    if name in ("Report", "PatchRecord"):
        from . import records

        return getattr(records, name)
    raise AttributeError(f"module 'cpshim' has no attribute {name!r}")


_lifecycle.init()
