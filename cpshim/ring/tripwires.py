"""Checks that turn silent mis-training into clear errors (each cheap enough to run every step)."""

from __future__ import annotations

import weakref
from typing import Any

from .. import lifecycle
from ..errors import CpshimRuntimeError
from . import runtime
from .step import Step

_armed: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()  # model -> its pre-hook handle


class TripwireError(CpshimRuntimeError):
    """A sharded step did something that would train silently wrong."""


def watch(step: Step) -> list[Any]:
    """Record which attention-like modules run during the step (pre-hooks, removed when the step ends).

    `expected` follows accelerate's naming (`*self_attn`); families name their attention otherwise
    (`attn`, `attention.self`, `self_attention`), and some compute it inline (GPT-1, Bloom's alibi, XLNet's
    relative attention, RWKV's time mixing), never asking the registry. Any module whose class is named
    like attention and that runs without a routed module at, under or above it attended only to its
    shard. Hooks only while the step is current: nothing is added outside sharded steps."""
    routed_names = set(step.expected)

    def seen(module: Any, args: Any) -> None:
        step.called.add(id(module))

    return [m.register_forward_pre_hook(seen) for name, m in step.root.named_modules()
            if "attention" in type(m).__name__.lower() and name not in routed_names and id(m) not in step.outside]


def check_all_ran(step: Step) -> None:
    idle = [name for name, m in step.mixers.items() if id(m) not in step.ran]
    if idle:
        raise TripwireError(
            f"cpshim ring mode: {len(idle)} sequence mixer(s) did not run their CP path on a sharded step "
            f"({', '.join(idle[:4])}{'...' if len(idle) > 4 else ''}): they mixed only the local shard. Their "
            "forward is not the one cpshim patched (replaced by a kernel hub, or the patch is not applied: "
            "`cpshim report`): train this model without cpshim.enable()")
    missing = [name for name, m in step.expected.items() if id(m) not in step.ran]
    if not missing and step.called:
        routed = [n for n, m in step.root.named_modules() if id(m) in step.ran]
        missing = [n for n, m in step.root.named_modules() if id(m) in step.called
                   and not any(r == n or r.startswith(n + ".") or n.startswith(r + ".") for r in routed)]
    if missing:
        raise TripwireError(
            f"cpshim ring mode: {len(missing)} attention module(s) did not run ring attention on a sharded step "
            f"({', '.join(missing[:4])}{'...' if len(missing) > 4 else ''}): they attended only to the local shard. "
            "Use an attention implementation routed through transformers' registry (sdpa, flash_attention_*); a "
            "family whose attention never asks the registry cannot run ring mode: train it without cpshim.enable()"
        )


def check_local_length(step: Step, seq_len: int, module_name: str) -> None:
    if seq_len != step.local_len:
        raise TripwireError(
            f"cpshim ring mode: attention in {module_name} got {seq_len} tokens, but the Trainer hook produced "
            f"{step.local_len} per rank. Either {module_name} attends over something other than the text "
            "sequence (a tower of a model cpshim does not see as a vision-language model: it shards those at "
            "their `get_decoder()` and leaves the rest unsharded; train it without cpshim.enable()), or something "
            "sharded the batch again (1/cp^2 of the tokens, axolotl #3498: remove the other sequence-parallel "
            "sharding when cpshim.enable() is on)"
        )


def check_mixer_call(step: Step, module: Any, args: tuple, seq_len: int, varlen_why: str) -> str:
    """A patched mixer's call in a sharded step: its arguments by name (the CP path passes cache and mask by
    name), a strategy it computes exactly (`varlen_why`: why packed documents have no exact answer), its shard.
    Returns the module's name for messages."""
    name = f"{type(module).__name__} (layer {getattr(module, 'layer_idx', '?')})"
    if args:
        raise TripwireError(f"cpshim ring mode: {name} was called with {len(args)} positional argument(s) after "
                            "hidden_states; cpshim passes the cache and mask by name: report this transformers "
                            "release to cpshim")
    if step.strategy == "varlen":
        raise TripwireError(f"cpshim ring mode: {name} {varlen_why}, so strategy='varlen' has no exact answer for "
                            "it: use strategy='zigzag' or 'contiguous' with one document per row")
    check_local_length(step, seq_len, name)
    return name


def check_same_batch(input_ids: Any, group: Any, rank: int) -> None:
    """All ranks of a CP group must hold the same batch (they each keep a different shard of it)."""
    import torch
    import torch.distributed as dist

    ids = input_ids.to(torch.int64).reshape(-1)
    weights = torch.arange(1, ids.numel() + 1, dtype=torch.int64, device=ids.device) % 1_000_003
    mine = torch.stack([torch.tensor(ids.numel(), device=ids.device), ids.sum(), (ids * weights).sum()])
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(everyone, mine, group=group)
    if any(not torch.equal(other, mine) for other in everyone):
        raise TripwireError(
            "cpshim ring mode: the ranks of one CP group hold different batches; each would train on a mix of "
            "shards of unrelated sequences. Use a map-style Dataset (accelerate's DataLoaderDispatcher and "
            "DeepSpeed's dataloader split batches across CP ranks), or dispatch_batches=False"
        )


def arm(model: Any) -> None:
    """After a model's first sharded training step, a forward of it that trains (training mode, grad on)
    outside a sharded step is an error: the Trainer hook did not shard that step. Generation and eval run
    under no_grad and pass. A forward pre-hook on the model (once per forward, not per layer per token),
    active while `attention-dispatch` is."""
    if model in _armed:
        return
    import torch

    def pre_hook(module: Any, args: Any) -> None:
        if module.training and torch.is_grad_enabled() and runtime.current_step() is None \
                and lifecycle.is_active("attention-dispatch"):
            raise TripwireError(
                "cpshim ring mode: the model ran a training forward on an unsharded batch with CP on; the "
                "Trainer hook did not shard this step (a subclass overriding training_step or "
                "_prepare_context_parallel_inputs?)")

    _armed[model] = model.register_forward_pre_hook(pre_hook)
