"""One rank of the gloo test of softcap and attention sinks under CP: the ring of every strategy
(`cpshim.ring.ring_calls`) and the halo exchange of a sliding layer, bf16, reference provider, against
one process with the same provider, dtype and modifiers; the sinks' gradient summed over the group.
Then negative controls: the sinks dropped, the softcap dropped. Writes metrics as JSON."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import torch
import torch.distributed as dist

DTYPE = torch.bfloat16
B, S, H, HK, D = 2, 192, 4, 2, 16
DOCS = [30, 5, 70, 3, 84]
CAP = 5.0
# (path, strategy, softcap, sinks): the ring with each modifier alone and both; the halo path with both
CASES = [("ring", s, cap, sinks) for s in ("zigzag", "contiguous", "varlen")
         for cap, sinks in ((CAP, False), (0.0, True), (CAP, True))]
CASES += [("halo", s, CAP, True) for s in ("zigzag", "contiguous", "varlen")]
WINDOW = 40


def _rel(got, want) -> float:
    got, want = got.float(), want.float()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def case(P, rank, world, path, strategy, cap, with_sinks, drop=None):
    import ring_flash_attn

    from cpshim.ring import ring_calls, sharding, sliding
    from cpshim.ring.providers.autograd import attention, attention_varlen

    g = torch.Generator().manual_seed(7)
    varlen = strategy == "varlen"
    b = 1 if varlen else B
    q = (3 * torch.randn(b, S, H, D, generator=g)).to(DTYPE)  # scores large enough for the cap to bite
    k = torch.randn(b, S, HK, D, generator=g).to(DTYPE)
    v = torch.randn(b, S, HK, D, generator=g).to(DTYPE)
    dout = torch.randn(b, S, H, D, generator=g).to(DTYPE)
    sinks = (torch.randn(H, generator=g) + 2.0).requires_grad_() if with_sinks else None
    left = WINDOW - 1 if path == "halo" else -1
    cu = sharding.cu_seqlens_from_position_ids(torch.cat([torch.arange(n) for n in DOCS])) if varlen else None
    ts = [t.clone().requires_grad_() for t in (q, k, v)]
    leaves = ts + ([sinks] if sinks is not None else [])
    if varlen:
        mx = max(DOCS)
        full = attention_varlen(ts[0][0], ts[1][0], ts[2][0], cu, cu, mx, mx, P, window_left=left, softcap=cap,
                                sinks=sinks)[None]
    else:
        full = attention(*ts, P, window_left=left, softcap=cap, sinks=sinks)
    want = [full.detach(), *torch.autograd.grad(full, leaves, dout)]
    sh = lambda t: sharding.shard(t, 1, rank, world, strategy)  # noqa: E731
    local = [sh(t).requires_grad_() for t in (q, k, v)]
    mods = dict(softcap=0.0 if drop == "softcap" else cap, sinks=None if drop == "sinks" else sinks)
    if path == "halo":
        plan = sliding.plan(S, world, rank, strategy, WINDOW, tuple(cu.tolist()) if cu is not None else None)
        out = sliding.attention(*local, window=WINDOW, plan_=plan, group=None, provider=P, scale=None, **mods)
    else:
        step = SimpleNamespace(strategy=strategy, group=None, heads_k_stride=1,
                               varlen=sharding.llama3_local_params(cu, rank, world) if varlen else None)
        out = ring_calls.run(ring_flash_attn, step, *local, D ** -0.5, **mods)
    grads = list(torch.autograd.grad(out, local + ([sinks] if mods["sinks"] is not None else []), sh(dout)))
    rel = {n: _rel(a, sh(w)) for n, a, w in zip(("out", "dq", "dk", "dv"), [out.detach(), *grads[:3]], want)}
    if sinks is not None:
        dsinks = grads[3] if len(grads) > 3 else torch.zeros_like(sinks)
        dist.all_reduce(dsinks)  # each rank's queries' share: the group's sum is one process's gradient
        rel["dsinks"] = _rel(dsinks, want[4])
    return rel


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from cpshim.ring.loader import load_ring_flash_attn
    from cpshim.ring.providers import reference_provider

    P = reference_provider()
    load_ring_flash_attn(P)
    result = {"-".join(map(str, c)): case(P, rank, world, *c) for c in CASES}
    result["negative"] = {}
    for c in CASES:
        for drop in ("sinks", "softcap"):
            if (drop == "sinks" and c[3]) or (drop == "softcap" and c[2]):
                result["negative"]["-".join(map(str, c)) + f"-no-{drop}"] = case(P, rank, world, *c, drop=drop)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
