"""Short causal convolutions (LFM2's conv layers) under CP: a halo of kernel - 1 input rows.

The mixer is in_proj, a gate (B * x), a depthwise causal conv1d of k taps, a gate (C * .), out_proj:
everything but the convolution is per token, and the convolution at position p reads the rows p - k + 1
.. p. So a rank runs upstream's own forward on each run of consecutive positions it holds (two per
zigzag shard) with the k - 1 input rows before the run prepended, and keeps the run's outputs. Which
exchange, and why: the rows come from whichever rank holds them through the sliding layers' plan
(`sliding.plan` with window k: one batch of point-to-point sends, the gradient sent back reversed),
k - 1 rows of hidden_size per run boundary (2 for LFM2). An all-gather would move the sequence, and an
all-to-all to channel shards (the conv is depthwise) every token twice per layer. Recomputing in_proj on
k - 1 rows per run is noise. A run at the sequence start gets no halo: upstream's zero padding.

During a sharded step the cache is None (its conv state would carry one run into the next) and so is
the padding mask: right padding (left padding is refused by the Trainer hook) only zeroes rows after the
last real token, which no real token's convolution reads. Packed documents are refused: upstream's
convolution runs across document boundaries (its torch path reads no position_ids), so a packed one
process mixes documents and there is no exact answer to match.
"""

from __future__ import annotations

from typing import Any

from . import runtime, sliding, tripwires

_CACHE_KEYS = ("cache", "past_key_values", "past_key_value")


def forward(call: Any, module: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
    """Impl of the `*-short-conv` patches (`<Family>ShortConv.forward`): upstream's forward outside sharded
    steps (the gate is closed then, so this runs only while some thread has a step)."""
    step = runtime.current_step()
    if step is None or id(module) in step.outside:
        return call.original(hidden_states, *args, **kwargs)
    import torch

    tripwires.check_mixer_call(step, module, args, hidden_states.shape[1], "is a short convolution, and "
                               "transformers runs it across packed document boundaries (even in one process)")
    plan = sliding.plan(step.global_len, step.cp, step.rank, step.strategy, kernel_size(module))
    kwargs = {**kwargs, "attention_mask": None, **{k: None for k in _CACHE_KEYS if k in kwargs}}
    rows = sliding.halo(hidden_states, plan, step.group)
    outs = []
    for run in plan.runs:
        mine = hidden_states[:, run.local:run.local + run.length]
        before = rows[:, run.at:run.at + run.halo]
        outs.append(call.original(torch.cat([before, mine], dim=1), **kwargs)[:, run.halo:])
    step.ran.add(id(module))
    return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


def kernel_size(module: Any) -> int:
    """Taps of the module's depthwise conv (`conv.weight`: (channels, 1, k) on every release in range)."""
    weight = getattr(getattr(module, "conv", None), "weight", None)
    if weight is None or weight.dim() != 3 or weight.shape[1] != 1:
        raise tripwires.TripwireError(
            f"cpshim ring mode: {type(module).__name__} has no depthwise conv weight (channels, 1, k), so the "
            "halo it needs is unknown: report this transformers release to cpshim")
    return int(weight.shape[-1])

