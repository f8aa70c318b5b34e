"""One rank of the gloo ring test: the real ring-flash-attn functions (bf16, reference provider)
against single-process full attention with the same provider, then the same checks with the KV
exchange disabled (negative control). Writes metrics as JSON; the parent test judges them."""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager

import torch
import torch.distributed as dist

DTYPE = torch.bfloat16
B, S, H, HK, D = 2, 256, 4, 2, 32
DOCS = [40, 97, 3, 60, 56]  # packed stream of 256 tokens; documents straddle the rank boundary


def _metrics(got: torch.Tensor, want: torch.Tensor) -> dict:
    got, want = got.float(), want.float()
    return {"rel": float((got - want).norm() / want.norm()), "max_abs": float((got - want).abs().max())}


def _data(seed: int, shape_q, shape_kv):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(shape_q, generator=g).to(DTYPE)
    k = torch.randn(shape_kv, generator=g).to(DTYPE)
    v = torch.randn(shape_kv, generator=g).to(DTYPE)
    dout = torch.randn(shape_q, generator=g).to(DTYPE)
    return q, k, v, dout


def _full(fn, q, k, v, dout, upcast=False):
    """Single-process attention and grads; upcast=True gives the fp32 truth."""
    ts = [t.detach().float() if upcast else t.detach() for t in (q, k, v)]
    ts = [t.requires_grad_() for t in ts]
    out = fn(*ts)
    grads = torch.autograd.grad(out, ts, dout.float() if upcast else dout)
    return [out.detach(), *grads]


def _compare(local, full_sharded, truth_sharded, single_sharded):
    names = ("out", "dq", "dk", "dv")
    res = {}
    for n, a, b, t, s in zip(names, local, full_sharded, truth_sharded, single_sharded):
        m = _metrics(a, b)
        m["rel_vs_fp32"] = _metrics(a, t)["rel"]
        m["single_rel_vs_fp32"] = _metrics(s, t)["rel"]
        res[n] = m
    return res


def dense_case(rfa, P, rank, world, strategy, causal):
    from cpshim.ring.providers.autograd import attention
    from cpshim.ring.sharding import shard

    from ._attn_ref import sdpa_math

    q, k, v, dout = _data(1, (B, S, H, D), (B, S, HK, D))
    full = _full(lambda a, b, c: attention(a, b, c, P, causal=causal), q, k, v, dout)
    truth = _full(lambda a, b, c: sdpa_math(a, b, c, causal), q, k, v, dout, upcast=True)
    sh = lambda t: shard(t, 1, rank, world, strategy)  # noqa: E731
    ql, kl, vl = (sh(t).requires_grad_() for t in (q, k, v))
    fn = rfa.zigzag_ring_flash_attn_func if strategy == "zigzag" else rfa.ring_flash_attn_func
    out = fn(ql, kl, vl, causal=causal, group=None)
    grads = torch.autograd.grad(out, (ql, kl, vl), sh(dout))
    return _compare([out.detach(), *grads], [sh(t) for t in full], [sh(t) for t in truth], [sh(t) for t in full])


def llama3_case(rfa, P, rank, world, heads_k_stride):
    from cpshim.ring.providers.autograd import attention_varlen
    from cpshim.ring.sharding import cu_seqlens_from_position_ids, shard

    from ._attn_ref import sdpa_math_varlen

    pos = torch.cat([torch.arange(n) for n in DOCS])
    cu = cu_seqlens_from_position_ids(pos)
    total = int(cu[-1])
    q, k, v, dout = _data(2, (total, H, D), (total, HK, D))
    mx = max(DOCS)
    full = _full(lambda a, b, c: attention_varlen(a, b, c, cu, cu, mx, mx, P, causal=True), q, k, v, dout)
    truth = _full(lambda a, b, c: sdpa_math_varlen(a, b, c, cu, cu, True), q, k, v, dout, upcast=True)
    sh = lambda t: shard(t, 0, rank, world, "varlen")  # noqa: E731
    cu_q, cu_k, max_q, max_k, kslice = rfa.llama3_flash_attn_prepare_cu_seqlens(cu, True, rank, world)
    ql, kl, vl = (sh(t).requires_grad_() for t in (q, k, v))
    out = rfa.llama3_flash_attn_varlen_func(ql, kl, vl, cu_q, cu_k, max_q, max_k, heads_k_stride, kslice,
                                            causal=True, group=None)
    grads = torch.autograd.grad(out, (ql, kl, vl), sh(dout))
    return _compare([out.detach(), *grads], [sh(t) for t in full], [sh(t) for t in truth], [sh(t) for t in full])


def all_cases(rfa, P, rank, world):
    return {
        "zigzag_causal": dense_case(rfa, P, rank, world, "zigzag", True),
        "ring_causal": dense_case(rfa, P, rank, world, "contiguous", True),
        "ring_noncausal": dense_case(rfa, P, rank, world, "contiguous", False),
        "llama3_varlen_stride1": llama3_case(rfa, P, rank, world, 1),
        "llama3_varlen_stride2": llama3_case(rfa, P, rank, world, 2),
    }


@contextmanager
def no_kv_exchange(rfa_utils):
    """Negative control: every rank 'receives' its own K/V, i.e. attends its shard only."""
    ring, gather = rfa_utils.RingComm, rfa_utils.AllGatherComm
    saved = (ring.send_recv, ring.commit, ring.wait, gather.all_gather, gather.wait)

    def send_recv(self, to_send, recv_tensor=None):
        return to_send.clone() if recv_tensor is None else recv_tensor.copy_(to_send)

    def commit(self):
        self._reqs = []

    def wait(self):
        self._reqs, self._ops = None, []

    def all_gather(self, output, inp):
        output.view(-1, *inp.shape).copy_(inp.unsqueeze(0).expand(output.numel() // inp.numel(), *inp.shape))

    ring.send_recv, ring.commit, ring.wait = send_recv, commit, wait
    gather.all_gather, gather.wait = all_gather, lambda self: None
    try:
        yield
    finally:
        ring.send_recv, ring.commit, ring.wait, gather.all_gather, gather.wait = saved


def main(out_dir: str) -> None:
    """One rank under `cpshim.ring.launch.run_ranks` (env:// rendezvous; the launcher ends the group)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from cpshim.ring.loader import load_ring_flash_attn
    from cpshim.ring.providers import reference_provider

    P = reference_provider()
    loaded = load_ring_flash_attn(P)
    import ring_flash_attn as rfa
    import ring_flash_attn.utils as rfa_utils

    result = {"load": loaded.as_dict(), "flash_attn_in_sys_modules": "flash_attn" in sys.modules,
              "cases": all_cases(rfa, P, rank, world)}
    with no_kv_exchange(rfa_utils):
        result["negative"] = all_cases(rfa, P, rank, world)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
