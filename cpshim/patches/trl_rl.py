"""TRL's GRPO and RLOO under ring CP: the CP group is one data-parallel rank that generates once.

Both trainers build their model inputs inside the step (`_prepare_inputs` generates, scores, computes
advantages), so the Trainer hook receives the raw generation batch. cpshim runs such a step on the
backbone path (`cpshim.ring.backbone`: each backbone call sharded, its hidden states all-gathered, heads
and losses on the whole sequence) in the replicated scope, where accelerate's collectives see the CP
group as one rank (`cpshim.patches.accelerate_dp_view`: reward gathers, the `process_index` slice of the
advantages, the `dapo` normaliser's `num_processes`, the metrics). Generation is the exception: the ranks
of a group hold the same prompts, so each generates a contiguous 1/cp share of them, unsharded and
through upstream's collectives (its length metrics then count every completion once), and the shares are
exchanged with one `all_gather_object` over the CP group (with the first rank's RNG state, see
`_set_rng_state`): the group trains on the batch one process would have generated, and no completion is
generated twice.

The configs refuse `cp_size > 1` in `__post_init__` (TRL >= 1.4): right for transformers' own CP, which
cannot shard a generation batch; in ring mode the guard's `cp_enabled` reads are answered False and its
`world_size` read (the generation batch size) the number of data-parallel ranks.
"""

from __future__ import annotations

from typing import Any

from .. import lifecycle
from ..errors import ConfigurationError
from ..modes import RING, cp_owned
from .relaxed_frames import answer, relaxed
from .views import AttributeView

#: The patches through which a generating step's collectives see the CP group as one data-parallel rank.
_DP_VIEW = ("accelerate-gather-dp", "accelerate-gather-object-dp", "accelerate-reduce-dp",
            "accelerate-num-processes-dp", "accelerate-process-index-dp")
#: Trainers that generate inside the step, with the patches that must all be active for ring mode to run them.
GENERATING = {"GRPOTrainer": ("trl-grpo-generate-split", *_DP_VIEW),
              "RLOOTrainer": ("trl-rloo-generate-split", *_DP_VIEW)}


def generating_trainer(trainer: Any) -> str | None:
    """The TRL trainer (by class name in the MRO) whose generation batch ring mode runs, or None."""
    name = next((c.__name__ for c in type(trainer).__mro__ if c.__name__ in GENERATING), None)
    if name is None or not all(lifecycle.is_active(pid) for pid in GENERATING[name]):
        return None
    return name


