"""`Trainer._prepare_context_parallel_inputs` for trainers that shard the batch themselves.

Upstream (transformers >= 4.56) prepares torch's native CP: it refuses any attention but SDPA and
returns a context that shards the batch with torch `context_parallel`. A ring-flash-attn trainer
shards on its own, so that partition must never run, and the SDPA-only guard (whose reason is that
torch CP can only intercept SDPA) no longer applies.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..modes import RING, cp_owned
from .views import AttributeView


def _pc(trainer: Any) -> Any:
    return getattr(getattr(trainer, "accelerator", None), "parallelism_config", None)


def prepare_full_length(call: Any, trainer: Any, model: Any, inputs: dict) -> dict:
    """Run upstream's preparation (position_ids, shift_labels, causal-mask check) without its guard
    and without its partition; returns the inputs with full-length keys added."""
    # The guard reads `model.config._attn_implementation`; the user's config is never mutated, and a
    # DeepSpeed engine's `.config` (a dict, axolotl #3204) is never read for it.
    view = AttributeView(model, config=AttributeView(model.config, _attn_implementation="sdpa")) \
        if hasattr(model, "config") else model
    _context, inputs = call.original(view, inputs)
    return inputs


def _ring(call: Any, trainer: Any, model: Any, inputs: dict) -> tuple[Any, dict]:
    from ..ring import trainer_hook

    trainer_hook.check_tensor_batch(trainer, inputs)
    from ..ring.vlm import modality_keys

    if not isinstance(inputs, dict) or (inputs.get("labels") is None and inputs.get("shift_labels") is None) \
            or modality_keys(inputs):
        # a label-less batch goes on as the trainer built it: its backbone calls are sharded one by one (KTO's KL
        # call is longer than the position_ids upstream would build; TRL < 1.8's KTO batch has no input_ids). A
        # vision-language batch too: upstream's 2-D position_ids would replace the rope positions the model
        # computes from the row (cpshim.ring.vlm builds the shifted labels)
        return trainer_hook.prepare(call, trainer, model, inputs)
    return trainer_hook.prepare(call, trainer, model, prepare_full_length(call, trainer, model, inputs))


def relax_guard(call: Any, trainer: Any, model: Any, inputs: dict) -> tuple[Any, dict]:
    """transformers 4.56-4.57: keep upstream's key preparation and causal check; accept any attention
    implementation; never enter torch's partition (the returned context is a no-op)."""
    if not cp_owned(_pc(trainer)):
        return call.original(model, inputs)
    if call.mode == RING:
        return _ring(call, trainer, model, inputs)
    return contextlib.nullcontext, prepare_full_length(call, trainer, model, inputs)


def no_op(call: Any, trainer: Any, model: Any, inputs: dict) -> tuple[Any, dict]:
    """transformers 5.x: nothing upstream does is needed by a trainer that shards itself (axolotl
    #3520). With `full_length_keys=True` it adds the same keys as the 4.x variant."""
    if not cp_owned(_pc(trainer)):
        return call.original(model, inputs)
    if call.mode == RING:
        return _ring(call, trainer, model, inputs)
    if call.settings.get("full_length_keys"):
        return contextlib.nullcontext, prepare_full_length(call, trainer, model, inputs)
    return contextlib.nullcontext, inputs


def total_batch_without_cp(call: Any, trainer: Any, args: Any) -> int:
    """transformers 4.56-4.57 count every rank as data-parallel; in ring mode the cp ranks of a group
    share one batch, so the total (and the reported throughput) is cp times too high. 5.0 divides by cp."""
    total = call.original(args)
    pc = _pc(trainer)
    if call.mode != RING or not cp_owned(pc):
        return total
    return total // pc.cp_size
