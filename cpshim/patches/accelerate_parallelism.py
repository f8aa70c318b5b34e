"""`ParallelismConfig` when cpshim owns CP: DDP, FSDP2, DeepSpeed ZeRO and multi-CPU are fine.

Upstream validates for torch's native CP, which needs FSDP2 or a multi-GPU DDP-like setup; ring
attention only needs a process group per CP group. Every other validation (total size, FSDP2 with
nothing to shard, handler warnings) still runs, because upstream's own function still runs.
"""

from __future__ import annotations

from typing import Any

from .. import modes
from ..errors import ConfigurationError
from ..modes import cp_owned
from .views import AttributeView

# Where ring CP works but upstream's check only admits FSDP2 and multi-accelerator DDP.
_RING_CAPABLE = ("MULTI_CPU", "DEEPSPEED")


def relax_validation(call: Any, pc: Any, accelerator: Any) -> Any:
    """Keeps: every check of upstream's `_validate_accelerator`. Turns off: the refusal of multi-CPU
    (gloo) and DeepSpeed setups (the latter exists up to 1.14). Checked against 1.10.1-1.16.0."""
    if not cp_owned(pc) or modes.mode_for(accelerator) == modes.NATIVE:
        return call.original(accelerator)
    kind = getattr(getattr(accelerator, "distributed_type", None), "value", None)
    view = AttributeView(accelerator, multi_device=True) if kind in _RING_CAPABLE else accelerator
    return call.original(view)


def _world_size() -> int:
    from accelerate.state import PartialState

    return PartialState().num_processes


def fill_data_parallel(call: Any, pc: Any, device_type: str) -> Any:
    """Keeps: upstream's mesh. Adds: `dp_replicate = world / cp` when the user gave only `cp_size`
    (upstream fills it only when every size is 1), so `cp_size=2` works on 4 ranks as cp=2 x dp=2."""
    if not cp_owned(pc):
        return call.original(device_type)
    world, total = _world_size(), pc.total_size
    others = [name for name, size in pc._sizes.items() if name != "cp" and size != 1]
    if world != total and not others:
        if world % total:
            raise ConfigurationError(
                f"ParallelismConfig(cp_size={pc.cp_size}) does not divide the {world} processes: choose a cp_size "
                f"that divides {world}, or set dp_replicate_size/dp_shard_size so that all sizes multiply to {world}"
            )
        pc._set_size("dp_replicate", world // total)
    return call.original(device_type)
