"""accelerate's collectives in a replicated scope: the ranks of a CP group act as one data-parallel rank.

In the replicated scope of a label-less or generating ring step (TRL's DPO, KTO, GRPO, RLOO; also TRL's
precompute, and the eval loop of GRPO/RLOO) the values a trainer hands to accelerate are the same on every
rank of a CP group: the backbone's hidden states are all-gathered, so heads, losses, rewards and metrics
are computed whole on each rank. Upstream's collectives count the CP peers as data-parallel ranks: every
value comes back cp times (GRPO's completions log held each completion cp times), and only what is
normalised by the same over-count (GRPO's reward statistics, its `dapo` normaliser over `num_processes`)
comes out right, by cancellation. Here `gather` / `gather_object` (at `_gpu_gather` /
`_gpu_gather_object`, where both the Accelerator methods and the functions TRL imports from
`accelerate.utils` arrive), `Accelerator.reduce`, `num_processes` and `process_index` run over the DP
group (the mesh's `dp` dimension), as one process per data-parallel rank would. A tensor they gather
must be the same on the ranks of the group (a tripwire checks it), since only one copy is kept. Outside
such a scope, in sharded steps whose values are per-shard partials, and in the Trainer's eval loop of a
labelled trainer (whose steps count their targets with transformers' own CP-aware gathers: only its
`gather_for_metrics` is over DP ranks there, `eval-gather-for-metrics`), upstream's.
"""

from __future__ import annotations

from typing import Any


def _groups(call: Any, accelerator: Any = None) -> Any:
    from ..ring import data_parallel

    return data_parallel.replicated_groups(call.mode, accelerator, collectives=True)


def _checked(data: Any, g: Any, what: str) -> None:
    from ..ring import data_parallel, runtime

    if runtime.settings["check_batches"]:
        data_parallel.check_replicated(data, g, what)


def gpu_gather(call: Any, _module: Any, tensor: Any) -> Any:
    """Impl of `accelerate-gather-dp` (`accelerate.utils.operations._gpu_gather`). Keeps: upstream's gather
    outside replicated scopes. Turns off: gathering the cp copies of a replicated value."""
    g = _groups(call)
    if g is None:
        return call.original(tensor)
    from ..ring import data_parallel

    _checked(tensor, g, "a value gathered with accelerate's gather")
    return data_parallel.gather(tensor, g)


def gpu_gather_object(call: Any, _module: Any, obj: Any) -> Any:
    """Impl of `accelerate-gather-object-dp` (`_gpu_gather_object`): over data-parallel ranks in a replicated
    scope."""
    g = _groups(call)
    if g is None:
        return call.original(obj)
    from ..ring import data_parallel

    return data_parallel.gather_object(obj, g)


def reduce(call: Any, accelerator: Any, tensor: Any, reduction: str = "sum", scale: float = 1.0) -> Any:
    """Impl of `accelerate-reduce-dp` (`Accelerator.reduce`): over data-parallel ranks in a replicated scope,
    with upstream's semantics (sum, mean or max; `scale` only applies on XLA)."""
    g = _groups(call, accelerator)
    if g is None:
        return call.original(tensor, reduction, scale)
    import torch.distributed as dist
    from accelerate.utils import recursively_apply

    _checked(tensor, g, "a value reduced with Accelerator.reduce")

    def one(t: Any) -> Any:
        out = t.clone()
        if g.dp_size > 1:
            dist.all_reduce(out, dist.ReduceOp.MAX if reduction == "max" else dist.ReduceOp.SUM, group=g.dp)
            if reduction == "mean":
                out /= g.dp_size
        return out

    return recursively_apply(one, tensor, error_on_other_type=True)


def num_processes(call: Any, accelerator: Any) -> Any:
    """Impl of `accelerate-num-processes-dp` (`Accelerator.num_processes`): data-parallel ranks in a
    replicated scope."""
    g = _groups(call, accelerator)
    return call.original() if g is None else g.dp_size


def process_index(call: Any, accelerator: Any) -> Any:
    """Impl of `accelerate-process-index-dp` (`Accelerator.process_index`): the data-parallel rank in a
    replicated scope."""
    g = _groups(call, accelerator)
    return call.original() if g is None else g.dp_rank
