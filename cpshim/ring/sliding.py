"""Sliding-window attention layers under CP: a halo exchange, not the ring.

A sliding layer's query at global position p sees the keys p - w + 1 .. p of its own document
(transformers' convention on every release in range: masking_utils' `kv_idx > q_idx - sliding_window`,
the flash integration's `window_size=(w - 1, w - 1)`). So a rank needs, before each run of consecutive
positions it holds, only the w - 1 keys/values preceding that run (fewer at a document start), from
whichever ranks hold them. Which exchange: one batch of point-to-point sends per layer (each rank to
the ranks whose runs follow its tokens), O(w) tokens per shard boundary, where an all-gather or the
ring would move the whole sequence; the gradient of the halo goes back the same way, reversed. Then
each run attends to [halo; run] locally through the kernel provider with window_size_left = w - 1
(bottom-right causal), as varlen pieces where documents split the run. The plan depends only on the
layout (length, cp, strategy, documents, w), so every rank computes all of it and nothing about it
is exchanged.
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

from ..patches.accelerate_prepare_cp import SLIDING, text_config
from . import tripwires


@dataclass(frozen=True)
class Run:
    """Positions [start, start + length) held by this rank at local offset `local`, with `halo` keys
    before it taken from the halo buffer at `at`, and document boundaries inside it at `cuts`
    (positions relative to the run's start)."""

    local: int
    start: int
    length: int
    halo: int
    at: int
    cuts: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    runs: tuple[Run, ...]
    halo_len: int
    send: tuple[tuple[int, tuple[int, ...]], ...]  # (group rank, local indices it needs from me, in its order)
    recv: tuple[tuple[int, tuple[int, ...]], ...]  # (group rank, slots of my halo buffer it fills)
    own: tuple[tuple[int, ...], tuple[int, ...]]  # (halo slots, local indices) that this rank holds itself


def config_window(config: Any, module: Any) -> int | None:
    """The window transformers builds this layer's mask with (None: full attention): where the config has
    `layer_types`, `sliding_window` for the layer_idx-th entry "sliding_attention" (Gemma 2/3, Qwen2/3, Cohere2,
    gpt-oss, ...); without them, `sliding_window` for every layer (Mistral, Mixtral, Phi3, Starcoder2)."""
    text = text_config(config)
    window = getattr(text, "sliding_window", None) or None
    types = getattr(text, "layer_types", None)
    if not types or window is None:
        return window if not types else None
    idx = getattr(module, "layer_idx", None)
    if not isinstance(idx, int) or not 0 <= idx < len(types):
        raise tripwires.TripwireError(
            f"cpshim ring mode: {type(module).__name__} has no layer_idx within config.layer_types, so the window "
            "of its layer cannot be checked; ring mode cannot run this model's sliding layers")
    return int(window) if types[idx] == SLIDING else None


def checked_window(step: Any, module: Any, name: str, passed: Any) -> int | None:
    """The layer's window, once the model's `sliding_window` argument agrees with its config (cached per step).

    A layer whose config says sliding and whose attention call says nothing (or another window) would run the
    ring over the whole sequence, or the wrong window: refused by name."""
    try:
        expected = step.windows[id(module)]
    except KeyError:
        expected = step.windows[id(module)] = config_window(getattr(module, "config", None) or step.model.config,
                                                            module)
    given = int(passed) if passed else None
    if given != expected:
        raise tripwires.TripwireError(
            f"cpshim ring mode: attention in {name} was called with sliding_window={passed!r}, but the model's "
            f"config gives its layer {'window ' + str(expected) if expected else 'full attention'}; ring mode "
            "cannot tell which one the model computes: report this model to cpshim")
    return expected


@functools.lru_cache(maxsize=4)
def provider(name: str) -> Any:
    """The kernel provider ring-flash-attn is bound to (the halo path runs the same kernels as the ring)."""
    from .providers import get_provider

    return get_provider(name)


def runs_of(positions: list[int]) -> list[tuple[int, int, int]]:
    """(local offset, global start, length) of each run of consecutive positions."""
    out: list[tuple[int, int, int]] = []
    for i, p in enumerate(positions):
        if out and out[-1][1] + out[-1][2] == p:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + 1)
        else:
            out.append((i, p, 1))
    return out


def _positions(global_len: int, rank: int, cp: int, strategy: str) -> list[int]:
    from . import sharding  # imports torch: routing imports this module before any step

    return sharding.shard_indices(global_len, rank, cp, strategy).tolist()


def _owners(global_len: int, cp: int, strategy: str) -> tuple[list[int], list[int]]:
    rank_of, index_of = [0] * global_len, [0] * global_len
    for r in range(cp):
        for i, p in enumerate(_positions(global_len, r, cp, strategy)):
            rank_of[p], index_of[p] = r, i
    return rank_of, index_of


