"""TRL's `SFTTrainer` packing guard, relaxed when cpshim keeps packed documents apart.

TRL >= 1.11 raises in `SFTTrainer.__init__` when CP is on and `packing` (or `eval_packing`) is set:
torch's native CP drops the block-diagonal mask, so packed documents would attend across their
boundaries. cpshim's `varlen` strategy runs ring-flash-attn's varlen kernels over the cu_seqlens of
the packed position_ids, which keeps documents apart exactly, so in ring mode with that strategy the
guard's premise is false. The guard is inline in `__init__`, after `Trainer.__init__`: the
`trl-sft-packing-guard` patch opens a scope for the call, and `accelerate-cp-enabled` answers False
to the `ParallelismConfig.cp_enabled` reads made by that very function's frame (the guard's), and to
no other read, while the scope is open. With another strategy the guard runs; its error gains the fix.
"""

from __future__ import annotations

from typing import Any

from .. import modes
from ..errors import ConfigurationError
from .relaxed_frames import answer, relaxed

GUARD_MESSAGE = "Packing is not compatible with context parallelism"


def packing_guard(call: Any, this: Any, *args: Any, **kwargs: Any) -> Any:
    """Impl of `trl-sft-packing-guard` (`SFTTrainer.__init__`)."""
    if call.mode != modes.RING:
        return call.original(*args, **kwargs)
    from ..ring import runtime

    strategy = runtime.settings["strategy"]
    if strategy == "varlen":
        with relaxed(call.original, cp_enabled=False):
            return call.original(*args, **kwargs)
    try:
        return call.original(*args, **kwargs)
    except ValueError as e:
        if GUARD_MESSAGE not in str(e):
            raise
        raise ConfigurationError(
            f"TRL's SFTTrainer refuses packing under CP ({e}). cpshim ring mode keeps packed documents apart "
            f"with strategy='varlen' only; strategy {strategy!r} would let them attend across their boundaries. "
            "Use cpshim.enable(strategy='varlen')") from e


def cp_enabled(call: Any, this: Any) -> Any:
    """Impl of `accelerate-cp-enabled` (`ParallelismConfig.cp_enabled`): upstream's value, except False to
    a relaxed guard's own reads (SFTTrainer.__init__, GRPOConfig/RLOOConfig.__post_init__), in the thread that
    runs it."""
    return answer("cp_enabled", call.original())
