"""Differentiable single-process attention through a provider's kernels.

The CP parity runs compare the ring against "one process using the same kernel provider and dtype";
this is that one process's attention, so both sides share kernels and rounding. The halo runs of a
sliding layer use it too. A layer's softcap goes to the kernels; its sinks are merged into each query's
output and lse (`cpshim.ring.sinks`), and the backward runs on the merged pair.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import sinks as sink_math
from . import Provider


def _params(left: int, cap: float) -> dict[str, Any]:
    return dict(dropout_p=0.0, window_size_left=left, window_size_right=-1, softcap=cap, alibi_slopes=None)


class _DenseFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, sinks, provider: Provider, causal: bool, scale: float, left: int, cap: float):
        out, lse, _, _ = provider.forward(q=q, k=k, v=v, softmax_scale=scale, causal=causal, return_softmax=False,
                                          **_params(left, cap))
        if sinks is not None:
            out, lse = sink_math.merge(out, lse, sinks)
        ctx.save_for_backward(q, k, v, out, lse, sinks)
        ctx.provider, ctx.causal, ctx.scale, ctx.left, ctx.cap = provider, causal, scale, left, cap
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, sinks = ctx.saved_tensors
        dout = dout.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        ctx.provider.backward(dout=dout, q=q, k=k, v=v, out=out, softmax_lse=lse, dq=dq, dk=dk, dv=dv,
                              softmax_scale=ctx.scale, causal=ctx.causal, deterministic=True,
                              **_params(ctx.left, ctx.cap))
        dsinks = sink_math.grad(dout, out, lse, sinks) if sinks is not None else None
        return dq, dk, dv, dsinks, None, None, None, None, None


class _VarlenFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, sinks, cu_q, cu_k, max_q, max_k, provider: Provider, causal: bool, scale: float,
                left: int, cap: float):
        out, lse, _, _ = provider.varlen_forward(
            q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k,
            softmax_scale=scale, causal=causal, return_softmax=False, **_params(left, cap))
        if sinks is not None:
            out, lse = sink_math.merge(out, lse, sinks)
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, sinks)
        ctx.provider, ctx.causal, ctx.scale, ctx.max, ctx.left, ctx.cap = provider, causal, scale, (max_q, max_k), \
            left, cap
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, cu_q, cu_k, sinks = ctx.saved_tensors
        dout = dout.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        ctx.provider.varlen_backward(
            dout=dout, q=q, k=k, v=v, out=out, softmax_lse=lse, dq=dq, dk=dk, dv=dv,
            cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=ctx.max[0], max_seqlen_k=ctx.max[1],
            softmax_scale=ctx.scale, causal=ctx.causal, deterministic=True, **_params(ctx.left, ctx.cap))
        dsinks = sink_math.grad(dout, out, lse, sinks) if sinks is not None else None
        return (dq, dk, dv, dsinks) + (None,) * 9


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, provider: Provider, *, causal: bool = True,
              softmax_scale: float | None = None, window_left: int = -1, softcap: float = 0.0,
              sinks: torch.Tensor | None = None) -> torch.Tensor:
    """q (b, s_q, h, d), k/v (b, s_k, h_kv, d) -> (b, s_q, h, d); differentiable. `window_left` >= 0: each
    query sees the keys from its (bottom-right) diagonal - window_left to the diagonal. `sinks`: (h,)."""
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    return _DenseFn.apply(q, k, v, sinks, provider, causal, scale, window_left, float(softcap or 0.0))


def attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, provider: Provider, *,
                     causal: bool = True, softmax_scale: float | None = None, window_left: int = -1,
                     softcap: float = 0.0, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Packed q (total_q, h, d), k/v (total_k, h_kv, d) with int32 cu_seqlens; differentiable."""
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    return _VarlenFn.apply(q, k, v, sinks, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                           provider, causal, scale, window_left, float(softcap or 0.0))
