"""Independent full-attention oracle for the provider tests: torch SDPA (math backend) with an
explicit bottom-right causal mask, GQA by repeating kv heads. Shared with gpu_check.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def _math_backend():
        return sdpa_kernel(SDPBackend.MATH)
except ImportError:  # torch < 2.3: the older context manager, same choice
    def _math_backend():
        return torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=True, enable_mem_efficient=False)


def bottom_right_mask(sq: int, sk: int, device=None, window_left: int = -1) -> torch.Tensor:
    """True where query i may attend key j: j <= i + (sk - sq), flash-attn >= 2.1 semantics; with a window,
    also j >= i + (sk - sq) - window_left."""
    cols, diag = torch.arange(sk, device=device)[None, :], torch.arange(sq, device=device)[:, None] + (sk - sq)
    mask = cols <= diag
    return mask & (cols >= diag - window_left) if window_left >= 0 else mask


def sdpa_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None = None,
              window_left: int = -1) -> torch.Tensor:
    """q (b, sq, h, d), k/v (b, sk, hk, d) -> (b, sq, h, d); differentiable. Rows with no visible key
    give 0 (flash-attn's convention) instead of SDPA's NaN."""
    h, hk = q.shape[2], k.shape[2]
    k2 = k.repeat_interleave(h // hk, dim=2)
    v2 = v.repeat_interleave(h // hk, dim=2)
    mask = bottom_right_mask(q.shape[1], k.shape[1], q.device, window_left) if causal else None
    live = None
    if mask is not None and not bool(mask.any(dim=1).all()):
        live = mask.any(dim=1)
        mask = mask | ~live[:, None]  # keep softmax finite on dead rows (no NaN grads), zeroed below
    with _math_backend():
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k2.transpose(1, 2), v2.transpose(1, 2),
                                           attn_mask=mask, scale=scale)
    o = o.transpose(1, 2)
    if live is not None:
        o = torch.where(live[None, :, None, None], o, torch.zeros_like(o))
    return o


def sdpa_math_varlen(q, k, v, cu_q, cu_k, causal: bool, scale: float | None = None,
                     window_left: int = -1) -> torch.Tensor:
    """Packed (total, h, d) version: one sdpa_math per sequence."""
    outs = []
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for i in range(len(cq) - 1):
        if cq[i + 1] == cq[i]:
            continue
        outs.append(sdpa_math(q[cq[i]:cq[i + 1]][None], k[ck[i]:ck[i + 1]][None], v[ck[i]:ck[i + 1]][None],
                              causal, scale, window_left)[0])
    return torch.cat(outs) if outs else q.new_zeros((0,) + tuple(q.shape[1:]))


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in fp32."""
    x, ref = x.float(), ref.float()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def eager_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, window_left: int = -1,
               softcap: float = 0.0, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention as transformers' eager functions write it (Gemma 2's softcap, gpt-oss's sinks): scores
    scaled, softcapped (cap * tanh(x / cap)), masked; the sink a last column of the softmax, dropped after it.
    q (b, sq, h, d), k/v (b, sk, hk, d*); differentiable in q, k, v and sinks."""
    h, hk = q.shape[2], k.shape[2]
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    kr, vr = k.repeat_interleave(h // hk, dim=2), v.repeat_interleave(h // hk, dim=2)
    qf, kf, vf = (t.transpose(1, 2) for t in (q, kr, vr))
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    mask = bottom_right_mask(q.shape[1], k.shape[1], q.device, window_left)
    scores = scores.masked_fill(~mask, float("-inf"))
    if sinks is not None:
        sink = sinks.reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs.nan_to_num(0.0), vf).transpose(1, 2)
