"""Gated DeltaNet and KDA cores under CP by head shards (Ulysses): an all-to-all from sequence shards to head
shards around upstream's core, and back.

Which exchange, and why this one for these mixers (the state's chain for Mamba): the delta rule's core starts
from the state, h_t = h_{t-1} (I - beta_t k_t k_t^T) exp(g_t) + beta_t v_t k_t^T, so a run passed its state
along the sequence cannot start its core before the run before it has finished: the group's cores run one
after another (zigzag at cp=2: four chunk-times per layer on the critical path, against two). Its heads are
independent, though, so each rank runs upstream's own core on the whole sequence, in its order, for heads / cp
of them: the group's cores run side by side, each on 1/cp of the work, and the core sees the same sequence one
process gives it. It moves O(sequence) per layer (the core's inputs q, k, v, g, beta in, its output back:
(cp - 1) / cp of them per rank, per direction) where the chain moves O(state) per run boundary, but no rank
waits for another's core. It needs every head count the patch names (`info["head_shards"]["heads"]`: key and
value heads) divisible by cp; a model whose heads are not keeps the chain (`cpshim.ring.carry_state`). Mamba-1
and Mamba-2 keep the chain: their scans already run side by side for O(state) (`cpshim.ring.linear_scans`).

Upstream's forward is run twice per run (`carry_state`): stopped at the core to take its inputs (`Captured`),
then again with the core replaced by the exchanged-back output. The second run recomputes the projections and
the conv before the core, about a tenth of the layer's forward at 16k tokens (the core is the rest, measured on
the bench's Qwen3.5), and keeps the gate, norm and out_proj upstream's.
"""

from __future__ import annotations

import functools
from typing import Any


class Captured(Exception):
    """Raised by the core while its inputs are taken: stops upstream's forward at the core. Keep `call` (args,
    kwargs), not the exception: its traceback holds the forward's frames, and through them every intermediate
    of the run until the garbage collector finds the cycle."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        super().__init__("the core's inputs, taken (cpshim.ring.head_shards)")
        self.call = (args, kwargs)


def capture(*args: Any, **kwargs: Any) -> Any:
    raise Captured(args, kwargs)


def applies(module: Any, info: dict, cp: int) -> bool:
    """The patch names a core to shard by heads, and every head count it names divides by cp."""
    spec = info.get("head_shards")
    return spec is not None and all(int(getattr(module, a)) % cp == 0 for a in spec["heads"])


def run_core(core: Any, calls: list[tuple[tuple, dict]], lengths: list[int], step: Any, name: str) -> list[Any]:
    """The core over the whole sequence for this rank's heads, from the inputs its runs' calls took
    (`Captured.call`, in local order): each sequence tensor (batch, run, heads, ...) to head shards, upstream's
    core from no state, the output back to sequence shards. Returns the output per run."""
    import torch

    from .tripwires import TripwireError

    args, kwargs = calls[0][0], dict(calls[0][1])
    keys = [*range(len(args)), *sorted(kwargs)]
    batch = args[0].shape[0]

    def arg(c: tuple[tuple, dict], key: Any) -> Any:
        return c[0][key] if isinstance(key, int) else c[1][key]

    seq = [k for k in keys if isinstance(arg(calls[0], k), torch.Tensor) and arg(calls[0], k).dim() >= 3]
    for c, length in zip(calls, lengths):
        for k in seq:
            t = arg(c, k)
            if t.shape[:2] != (batch, length) or t.shape[2] % step.cp:
                raise TripwireError(f"cpshim ring mode: {name}'s core got its argument {k!r} shaped "
                                    f"{tuple(t.shape)}, not (batch, {length} positions, heads divisible by "
                                    f"{step.cp}, ...) as cpshim checked this transformers release: report it to "
                                    "cpshim")
    if kwargs.get("initial_state") is not None:
        raise TripwireError(f"cpshim ring mode: {name}'s core was given a recurrent state on a sharded step: "
                            "report this transformers release to cpshim")
    order, back = _orders(step.global_len, step.cp, step.strategy, args[0].device)
    whole = {k: _to_heads(torch.cat([arg(c, k) for c in calls], dim=1), order, step) for k in seq}
    kwargs.update({k: v for k, v in whole.items() if isinstance(k, str)}, output_final_state=False)
    out = core(*(whole.get(i, a) for i, a in enumerate(args)), **kwargs)
    return list(torch.split(_to_sequence(out[0], back, step), lengths, dim=1))


def replay(out: Any) -> Any:
    """The core a run's second call sees: its share of the exchanged-back output, and an empty state (none
    travels; upstream only casts it and stores it in the run's cache)."""

    def core(query: Any, *args: Any, **kwargs: Any) -> Any:
        if query.shape[1] != out.shape[1]:
            from .tripwires import TripwireError

            raise TripwireError(f"cpshim ring mode: a Gated DeltaNet core was called on {query.shape[1]} positions "
                                f"where its first call took {out.shape[1]}: report this transformers release")
        return out, out.new_empty((0,))

    return core


@functools.lru_cache(maxsize=32)
def _orders(global_len: int, cp: int, strategy: str, device: Any) -> tuple[Any, Any]:
    """(sequence order from rank order, rank order from sequence order): rank order is the group's shards one
    after another, each in its local order."""
    import torch

    from . import sharding

    ranked = torch.cat([sharding.shard_indices(global_len, r, cp, strategy) for r in range(cp)]).to(device)
    return torch.argsort(ranked), ranked


def _to_heads(x: Any, order: Any, step: Any) -> Any:
    """(b, n, H, ...) this rank's positions -> (b, cp * n, H / cp, ...) every position, in sequence order, of this
    rank's heads (the rank-th block of H / cp)."""
    b, n, h, *rest = x.shape
    parts = x.reshape(b, n, step.cp, h // step.cp, *rest).movedim(2, 0)  # [r]: rank r's heads
    got = _exchange_function().apply(parts, step.group)  # [r]: rank r's positions
    return got.movedim(0, 1).reshape(b, step.cp * n, h // step.cp, *rest).index_select(1, order)


def _to_sequence(y: Any, ranked: Any, step: Any) -> Any:
    """The inverse of `_to_heads`: (b, L, H / cp, ...) -> (b, L / cp, H, ...)."""
    b, total, h, *rest = y.shape
    n = total // step.cp
    parts = y.index_select(1, ranked).reshape(b, step.cp, n, h, *rest).movedim(1, 0)  # [r]: rank r's positions
    got = _exchange_function().apply(parts, step.group)  # [r]: rank r's heads
    return got.movedim(0, 2).reshape(b, n, step.cp * h, *rest)


def _all_to_all(parts: Any, group: Any) -> Any:
    """parts[r] to group rank r; returns what each rank sent this one, [r] from rank r."""
    import torch
    import torch.distributed as dist

    parts = parts.contiguous()
    got = torch.empty_like(parts)
    dist.all_to_all_single(got, parts, group=group)
    return got


@functools.lru_cache(maxsize=1)
def _exchange_function() -> Any:
    import torch

    class Exchange(torch.autograd.Function):
        """An all-to-all with equal parts; its gradient is the same exchange back."""

        @staticmethod
        def forward(ctx, parts, group):
            ctx.group = group
            return _all_to_all(parts, group)

        @staticmethod
        def backward(ctx, grad):
            return _all_to_all(grad, ctx.group), None

    return Exchange
