"""Sequence sharding for ring attention: zigzag, contiguous and varlen (packed, llama3 kernels).

Every strategy is a permutation of global positions (`shard_indices`), so shard/unshard are
index_selects and position_ids shard exactly like the tokens they label. Labels are shifted and
position_ids built on the full sequence *before* sharding, so no target is lost at a shard edge.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Sequence

import torch

from .errors import ShardingError

STRATEGIES = ("zigzag", "contiguous", "varlen")
IGNORE_INDEX = -100


def _check(strategy: str, cp: int, rank: int | None = None) -> None:
    if strategy not in STRATEGIES:
        raise ShardingError(f"unknown sharding strategy {strategy!r}; choose one of {STRATEGIES}")
    if cp < 1:
        raise ShardingError(f"cp size must be >= 1, got {cp}")
    if rank is not None and not 0 <= rank < cp:
        raise ShardingError(f"rank {rank} is outside the CP group of size {cp}")


def multiple_for(strategy: str, cp: int) -> int:
    """Length multiple a strategy needs: zigzag 2*cp chunks; contiguous cp; varlen (llama3) cp on the total."""
    _check(strategy, cp)
    return 2 * cp if strategy == "zigzag" else cp


def padded_length(seq_len: int, strategy: str, cp: int) -> int:
    m = multiple_for(strategy, cp)
    return -(-seq_len // m) * m


def shard_indices(seq_len: int, rank: int, cp: int, strategy: str,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Global positions held by `rank`, in local order (int64)."""
    _check(strategy, cp, rank)
    m = multiple_for(strategy, cp)
    if seq_len % m:
        raise ShardingError(
            f"sequence length {seq_len} is not a multiple of {m} ({strategy}, cp={cp}); pad it first "
            "(cpshim.ring.sharding.pad_for_strategy)")
    if strategy == "zigzag":
        c = seq_len // m
        first = torch.arange(rank * c, (rank + 1) * c, device=device)
        second = torch.arange((m - 1 - rank) * c, (m - rank) * c, device=device)
        return torch.cat([first, second])
    n = seq_len // cp
    return torch.arange(rank * n, (rank + 1) * n, device=device)


def shard(tensor: torch.Tensor, seq_dim: int, rank: int, cp: int, strategy: str) -> torch.Tensor:
    """This rank's part of `tensor` along `seq_dim` (a new tensor)."""
    idx = shard_indices(tensor.shape[seq_dim], rank, cp, strategy, device=tensor.device)
    return tensor.index_select(seq_dim, idx)


def unshard(shards: Sequence[torch.Tensor] | torch.Tensor, seq_dim: int, cp: int, strategy: str) -> torch.Tensor:
    """Inverse of `shard`: a list of the cp shards in rank order, or their concatenation along
    `seq_dim` (what all_gather + cat gives)."""
    gathered = shards if isinstance(shards, torch.Tensor) else torch.cat(list(shards), dim=seq_dim)
    if not isinstance(shards, torch.Tensor) and len(shards) != cp:
        raise ShardingError(f"expected {cp} shards, got {len(shards)}")
    seq_len = gathered.shape[seq_dim]
    order = torch.cat([shard_indices(seq_len, r, cp, strategy, device=gathered.device) for r in range(cp)])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(seq_len, device=gathered.device)
    return gathered.index_select(seq_dim, inverse)


def pad_to_length(tensor: torch.Tensor, seq_dim: int, length: int, value: float | int) -> torch.Tensor:
    """Right-pad `tensor` along `seq_dim` to `length` with `value` (no copy when already long enough)."""
    n = tensor.shape[seq_dim]
    if n >= length:
        return tensor
    shape = list(tensor.shape)
    shape[seq_dim] = length - n
    return torch.cat([tensor, tensor.new_full(shape, value)], dim=seq_dim)


def pad_for_strategy(tensor: torch.Tensor, seq_dim: int, cp: int, strategy: str, value: float | int) -> torch.Tensor:
    """Right-pad to the strategy's multiple. Use value=-100 for labels, the pad id for input_ids."""
    return pad_to_length(tensor, seq_dim, padded_length(tensor.shape[seq_dim], strategy, cp), value)


def pad_position_ids(position_ids: torch.Tensor, cp: int, strategy: str) -> torch.Tensor:
    """Right-pad (…, L) position_ids. varlen: the padding is its own document (0, 1, …) so real
    documents keep their cu_seqlens; other strategies: positions keep counting."""
    n = position_ids.shape[-1]
    extra = padded_length(n, strategy, cp) - n
    if extra == 0:
        return position_ids
    ar = torch.arange(extra, device=position_ids.device, dtype=position_ids.dtype)
    tail = ar if strategy == "varlen" else position_ids[..., -1:] + 1 + ar
    return torch.cat([position_ids, tail.expand(*position_ids.shape[:-1], extra)], dim=-1)


