"""Differentiable single-process attention through a provider's kernels.

The CP parity runs compare the ring against "one process using the same kernel provider and dtype";
this is that one process's attention, so both sides share kernels and rounding.
"""

from __future__ import annotations

from typing import Any

import torch

from . import Provider


def _fwd_params(left: int) -> dict[str, Any]:
    return dict(dropout_p=0.0, window_size_left=left, window_size_right=-1, softcap=0.0,
                alibi_slopes=None, return_softmax=False)


def _bwd_params(left: int) -> dict[str, Any]:
    return dict(dropout_p=0.0, window_size_left=left, window_size_right=-1, softcap=0.0,
                alibi_slopes=None, deterministic=True)


class _DenseFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, provider: Provider, causal: bool, scale: float, left: int):
        out, lse, _, _ = provider.forward(q=q, k=k, v=v, softmax_scale=scale, causal=causal, **_fwd_params(left))
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.provider, ctx.causal, ctx.scale, ctx.left = provider, causal, scale, left
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        ctx.provider.backward(dout=dout.contiguous(), q=q, k=k, v=v, out=out, softmax_lse=lse, dq=dq, dk=dk,
                              dv=dv, softmax_scale=ctx.scale, causal=ctx.causal, **_bwd_params(ctx.left))
        return dq, dk, dv, None, None, None, None


class _VarlenFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, provider: Provider, causal: bool, scale: float, left: int):
        out, lse, _, _ = provider.varlen_forward(
            q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k,
            softmax_scale=scale, causal=causal, **_fwd_params(left))
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
        ctx.provider, ctx.causal, ctx.scale, ctx.max, ctx.left = provider, causal, scale, (max_q, max_k), left
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        ctx.provider.varlen_backward(
            dout=dout.contiguous(), q=q, k=k, v=v, out=out, softmax_lse=lse, dq=dq, dk=dk, dv=dv,
            cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=ctx.max[0], max_seqlen_k=ctx.max[1],
            softmax_scale=ctx.scale, causal=ctx.causal, **_bwd_params(ctx.left))
        return dq, dk, dv, None, None, None, None, None, None, None, None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, provider: Provider, *, causal: bool = True,
              softmax_scale: float | None = None, window_left: int = -1) -> torch.Tensor:
    """q (b, s_q, h, d), k/v (b, s_k, h_kv, d) -> (b, s_q, h, d); differentiable. `window_left` >= 0: each
    query sees the keys from its (bottom-right) diagonal - window_left to the diagonal."""
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    return _DenseFn.apply(q, k, v, provider, causal, scale, window_left)


def attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, provider: Provider, *,
                     causal: bool = True, softmax_scale: float | None = None, window_left: int = -1) -> torch.Tensor:
    """Packed q (total_q, h, d), k/v (total_k, h_kv, d) with int32 cu_seqlens; differentiable."""
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    return _VarlenFn.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                           provider, causal, scale, window_left)