def config_guard(call: Any, config: Any, *args: Any, **kwargs: Any) -> Any:
    """Impl of `trl-grpo-cp-guard` / `trl-rloo-cp-guard` (`GRPOConfig/RLOOConfig.__post_init__`). Keeps: the
    whole method (every other check). Turns off (ring mode, CP owned by cpshim): the cp_size > 1 refusal, and
    counting CP ranks as data-parallel in the generation batch size."""
    pc = getattr(config, "parallelism_config", None)
    if call.mode != RING or not cp_owned(pc) or not all(
            lifecycle.is_active(pid) for pid in ("accelerate-cp-enabled", "trainer-args-world-size")):
        return call.original(*args, **kwargs)
    # accelerate < 1.12 has no sequence parallelism and no `sp_enabled`, which the guard reads once cp_enabled
    # is False: for that call only, the config's parallelism_config is a view that answers False for it
    legacy = not hasattr(pc, "sp_enabled")
    if legacy:
        object.__setattr__(config, "parallelism_config", AttributeView(pc, sp_enabled=False))
    try:
        with relaxed(call.original, cp_enabled=False, world_size=lambda world: world // _non_data_parallel(pc)):
            return call.original(*args, **kwargs)
    finally:
        if legacy:
            object.__setattr__(config, "parallelism_config", pc)


def _non_data_parallel(pc: Any) -> int:
    """The ranks that share one batch (cp x tp x sp): the mesh's data-parallel size is the world over it (read
    from the world size: a config that gives only cp_size has dp_replicate_size 1 until the mesh is built)."""
    return pc.cp_size * (getattr(pc, "tp_size", None) or 1) * (getattr(pc, "sp_size", None) or 1)


def world_size(call: Any, args: Any) -> Any:
    """Impl of `trainer-args-world-size` (`TrainingArguments.world_size`): upstream's value, except the
    data-parallel size to a relaxed GRPOConfig/RLOOConfig.__post_init__'s own read."""
    return answer("world_size", call.original())


def _check_generation(trainer: Any) -> None:
    args = trainer.args
    name = type(trainer).__name__
    if getattr(args, "use_vllm", False):
        raise ConfigurationError(f"{name} with use_vllm=True under cpshim ring mode is not tested (vLLM's "
                                 "prompt gathers count CP ranks as data-parallel): set use_vllm=False (HF "
                                 "generate), or train without cpshim.enable()")
    for attr in ("tools", "environment_factories", "environments"):
        if getattr(trainer, attr, None):
            raise ConfigurationError(f"{name} with {attr} under cpshim ring mode is not supported yet (its tool "
                                     "loop indexes per-prompt state of the whole batch): train it without "
                                     "cpshim.enable()")


def generate_split(call: Any, trainer: Any, prompts: list) -> Any:
    """Impl of `trl-grpo-generate-split` / `trl-rloo-generate-split` (`_generate`). Keeps: the whole method,
    run on this rank's share. Turns off: every rank of a CP group generating the group's whole batch."""
    from ..ring import data_parallel, runtime

    g = data_parallel.owned_groups(call.mode, trainer.accelerator)
    if g is None or g.cp_size == 1 or runtime.replicated_scope() is not trainer or generating_trainer(trainer) is None:
        return call.original(prompts)
    _check_generation(trainer)
    if len(prompts) % g.cp_size:
        raise ConfigurationError(
            f"{type(trainer).__name__}: {len(prompts)} prompts per generation batch cannot be split over the "
            f"{g.cp_size} ranks of a CP group: make per_device_train_batch_size * steps_per_generation (and "
            f"per_device_eval_batch_size) a multiple of cp_size={g.cp_size}")
    share = len(prompts) // g.cp_size
    with runtime.generating():
        mine = call.original(prompts[g.cp_rank * share:(g.cp_rank + 1) * share])
    parts = data_parallel.all_gather_object_cp((mine, _rng_state()), g)
    _set_rng_state(parts[0][1])
    return joined([result for result, _ in parts])


def _rng_state() -> tuple:
    import torch

    return torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None


def _set_rng_state(state: tuple) -> None:
    """The group goes on with its first rank's torch RNG. TRL seeds each process differently (`set_seed(...,
    device_specific=True)`) so that ranks sample different completions, which the split keeps; but after
    generation the batch is shuffled with that RNG (`shuffle_sequence_dict`), and the ranks of a CP group
    must shuffle it the same way (with one data-parallel rank, as one process does: its first rank's seed)."""
    import torch

    torch.set_rng_state(state[0])
    if state[1] is not None and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(state[1])


def joined(parts: list) -> Any:
    """The ranks' `_generate` results as one: per-completion lists concatenated in rank order, field by field
    (tuples and dicts of them), None where every rank has None, and a tensor every rank holds the same (TRL
    < 1.9 returns the completion-token count it gathered over every process: each rank's share counted once,
    the whole group's total) as it is."""
    first = parts[0]
    if hasattr(first, "shape") and all(hasattr(p, "shape") and p.shape == first.shape and bool((p == first).all())
                                       for p in parts):
        return first
    if isinstance(first, tuple):
        return tuple(joined([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: joined([p[k] for p in parts]) for k in first}
    if isinstance(first, list):
        return [x for p in parts for x in p]
    if all(p is None for p in parts):
        return None
    raise ConfigurationError(f"cpshim cannot join a generation result of type {type(first).__name__} over the "
                             "CP group (a TRL whose _generate returns it is untested): train without "
                             "cpshim.enable()")
