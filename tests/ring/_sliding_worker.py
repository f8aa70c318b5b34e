"""One rank of the gloo sliding-window test: `cpshim.ring.sliding.attention` (halo exchange, bf16,
reference provider) against single-process windowed attention with the same provider and dtype, on
every strategy, with windows shorter and longer than a shard; then the same with the halo dropped
(negative control). Writes metrics as JSON; the parent test judges them."""

from __future__ import annotations

import dataclasses
import json
import os

import torch
import torch.distributed as dist

DTYPE = torch.bfloat16
B, S, H, HK, D, DV = 2, 192, 4, 2, 16, 8  # DV != D: MLA-like value heads travel with the keys
DOCS = [30, 5, 70, 3, 84]  # the packed stream (192 tokens): documents shorter and longer than the window

# (strategy, window): shorter than a zigzag chunk, not dividing it, longer than a shard, the whole row
CASES = [(s, w) for s in ("zigzag", "contiguous", "varlen") for w in (2, 7, 40, 130, 191)]


def _metrics(got, want) -> float:
    got, want = got.float(), want.float()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def case(P, rank, world, strategy, window, drop_halo=False):
    from cpshim.ring import sharding, sliding
    from cpshim.ring.providers.autograd import attention, attention_varlen

    g = torch.Generator().manual_seed(window)
    varlen = strategy == "varlen"
    b = 1 if varlen else B
    q = torch.randn(b, S, H, D, generator=g).to(DTYPE)
    k = torch.randn(b, S, HK, D, generator=g).to(DTYPE)
    v = torch.randn(b, S, HK, DV, generator=g).to(DTYPE)
    dout = torch.randn(b, S, H, DV, generator=g).to(DTYPE)
    cu = None
    if varlen:
        cu = sharding.cu_seqlens_from_position_ids(torch.cat([torch.arange(n) for n in DOCS]))
    ts = [t.clone().requires_grad_() for t in (q, k, v)]
    if varlen:
        mx = max(DOCS)
        full = attention_varlen(ts[0][0], ts[1][0], ts[2][0], cu, cu, mx, mx, P, window_left=window - 1)[None]
    else:
        full = attention(*ts, P, window_left=window - 1)
    want = [full.detach(), *torch.autograd.grad(full, ts, dout)]
    plan = sliding.plan(S, world, rank, strategy, window, tuple(cu.tolist()) if cu is not None else None)
    if drop_halo:
        plan = dataclasses.replace(plan, runs=tuple(dataclasses.replace(r, halo=0) for r in plan.runs))
    sh = lambda t: sharding.shard(t, 1, rank, world, strategy)  # noqa: E731
    local = [sh(t).requires_grad_() for t in (q, k, v)]
    out = sliding.attention(*local, window=window, plan_=plan, group=None, provider=P, scale=None)
    got = [out.detach(), *torch.autograd.grad(out, local, sh(dout))]
    row_bytes = b * HK * (D + DV) * q.element_size()
    return {"rel": {n: _metrics(a, sh(w)) for n, a, w in zip(("out", "dq", "dk", "dv"), got, want)},
            "received": sliding.received_bytes(plan, row_bytes), "gather_bytes": (world - 1) * (S // world) * row_bytes}


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from cpshim.ring.providers import reference_provider

    P = reference_provider()
    result = {f"{s}-{w}": case(P, rank, world, s, w) for s, w in CASES}
    result["negative"] = {f"{s}-{w}": case(P, rank, world, s, w, drop_halo=True) for s, w in CASES}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
