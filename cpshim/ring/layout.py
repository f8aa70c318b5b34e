"""One batch's sequence keys sharded for the ring, and the facts needed to put a sequence back together.

Both sharding points use it: the Trainer hook (a batch with labels, sharded before the model) and the
backbone hook (a label-less batch, sharded at the decoder backbone's entry, see `cpshim.ring.backbone`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from . import sharding
from .step import Step


@dataclass
class Layout:
    """(batch, length) rows -> one rank's shard. varlen packs the rows into one stream first (batch 1),
    with `cu` the stream's cu_seqlens (the strategy's padding is one more document)."""

    batch: int
    length: int
    full: int  # the sequence length before padding (batch * length for varlen)
    padded: int
    local_len: int
    strategy: str
    cp: int
    rank: int
    cu: Any = None

    def step(self, group: Any, settings: dict, model: Any) -> Step:
        return Step(cp=self.cp, rank=self.rank, group=group, strategy=self.strategy, local_len=self.local_len,
                    global_len=self.padded, padding=self.padded - self.full,
                    heads_k_stride=settings["heads_k_stride"], ring_dtype=settings["ring_dtype"], model=model,
                    varlen=sharding.llama3_local_params(self.cu, self.rank, self.cp) if self.cu is not None else None,
                    cu=tuple(self.cu.tolist()) if self.cu is not None else None)


def seq_keys(inputs: dict, batch: int, length: int) -> list[str]:
    """The keys whose tensors run along the sequence: (batch, length, ...)."""
    return [k for k, v in inputs.items()
            if hasattr(v, "dim") and v.dim() >= 2 and tuple(v.shape[:2]) == (batch, length)]


def shard_keys(inputs: dict, keys: list[str], strategy: str, cp: int, rank: int, pad: dict) -> Layout:
    """Shard `inputs[k]` for every k in `keys` in place (position_ids required; `pad` gives a key's padding
    value, 0 otherwise): varlen packs the rows first, then each key is padded to the strategy's multiple
    and this rank's positions are kept."""
    batch, length = inputs[keys[0]].shape[:2]
    cu = None
    if strategy == "varlen":
        cu = sharding.cu_seqlens_from_position_ids(inputs["position_ids"])
        for k in keys:
            inputs[k] = inputs[k].reshape(1, batch * length, *inputs[k].shape[2:])
    full = inputs[keys[0]].shape[1]
    for k in keys:
        if k == "position_ids":
            inputs[k] = sharding.pad_position_ids(inputs[k], cp, strategy)
        else:
            inputs[k] = sharding.pad_for_strategy(inputs[k], 1, cp, strategy, pad.get(k, 0))
    padded = inputs[keys[0]].shape[1]
    if cu is not None and padded > full:
        cu = torch.cat([cu, cu.new_tensor([padded])])
    for k in keys:
        inputs[k] = sharding.shard(inputs[k], 1, rank, cp, strategy)
    return Layout(batch=batch, length=length, full=full, padded=padded, local_len=inputs[keys[0]].shape[1],
                  strategy=strategy, cp=cp, rank=rank, cu=cu)


def left_padding(mask: Any) -> Any:
    """Per row, the padding before its first real token (a 2-D mask), or None when no row has any."""
    if mask is None or mask.dim() != 2:
        return None
    lead = (mask.to(torch.int64).cumsum(1) == 0).sum(1)
    return lead if bool(lead.any()) else None


def roll(tensor: Any, shift: Any) -> Any:
    """Each row's positions rotated left by `shift[row]` (right by a negative shift), differentiably.

    The ring ignores the padding mask: it is causal over the whole row, so left padding (GRPO's prompts) would
    be attended by the real tokens that one process masks it from. Rolled left by its leading padding, a
    [pad, prompt, completion, pad] row becomes [prompt, completion, pad, pad]: every real token sees exactly
    the real tokens before it, under its own position id (position_ids roll with the tokens), as in one process.
    The backbone's outputs roll back before anything reads them."""
    batch, length = tensor.shape[:2]
    index = (torch.arange(length, device=tensor.device)[None, :] + shift.to(tensor.device)[:, None]) % length
    index = index.reshape(batch, length, *([1] * (tensor.dim() - 2))).expand_as(tensor)
    return torch.gather(tensor, 1, index)


#: The parity suite's negative control: the gradient of a gathered sequence is not summed over the group.
reduce_gradients = True


def gather(local: Any, step: Step, batch: int, length: int) -> Any:
    """The whole sequence from every rank's shard of it (along dim 1): all-gathered over the CP group,
    unsharded, the strategy's padding cut and varlen's stream split back into (batch, length) rows.
    Differentiable: backward sums the gradient over the group and keeps this rank's positions (see
    `_AllGather`)."""
    gathered = _AllGather.apply(local, step.group, step.rank, step.cp) if torch.is_grad_enabled() \
        else _all_gather(local, step.group, step.cp)
    full = sharding.unshard(gathered, 1, step.cp, step.strategy)[:, : step.global_len - step.padding]
    return full.reshape(batch, length, *full.shape[2:])


def _all_gather(local: Any, group: Any, cp: int) -> Any:
    parts = [torch.empty_like(local) for _ in range(cp)]
    dist.all_gather(parts, local.contiguous(), group=group)
    return torch.cat(parts, dim=1)


class _AllGather(torch.autograd.Function):
    """Forward: the shards in rank order. Backward: every rank of the group computed the same loss from the
    gathered sequence, so each put a gradient on every position; a shard's gradient is their sum over the
    group (an all-reduce: gloo has no reduce-scatter), and the data-parallel mean over the processes (the
    CP peers among them) divides it by cp again: one process's gradient."""

    @staticmethod
    def forward(ctx: Any, local: Any, group: Any, rank: int, cp: int) -> Any:
        ctx.group, ctx.rank, ctx.n = group, rank, local.shape[1]
        return _all_gather(local, group, cp)

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        grad = grad.contiguous().clone()
        if reduce_gradients:
            dist.all_reduce(grad, group=ctx.group)
        return grad[:, ctx.rank * ctx.n: (ctx.rank + 1) * ctx.n], None, None, None