def build_shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Full-length targets: shift_labels[..., i] = labels[..., i + 1], last = ignore_index (as
    transformers' ForCausalLMLoss shifts), built before sharding."""
    return torch.nn.functional.pad(labels[..., 1:], (0, 1), value=ignore_index)


def build_position_ids(batch_size: int, seq_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Global positions 0..L-1 per row, (B, L) int64, built before sharding."""
    return torch.arange(seq_len, device=device).unsqueeze(0).expand(batch_size, seq_len).clone()


def packed_rows(position_ids: torch.Tensor) -> bool:
    """Whether a row holds several documents by transformers' rule (`find_packed_sequence_indices`: a step of
    position_ids other than +1 starts one), which one process keeps apart (block mask, flash varlen)."""
    pos = position_ids.reshape(-1, position_ids.shape[-1])
    return pos.shape[-1] > 1 and bool((torch.diff(pos, dim=-1) != 1).any())


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """int32 cu_seqlens of the packed stream: a document starts where position_ids is 0 and at every
    row start of a (B, L) tensor (rows are concatenated in order)."""
    pos = position_ids.reshape(-1, position_ids.shape[-1]) if position_ids.dim() > 1 else position_ids.reshape(1, -1)
    starts = pos == 0
    starts[:, 0] = True
    flat = torch.nonzero(starts.reshape(-1), as_tuple=True)[0]
    total = torch.tensor([pos.numel()], device=pos.device)
    return torch.cat([flat, total]).to(torch.int32)


def llama3_local_params(cu_seqlens: torch.Tensor, rank: int, cp: int, causal: bool = True):
    """Per-rank arguments of ring-flash-attn's llama3 varlen kernels for a contiguous split of the
    packed stream; same values as `llama3_flash_attn_prepare_cu_seqlens` (pure python on the host).

    Returns (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, local_k_slice).
    """
    _check("varlen", cp, rank)
    cu = [int(c) for c in cu_seqlens.tolist()]
    if cu[-1] % cp:
        raise ShardingError(f"packed length {cu[-1]} is not a multiple of cp={cp}; pad it first")
    n = cu[-1] // cp
    lo, hi = rank * n, (rank + 1) * n
    left, right = bisect_left(cu, lo), bisect_left(cu, hi)
    if cu[left] != lo:
        left -= 1
    q = [c - lo for c in cu[left:right + 1]]
    q[0], q[-1] = 0, n
    k = cu[left:right + 1]
    if causal:
        k[-1] = hi
    k_right = hi if causal else cu[right]
    k = [c - cu[left] for c in k]
    dev = cu_seqlens.device
    as_t = lambda xs: torch.tensor(xs, dtype=torch.int32, device=dev)  # noqa: E731
    max_q = max(b - a for a, b in zip(q, q[1:]))
    max_k = max(b - a for a, b in zip(k, k[1:]))
    return as_t(q), as_t(k), max_q, max_k, slice(cu[left], k_right)


@dataclass
class ShardedInputs:
    """One rank's inputs. For varlen the rows are packed into one stream (batch 1) and
    `cu_seqlens` is the global one (the same on every rank)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    shift_labels: torch.Tensor | None
    cu_seqlens: torch.Tensor | None
    global_len: int
    padding: int


def shard_inputs(input_ids: torch.Tensor, *, rank: int, cp: int, strategy: str = "zigzag",
                 labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                 pad_token_id: int = 0, ignore_index: int = IGNORE_INDEX) -> ShardedInputs:
    """(B, L) batch -> this rank's shard: shift labels and build global positions on the full
    sequence, pad to the strategy's multiple (labels -100), then shard every tensor alike."""
    _check(strategy, cp, rank)
    b, n = input_ids.shape
    if position_ids is None:
        position_ids = build_position_ids(b, n, input_ids.device)
    shift = build_shift_labels(labels, ignore_index) if labels is not None else None
    cu = None
    if strategy == "varlen":  # pack rows into one stream; row starts are document boundaries too
        cu = cu_seqlens_from_position_ids(position_ids)
        input_ids, position_ids = input_ids.reshape(1, -1), position_ids.reshape(1, -1)
        shift = shift.reshape(1, -1) if shift is not None else None
    length = input_ids.shape[1]
    input_ids = pad_for_strategy(input_ids, 1, cp, strategy, pad_token_id)
    position_ids = pad_position_ids(position_ids, cp, strategy)
    shift = pad_for_strategy(shift, 1, cp, strategy, ignore_index) if shift is not None else None
    if cu is not None and input_ids.shape[1] > length:  # the padding is one more document
        cu = torch.cat([cu, cu.new_tensor([input_ids.shape[1]])])
    return ShardedInputs(
        input_ids=shard(input_ids, 1, rank, cp, strategy),
        position_ids=shard(position_ids, 1, rank, cp, strategy),
        shift_labels=shard(shift, 1, rank, cp, strategy) if shift is not None else None,
        cu_seqlens=cu, global_len=input_ids.shape[1], padding=input_ids.shape[1] - length)


__all__ = [
    "STRATEGIES", "IGNORE_INDEX", "multiple_for", "padded_length", "shard_indices", "shard", "unshard",
    "pad_to_length", "pad_for_strategy", "pad_position_ids", "build_shift_labels", "build_position_ids",
    "cu_seqlens_from_position_ids", "llama3_local_params", "ShardedInputs", "shard_inputs",
]