@functools.lru_cache(maxsize=64)
def plan(global_len: int, cp: int, rank: int, strategy: str, window: int, cu: tuple[int, ...] | None = None) -> Plan:
    """What `rank` exchanges for a layer of window `window` (tokens a query sees, itself included).

    `cu`: the packed stream's document boundaries (varlen); None: one document per row."""
    rank_of, index_of = _owners(global_len, cp, strategy)
    starts = list(cu[:-1]) if cu else [0]

    def halo_positions(r: int) -> list[tuple[int, int, int, list[int]]]:
        out = []
        for local, start, length in runs_of(_positions(global_len, r, cp, strategy)):
            doc = starts[bisect_right(starts, start) - 1]
            first = max(doc, start - (window - 1))
            out.append((local, start, length, list(range(first, start))))
        return out

    mine = halo_positions(rank)
    runs, slots, at = [], [], 0
    for local, start, length, need in mine:
        cuts = tuple(c - start for c in (cu or ()) if start < c < start + length)
        runs.append(Run(local, start, length, len(need), at, cuts))
        slots.extend(need)
        at += len(need)
    recv: dict[int, list[int]] = {}
    own: tuple[list[int], list[int]] = ([], [])
    for slot, p in enumerate(slots):
        if rank_of[p] == rank:
            own[0].append(slot)
            own[1].append(index_of[p])
        else:
            recv.setdefault(rank_of[p], []).append(slot)
    send: dict[int, list[int]] = {}
    for dst in range(cp):
        if dst != rank:
            idx = [index_of[p] for *_, need in halo_positions(dst) for p in need if rank_of[p] == rank]
            if idx:
                send[dst] = idx
    return Plan(tuple(runs), at, tuple((r, tuple(v)) for r, v in sorted(send.items())),
                tuple((r, tuple(v)) for r, v in sorted(recv.items())), (tuple(own[0]), tuple(own[1])))


def received_bytes(p: Plan, row_bytes: int) -> int:
    """Bytes this rank receives per layer call (row_bytes: one token's keys and values, all rows)."""
    return sum(len(slots) for _, slots in p.recv) * row_bytes


def _exchange(x: Any, outgoing: list[tuple[int, Any]], incoming: list[tuple[int, int]], group: Any) -> dict:
    """Point-to-point: send each (group rank, tensor), receive (group rank, rows); returns rank -> received."""
    import torch
    import torch.distributed as dist

    peer = (lambda r: r) if group is None else (lambda r: dist.get_global_rank(group, r))
    ops, got = [], {}
    for r, t in outgoing:
        ops.append(dist.P2POp(dist.isend, t.contiguous(), peer(r), group))
    for r, rows in incoming:
        got[r] = torch.empty((x.shape[0], rows, *x.shape[2:]), dtype=x.dtype, device=x.device)
        ops.append(dist.P2POp(dist.irecv, got[r], peer(r), group))
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()
    return got


def halo(x: Any, p: Plan, group: Any) -> Any:
    """(b, s_local, ...) -> (b, p.halo_len, ...): the halo rows of every run, autograd-aware."""
    return _halo_function().apply(x, p, group)


@functools.lru_cache(maxsize=1)
def _halo_function() -> Any:
    """The autograd Function, built on first use (no torch import at module level)."""
    import torch

    class Halo(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, p: Plan, group):
            ctx.p, ctx.group, ctx.shape = p, group, x.shape
            out = x.new_empty((x.shape[0], p.halo_len, *x.shape[2:]))
            dev = x.device
            got = _exchange(x, [(r, x[:, torch.tensor(idx, device=dev)]) for r, idx in p.send],
                            [(r, len(slots)) for r, slots in p.recv], group)
            for r, slots in p.recv:
                out[:, torch.tensor(slots, device=dev)] = got[r]
            if p.own[0]:
                out[:, torch.tensor(p.own[0], device=dev)] = x[:, torch.tensor(p.own[1], device=dev)]
            return out

        @staticmethod
        def backward(ctx, g):
            p, dev = ctx.p, g.device
            grad = g.new_zeros(ctx.shape)
            got = _exchange(grad, [(r, g[:, torch.tensor(slots, device=dev)]) for r, slots in p.recv],
                            [(r, len(idx)) for r, idx in p.send], ctx.group)
            for r, idx in p.send:
                grad.index_add_(1, torch.tensor(idx, device=dev), got[r])
            if p.own[0]:
                grad.index_add_(1, torch.tensor(p.own[1], device=dev), g[:, torch.tensor(p.own[0], device=dev)])
            return grad, None, None

    return Halo


def attention(q: Any, k: Any, v: Any, *, window: int, plan_: Plan, group: Any, provider: Any,
              scale: float | None, softcap: float = 0.0, sinks: Any = None) -> Any:
    """Sliding-window attention of this rank's shard: q (b, s_local, h, d), k/v (b, s_local, hk, d*). Each
    query is in one run, so a run's softmax is the query's whole softmax: softcap and sinks apply per run."""
    import torch

    from .providers.autograd import attention as dense
    from .providers.autograd import attention_varlen

    dk = k.shape[-1]
    kv = halo(torch.cat([k, v], dim=-1), plan_, group)
    outs = []
    for run in plan_.runs:
        rows = slice(run.local, run.local + run.length)
        keys = torch.cat([kv[:, run.at:run.at + run.halo], torch.cat([k[:, rows], v[:, rows]], dim=-1)], dim=1)
        kk, vv = keys[..., :dk], keys[..., dk:]
        if not run.cuts:
            outs.append(dense(q[:, rows], kk, vv, provider, softmax_scale=scale, window_left=window - 1,
                              softcap=softcap, sinks=sinks))
            continue
        bounds_q = [0, *run.cuts, run.length]  # varlen: the stream is one row
        bounds_k = [0] + [c + run.halo for c in bounds_q[1:]]
        cu_q = torch.tensor(bounds_q, dtype=torch.int32, device=q.device)
        cu_k = torch.tensor(bounds_k, dtype=torch.int32, device=q.device)
        max_q = max(b - a for a, b in zip(bounds_q, bounds_q[1:]))
        max_k = max(b - a for a, b in zip(bounds_k, bounds_k[1:]))
        outs.append(attention_varlen(q[0, rows], kk[0], vv[0], cu_q, cu_k, max_q, max_k, provider,
                                     softmax_scale=scale, window_left=window - 1, softcap=softcap,
                                     sinks=sinks).unsqueeze(0))
    return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
