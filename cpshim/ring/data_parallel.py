"""The ranks of one CP group are one data-parallel rank: gathers and counts over the DP group only.

A ring CP group holds one batch. Its ranks each compute a shard of it, and in the Trainer's eval loop
they return identical values (the hook unshards the logits and averages the loss over the group;
labels and inputs come from the unsharded batch). Upstream gathers over every process, so each value
comes back cp times, and accelerate's last-batch truncation (sized for data-parallel ranks) cuts the
wrong rows. Gathering over the mesh's `dp` dimension (the ranks that share a CP coordinate) gives
what one process per data-parallel rank gives. Counters (tokens seen, FLOPs) use the same group.
"""

from __future__ import annotations

from typing import Any

from .tripwires import TripwireError

disabled = False  # the parity suite's negative control: upstream's gathers and counts over every process


class Groups:
    """The process groups of this rank: data-parallel peers (`dp`) and CP peers (`cp`); None for size 1."""

    def __init__(self, dp: Any, dp_size: int, dp_rank: int, cp: Any, cp_rank: int, cp_size: int) -> None:
        self.dp, self.dp_size, self.dp_rank = dp, dp_size, dp_rank
        self.cp, self.cp_rank, self.cp_size = cp, cp_rank, cp_size


def owned_groups(mode: str, accelerator: Any) -> Groups | None:
    """`groups` when the call is in ring mode with CP owned by cpshim (and the negative control is off)."""
    from ..modes import RING, cp_owned

    if mode != RING or disabled or not cp_owned(getattr(accelerator, "parallelism_config", None)):
        return None
    return groups(accelerator)


def groups(accelerator: Any) -> Groups | None:
    """None unless this process is a rank of a CP mesh (accelerate built `cp`, and `dp` when dp > 1)."""
    import torch.distributed as dist

    mesh = getattr(accelerator, "torch_device_mesh", None)
    names = tuple(getattr(mesh, "mesh_dim_names", None) or ())
    if mesh is None or "cp" not in names or not dist.is_initialized():
        return None
    cp, dp = mesh["cp"], _submesh(mesh, "dp")
    return Groups(dp.get_group() if dp is not None else None, dp.size() if dp is not None else 1,
                  dp.get_local_rank() if dp is not None else 0, cp.get_group(), cp.get_local_rank(), cp.size())


def replicated_groups(mode: str, accelerator: Any = None, collectives: bool = False) -> Groups | None:
    """The groups, when a collective is over CP-replicated values: in a replicated scope (the ring eval loop, a
    label-less or generating step, TRL's precompute; `collectives`: one whose every collective is, see
    `runtime.replicated_collectives`), outside a sharded step whose values are per-shard partials.
    `accelerator`: the caller's, else the scope's trainer's."""
    from . import runtime

    trainer = runtime.replicated_scope()
    step = runtime.current_step()
    if trainer is None or (step is not None and not step.replicated) or (
            collectives and not runtime.replicated_collectives()):
        return None
    return owned_groups(mode, accelerator if accelerator is not None else trainer.accelerator)


def _submesh(mesh: Any, name: str) -> Any:
    """accelerate flattens its data-parallel dimensions into `dp` when any is > 1; absent, dp is 1."""
    try:
        return mesh[name]
    except (KeyError, RuntimeError, ValueError):
        return None


def gather(data: Any, g: Groups) -> Any:
    """accelerate's `gather` over DP peers: across processes 0-dim tensors become 1-dim and results are
    concatenated on dim 0; with one data-parallel rank, what one process gets: the data itself."""
    import torch
    import torch.distributed as dist
    from accelerate.utils import recursively_apply

    if g.dp_size == 1:
        return data

    def one(tensor: Any) -> Any:
        tensor = (tensor.clone()[None] if tensor.ndim == 0 else tensor).contiguous()
        parts = [torch.empty_like(tensor) for _ in range(g.dp_size)]
        dist.all_gather(parts, tensor, group=g.dp)
        return torch.cat(parts, dim=0)

    return recursively_apply(one, data, error_on_other_type=True)


def gather_object(obj: Any, g: Groups) -> Any:
    """accelerate's `gather_object` over DP peers (a list per rank, concatenated); with one data-parallel
    rank, what one process gets: the object itself."""
    import torch.distributed as dist

    if g.dp_size == 1:
        return obj
    parts: list = [None] * g.dp_size
    dist.all_gather_object(parts, obj, group=g.dp)
    return [x for part in parts for x in part]


def all_gather_object_cp(obj: Any, g: Groups) -> list:
    """Every CP rank's `obj`, in rank order."""
    import torch.distributed as dist

    parts: list = [None] * g.cp_size
    dist.all_gather_object(parts, obj, group=g.cp)
    return parts


def _digest(data: Any) -> Any:
    """Per tensor: numel, sum and an index-weighted sum in float64 (cheap, and order-sensitive)."""
    import torch
    from accelerate.utils import recursively_apply

    rows: list = []

    def one(tensor: Any) -> Any:
        flat = torch.nan_to_num(tensor.detach().reshape(-1).to(torch.float64), nan=0.0, posinf=1e300, neginf=-1e300)
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device) % 65_537
        rows.append(torch.stack([flat.new_tensor(float(flat.numel())), flat.sum(), (flat * weights).sum()]))
        return tensor

    recursively_apply(one, data, error_on_other_type=True)
    return torch.cat(rows) if rows else None


def check_replicated(data: Any, g: Groups, what: str) -> None:
    """Tripwire: values the eval loop gathers must be the same on every rank of a CP group."""
    import torch
    import torch.distributed as dist

    mine = _digest(data)
    if mine is None or g.cp_size == 1:
        return
    everyone = [torch.empty_like(mine) for _ in range(g.cp_size)]
    dist.all_gather(everyone, mine, group=g.cp)
    if any(not torch.equal(other, mine) for other in everyone):
        raise TripwireError(
            f"cpshim ring mode: {what} differs between the ranks of one CP group, so gathering it once per "
            "data-parallel rank would drop the other ranks' part. A value computed from a shard (a per-rank "
            "partial sum) must be reduced over the CP group before the Trainer's eval loop gathers it"
        )
