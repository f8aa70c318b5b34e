"""Pure-torch stand-ins for flash-attn 2.8's private kernels (any device, any float dtype).

ring-flash-attn calls `_flash_attn_forward(**params)` with params read from this module's
signatures, so names, order and defaults mirror flash_attn/flash_attn_interface.py v2.8.3, and so
do the returns: forward -> (out, softmax_lse, S_dmask, rng_state) with lse fp32 (b, h, s_q)
(varlen: (h, total_q)); backward writes dq/dk/dv in place and returns softmax_d. Causal masks are
bottom-right aligned as in flash-attn >= 2.1, and so is a causal window to the left (keys
diagonal - window_size_left .. diagonal). Softcap is flash-attn's: scaled scores become
cap * tanh(scores / cap) before the masks, and the backward multiplies by 1 - tanh^2. Math runs in
fp32 (fp64 for fp64 input) over blocks of queries so that memory stays O(block x s_k) (with a
window, O(block x (block + window))). A call's score-sized blocks live in buffers allocated once per call
(`_Workspace`): causal blocks widen row block by row block, and a fresh allocation per block, each a little
larger than the last, fragments a CPU heap (glibc keeps the freed blocks, so a process's resident memory
grows by more than the kernel ever holds).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ..errors import UnsupportedAttentionError
from ._common import check_supported, resolve_scale, round_multiple, varlen_softmax_d
from .softcap import effective_softcap

NAME = "reference"
# Query rows per block. A fixed row count (not a byte budget) keeps the score-sized temporaries
# proportional to the key length, so a CP rank, which sees 1/cp of the keys per ring step, needs
# 1/cp of a single process's working memory.
BLOCK_ROWS = 128


def flash_attn_ge_2_1() -> bool:
    """Causal masks here are bottom-right aligned, the semantics flash-attn 2.1 introduced."""
    return True


def _cdt(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _heads(x: torch.Tensor, hk: int, cdt: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """(b, s, h, d) -> contiguous (b, hk, h // hk, s, d): query head i uses kv head i // (h // hk)."""
    b, s, h, d = x.shape
    y = x.reshape(b, s, hk, h // hk, d).permute(0, 2, 3, 1, 4).to(cdt, copy=True, memory_format=torch.contiguous_format)
    return y.mul_(scale) if scale != 1.0 else y


def _kv(x: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
    """(b, s, hk, d) -> contiguous (b, hk, s, d)."""
    return x.permute(0, 2, 1, 3).to(cdt, copy=True, memory_format=torch.contiguous_format)



def _block(x: torch.Tensor, i0: int, i1: int) -> torch.Tensor:
    """Rows [i0, i1) of (b, hk, g, s, d), flattened to (b, hk, g * rows, d) for one matmul per kv head."""
    b, hk, g, _, d = x.shape
    return x[:, :, :, i0:i1].reshape(b, hk, g * (i1 - i0), d)


def _key_range(i0: int, i1: int, offset: int, sk: int, causal: bool, left: int) -> tuple[int, int]:
    """Keys [lo, hi) some row of the block [i0, i1) sees: causal stops at the diagonal (bottom-right),
    a left window starts `left` keys before it, so a block reads O(rows + left) keys, not s_k."""
    hi = max(0, min(sk, i1 + offset)) if causal else sk
    lo = min(hi, max(0, i0 + offset - left)) if left >= 0 else 0
    return lo, hi


class _Workspace:
    """Flat buffers the size of a call's widest block (b, hk, g * BLOCK_ROWS, keys), allocated on first use;
    each block's scores (0), their gradient (1, backward) and softcap's tanh (2) are a prefix of one of them."""

    def __init__(self, b: int, hk: int, g: int, sq: int, sk: int, causal: bool, left: int, dtype: torch.dtype,
                 device: torch.device):
        widest = max((hi - lo for i0 in range(0, sq, BLOCK_ROWS)
                      for lo, hi in [_key_range(i0, min(sq, i0 + BLOCK_ROWS), sk - sq, sk, causal, left)]),
                     default=0)
        self.numel = b * hk * g * min(sq, BLOCK_ROWS) * widest
        self.dtype, self.device = dtype, device
        self.buffers: dict[int, torch.Tensor] = {}

    def block(self, i: int, *shape: int) -> torch.Tensor:
        if i not in self.buffers:
            self.buffers[i] = torch.empty(self.numel, dtype=self.dtype, device=self.device)
        return self.buffers[i][:math.prod(shape)].view(shape)


def _scores(qb, kh, g, i0, i1, lo, hi, offset, causal, left, cap, ws: _Workspace):
    """Scaled scores (b, hk, g, rows, hi - lo) against keys [lo, hi), in workspace buffer 0, softcapped
    when cap > 0; the bottom-right causal mask on the diagonal band, and the window's edge (keys before
    diagonal - left) when there is one. Returns (scores, tanh of the capped scores or None)."""
    b, hk, rows = qb.shape[:3]
    s = torch.matmul(qb, kh[:, :, lo:hi].transpose(-1, -2), out=ws.block(0, b, hk, rows, hi - lo))
    s = s.view(b, hk, g, i1 - i0, hi - lo)
    t = None
    if cap:  # tanh kept (buffer 2) for the backward's 1 - tanh^2
        t = ws.block(2, *s.shape).copy_(s).div_(cap).tanh_()
        s.copy_(t).mul_(cap)
    rows = torch.arange(i0, i1, device=s.device).unsqueeze(1) + offset
    cols = torch.arange(lo, hi, device=s.device).unsqueeze(0)
    if left >= 0:
        s.masked_fill_((cols > rows) | (cols < rows - left), float("-inf"))
    elif causal:
        c0 = max(lo, i0 + offset + 1)  # columns < c0 are visible to every row of the block
        if c0 < hi:
            s[..., c0 - lo:].masked_fill_(cols[:, c0 - lo:] > rows, float("-inf"))
    return s, t


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: int) -> None:
    if q.dim() != dims or k.dim() != dims or v.dim() != dims:
        raise ValueError(f"expected {dims}-D q/k/v, got {q.dim()}/{k.dim()}/{v.dim()}")
    if q.shape[-2] % k.shape[-2] != 0 or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"kv heads ({k.shape[-2]}) must divide query heads ({q.shape[-2]})")


def _dense_forward(q, k, v, scale: float, causal: bool, left: int = -1, cap: float = 0.0):
    """One batch of equal-length sequences; returns (out in q.dtype, lse fp32 (b, h, s_q))."""
    b, sq, h, _ = q.shape
    sk, hk, dv = k.shape[1], k.shape[2], v.shape[-1]
    g = h // hk
    cdt = _cdt(q.dtype)
    out = torch.zeros((b, sq, hk, g, dv), dtype=q.dtype, device=q.device)
    lse = torch.full((b, hk, g, sq), float("inf"), dtype=torch.float32, device=q.device)
    qh, kh, vh = _heads(q, hk, cdt, scale), _kv(k, cdt), _kv(v, cdt)
    offset = sk - sq
    step = BLOCK_ROWS
    ws = _Workspace(b, hk, g, sq, sk, causal, left, cdt, q.device)
    for i0 in range(0, sq, step):
        i1 = min(sq, i0 + step)
        lo, hi = _key_range(i0, i1, offset, sk, causal, left)
        if hi == lo:
            continue  # every row fully masked: out 0, lse +inf (flash-attn's convention)
        p, _ = _scores(_block(qh, i0, i1), kh, g, i0, i1, lo, hi, offset, causal, left, cap, ws)
        m = p.amax(dim=-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        p.sub_(m).exp_()
        denom = p.sum(dim=-1, keepdim=True)
        o = torch.matmul(p.view(b, hk, g * (i1 - i0), hi - lo), vh[:, :, lo:hi]).view(b, hk, g, i1 - i0, dv)
        o.div_(torch.where(denom > 0, denom, torch.ones_like(denom)))
        blk = torch.where(denom > 0, m + torch.log(denom), torch.full_like(denom, float("inf")))
        out[:, i0:i1].copy_(o.permute(0, 3, 1, 2, 4))
        lse[..., i0:i1] = blk.squeeze(-1)
    return out.view(b, sq, h, dv), lse.view(b, h, sq)


def _dense_backward(dout, q, k, v, out, lse, dq, dk, dv, scale: float, causal: bool, left: int = -1,
                    cap: float = 0.0):
    """Writes dq/dk/dv (overwriting) and returns delta = rowsum(dout * out), fp32 (b, h, s_q)."""
    b, sq, h, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    g = h // hk
    cdt = _cdt(q.dtype)
    qh, doh = _heads(q, hk, cdt, scale), _heads(dout, hk, cdt)
    kh, vh = _kv(k, cdt), _kv(v, cdt)
    delta = (doh * _heads(out, hk, cdt)).sum(dim=-1)
    lse_h = lse.reshape(b, hk, g, sq).to(cdt)
    dk_acc = torch.zeros((b, hk, sk, d), dtype=cdt, device=q.device)
    dv_acc = torch.zeros((b, hk, sk, v.shape[-1]), dtype=cdt, device=q.device)
    dq_v = dq.view(b, sq, hk, g, d) if dq.is_contiguous() else None
    offset = sk - sq
    step = BLOCK_ROWS
    ws = _Workspace(b, hk, g, sq, sk, causal, left, cdt, q.device)
    dk_bmm, dv_bmm = dk_acc.view(b * hk, sk, d), dv_acc.view(b * hk, sk, v.shape[-1])
    for i0 in range(0, sq, step):
        i1 = min(sq, i0 + step)
        rows = g * (i1 - i0)
        lo, hi = _key_range(i0, i1, offset, sk, causal, left)
        if hi == lo:
            dq[:, i0:i1].zero_()
            continue
        qb, dob = _block(qh, i0, i1), _block(doh, i0, i1)
        p, t = _scores(qb, kh, g, i0, i1, lo, hi, offset, causal, left, cap, ws)
        p.sub_(lse_h[..., i0:i1, None]).exp_()  # lse +inf (empty row) -> p = 0
        ds = torch.matmul(dob, vh[:, :, lo:hi].transpose(-1, -2), out=ws.block(1, b, hk, rows, hi - lo))
        ds = ds.view(b, hk, g, i1 - i0, hi - lo)
        ds.sub_(delta[..., i0:i1, None]).mul_(p)
        if t is not None:  # d(cap * tanh(x / cap)) / dx
            ds.mul_(t.square_().neg_().add_(1.0))
        p2, ds2 = p.view(b, hk, rows, hi - lo), ds.view(b, hk, rows, hi - lo)
        dq_blk = torch.matmul(ds2, kh[:, :, lo:hi]).mul_(scale).view(b, hk, g, i1 - i0, d).permute(0, 3, 1, 2, 4)
        if dq_v is not None:
            dq_v[:, i0:i1].copy_(dq_blk)
        else:
            dq[:, i0:i1].copy_(dq_blk.reshape(b, i1 - i0, h, d))
        # accumulated in place (no (keys, d) product per block); qb already carries the scale
        dk_bmm[:, lo:hi].baddbmm_(ds2.reshape(b * hk, rows, hi - lo).transpose(1, 2), qb.reshape(b * hk, rows, d))
        dv_bmm[:, lo:hi].baddbmm_(p2.reshape(b * hk, rows, hi - lo).transpose(1, 2), dob.reshape(b * hk, rows, -1))
    dk.copy_(dk_acc.permute(0, 2, 1, 3))
    dv.copy_(dv_acc.permute(0, 2, 1, 3))
    return delta.reshape(b, h, sq).float()


def _flash_attn_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int,
    window_size_right: int,
    softcap: float,
    alibi_slopes: Optional[torch.Tensor],
    return_softmax: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_shapes(q, k, v, 4)
    cap = effective_softcap(softcap)
    left = check_supported(dropout_p=dropout_p, softcap=cap, softcap_ok=True, alibi_slopes=alibi_slopes,
                           window_size_left=window_size_left, window_size_right=window_size_right,
                           causal=causal, seqlen_k=k.shape[1], return_softmax=return_softmax)
    with torch.no_grad():
        out, lse = _dense_forward(q, k, v, resolve_scale(softmax_scale, q.shape[-1]), bool(causal), left, cap)
    s_dmask = torch.empty((0,), dtype=q.dtype, device=q.device)
    rng_state = torch.zeros((2,), dtype=torch.int64, device=q.device)
    return out, lse, s_dmask, rng_state


def _flash_attn_varlen_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int = -1,
    window_size_right: int = -1,
    softcap: float = 0.0,
    alibi_slopes: Optional[torch.Tensor] = None,
    return_softmax: bool = False,
    block_table: Optional[torch.Tensor] = None,
    leftpad_k: Optional[torch.Tensor] = None,
    seqused_k: Optional[torch.Tensor] = None,
    zero_tensors: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_shapes(q, k, v, 3)
    _check_varlen_extras(block_table, leftpad_k, seqused_k)
    cap = effective_softcap(softcap)
    left = check_supported(dropout_p=dropout_p, softcap=cap, softcap_ok=True, alibi_slopes=alibi_slopes,
                           window_size_left=window_size_left, window_size_right=window_size_right,
                           causal=causal, seqlen_k=max_seqlen_k, return_softmax=return_softmax)
    scale = resolve_scale(softmax_scale, q.shape[-1])
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    out = torch.zeros((q.shape[0], q.shape[1], v.shape[-1]), dtype=q.dtype, device=q.device)
    lse = torch.zeros((q.shape[1], q.shape[0]), dtype=torch.float32, device=q.device)
    with torch.no_grad():
        for i in range(len(cq) - 1):
            if cq[i + 1] == cq[i]:
                continue
            o, lse_i = _dense_forward(q[cq[i]:cq[i + 1]].unsqueeze(0), k[ck[i]:ck[i + 1]].unsqueeze(0),
                                      v[ck[i]:ck[i + 1]].unsqueeze(0), scale, bool(causal), left, cap)
            out[cq[i]:cq[i + 1]] = o[0]
            lse[:, cq[i]:cq[i + 1]] = lse_i[0]
    s_dmask = torch.empty((0,), dtype=q.dtype, device=q.device)
    rng_state = torch.zeros((2,), dtype=torch.int64, device=q.device)
    return out, lse, s_dmask, rng_state


def _buffers(q, k, v, dq, dk, dv):
    return (torch.empty_like(q) if dq is None else dq, torch.empty_like(k) if dk is None else dk,
            torch.empty_like(v) if dv is None else dv)


def _flash_attn_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    softmax_lse: torch.Tensor,
    dq: Optional[torch.Tensor],
    dk: Optional[torch.Tensor],
    dv: Optional[torch.Tensor],
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int,
    window_size_right: int,
    softcap: float,
    alibi_slopes: Optional[torch.Tensor],
    deterministic: bool,
    rng_state: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    _check_shapes(q, k, v, 4)
    cap = effective_softcap(softcap)
    left = check_supported(dropout_p=dropout_p, softcap=cap, softcap_ok=True, alibi_slopes=alibi_slopes,
                           window_size_left=window_size_left, window_size_right=window_size_right,
                           causal=causal, seqlen_k=k.shape[1])
    dq, dk, dv = _buffers(q, k, v, dq, dk, dv)
    b, sq, h, _ = q.shape
    softmax_d = torch.zeros((b, h, round_multiple(sq, 128)), dtype=torch.float32, device=q.device)
    with torch.no_grad():
        delta = _dense_backward(dout, q, k, v, out, softmax_lse, dq, dk, dv,
                                resolve_scale(softmax_scale, q.shape[-1]), bool(causal), left, cap)
        softmax_d[..., :sq] = delta
    return softmax_d


def _flash_attn_varlen_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    softmax_lse: torch.Tensor,
    dq: Optional[torch.Tensor],
    dk: Optional[torch.Tensor],
    dv: Optional[torch.Tensor],
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int,
    window_size_right: int,
    softcap: float,
    alibi_slopes: Optional[torch.Tensor],
    deterministic: bool,
    rng_state: Optional[torch.Tensor] = None,
    zero_tensors: bool = False,
) -> torch.Tensor:
    _check_shapes(q, k, v, 3)
    cap = effective_softcap(softcap)
    left = check_supported(dropout_p=dropout_p, softcap=cap, softcap_ok=True, alibi_slopes=alibi_slopes,
                           window_size_left=window_size_left, window_size_right=window_size_right,
                           causal=causal, seqlen_k=max_seqlen_k)
    if softmax_lse.dim() != 2:
        raise ValueError("varlen softmax_lse must be (nheads, total_q) as in flash-attn 2.8, "
                         f"got {tuple(softmax_lse.shape)}")
    dq, dk, dv = _buffers(q, k, v, dq, dk, dv)
    scale = resolve_scale(softmax_scale, q.shape[-1])
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    n = len(cq) - 1
    delta_all = torch.zeros((q.shape[1], q.shape[0]), dtype=torch.float32, device=q.device)
    with torch.no_grad():
        dq.zero_()
        dk.zero_()
        dv.zero_()
        for i in range(n):
            if cq[i + 1] == cq[i]:
                continue
            qs, ks = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])
            delta = _dense_backward(dout[qs].unsqueeze(0), q[qs].unsqueeze(0), k[ks].unsqueeze(0),
                                    v[ks].unsqueeze(0), out[qs].unsqueeze(0), softmax_lse[:, qs].unsqueeze(0),
                                    dq[qs].unsqueeze(0), dk[ks].unsqueeze(0), dv[ks].unsqueeze(0),
                                    scale, bool(causal), left, cap)
            delta_all[:, qs] = delta[0]
    return varlen_softmax_d(delta_all, cu_seqlens_q)


def _check_varlen_extras(block_table, leftpad_k, seqused_k) -> None:
    if block_table is not None or leftpad_k is not None or seqused_k is not None:
        raise UnsupportedAttentionError("block_table / leftpad_k / seqused_k (KV cache) are not supported")
