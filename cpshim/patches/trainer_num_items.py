"""`num_items_in_batch` under ring CP: training and eval counts that upstream divides wrongly by cp.

Upstream divides the local target count by the number of ranks sharing a batch with floor
division, so a count that cp does not divide gives each rank a wrong loss scale (1.6 % at 63 targets
and cp=2). 5.23 switched to true division. In ring mode cpshim computes the same count with CP
hidden from upstream's function, then divides exactly.
"""

from __future__ import annotations

from typing import Any

from ..modes import RING, cp_owned
from .views import AttributeView


class _TrainerWithoutCP:
    """The Trainer as upstream's counting code sees it: no parallelism config. Methods bind to the view
    (so `get_cp_size()` and friends read the view's accelerator); everything else is the Trainer's."""

    def __init__(self, trainer: Any) -> None:
        object.__setattr__(self, "_trainer", trainer)
        object.__setattr__(self, "accelerator", AttributeView(trainer.accelerator, parallelism_config=None))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(type(self._trainer), name, None)
        if callable(attr) and hasattr(attr, "__get__") and not isinstance(attr, property):
            return attr.__get__(self, type(self._trainer))
        return getattr(self._trainer, name)


def _ring_pc(call: Any, trainer: Any) -> Any:
    """The parallelism config when this call is in ring mode with CP owned by cpshim, else None."""
    pc = getattr(trainer.accelerator, "parallelism_config", None)
    return pc if call.mode == RING and cp_owned(pc) else None


def _unaveraged_pc(call: Any, trainer: Any) -> Any:
    """`_ring_pc`, when tokens are not averaged across devices (the case upstream floor-divides)."""
    pc = _ring_pc(call, trainer)
    return None if pc is None or getattr(trainer.args, "average_tokens_across_devices", True) else pc


def _evaluating(trainer: Any) -> bool:
    return not getattr(getattr(trainer, "model", None), "training", True)


def _exactly(count: Any, pc: Any) -> Any:
    return None if count is None else count / pc.non_data_parallel_size


def exact_count(call: Any, trainer: Any, epoch_iterator: Any, num_batches: int, *args: Any) -> Any:
    """`get_batch_samples` (4.56-5.22; from 4.57 it delegates to `_get_num_items_in_batch`, which binds to
    the same view). Keeps: upstream's batches and count. Turns off: the floor division by cp."""
    pc = _unaveraged_pc(call, trainer)
    if pc is None:
        return call.original(epoch_iterator, num_batches, *args)
    batches, count = call.original.__func__(_TrainerWithoutCP(trainer), epoch_iterator, num_batches, *args)
    return batches, _exactly(count, pc)


def eval_count_unsharded(call: Any, trainer: Any, batch_samples: Any, device: Any) -> Any:
    """`_get_num_items_in_batch` in eval, 4.57-5.15: `prediction_step` divides the count by cp but never
    shards (the hook joins eval in 5.16), so every rank computes the full loss and reports cp x the
    single-process eval loss. In ring mode the count stays undivided for those unsharded eval steps."""
    if _ring_pc(call, trainer) is None or not _evaluating(trainer):
        return call.original(batch_samples, device)
    return call.original.__func__(_TrainerWithoutCP(trainer), batch_samples, device)


def eval_count_exact(call: Any, trainer: Any, batch_samples: Any, device: Any) -> Any:
    """`_get_num_items_in_batch` in eval, 5.16-5.22: `prediction_step` shards eval batches and counts
    through this method, which floor-divides by cp (training counts through `get_batch_samples`, fixed
    above). In ring mode with `average_tokens_across_devices=False` eval steps divide exactly."""
    pc = _unaveraged_pc(call, trainer)
    if pc is None or not _evaluating(trainer):
        return call.original(batch_samples, device)
    return _exactly(call.original.__func__(_TrainerWithoutCP(trainer), batch_samples, device), pc)
