"""Argument checks shared by the providers.

flash-attn 2.8 accepts dropout, softcap, alibi and sliding windows; ring-flash-attn passes them
through, except softcap (see `softcap`). Our providers implement causal left windows and (the
reference provider) softcap; the rest they refuse loudly instead of ignoring it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import UnsupportedAttentionError

# The names ring-flash-attn 0.1.8 imports from flash_attn.flash_attn_interface.
FUNCTION_NAMES = (
    "_flash_attn_forward",
    "_flash_attn_backward",
    "_flash_attn_varlen_forward",
    "_flash_attn_varlen_backward",
)


def round_multiple(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def resolve_scale(softmax_scale: float | None, head_dim: int) -> float:
    return float(softmax_scale) if softmax_scale is not None else head_dim ** -0.5


def check_supported(
    *,
    dropout_p: Any,
    softcap: Any,
    alibi_slopes: Any,
    window_size_left: Any,
    window_size_right: Any,
    causal: bool,
    seqlen_k: int | None = None,
    return_softmax: Any = False,
    softcap_ok: bool = False,
) -> int:
    """Raise UnsupportedAttentionError for features the providers do not implement; return the
    left window (-1: unlimited).

    Window sizes are normalised as flash-attn's C++ does (>= seqlen_k means unlimited, causal
    forces right=0), so what remains is a causal sliding window (implemented) or a window to the
    right / a non-causal window (refused).
    """
    if dropout_p not in (None, 0, 0.0):
        raise UnsupportedAttentionError(
            f"attention dropout_p={dropout_p} is not supported by cpshim's kernel providers "
            "(ring-flash-attn cannot replay dropout RNG across ring steps); set attention_dropout=0"
        )
    if return_softmax:
        raise UnsupportedAttentionError("return_softmax is only supported with dropout_p > 0 (flash-attn 2.8)")
    if softcap not in (None, 0, 0.0) and not softcap_ok:
        raise UnsupportedAttentionError(
            f"attention softcap={softcap} is not supported by this kernel provider (aten's flash kernels have no "
            "softcap): ring mode computes softcap with cpshim's reference provider (CPU)")
    if alibi_slopes is not None:
        raise UnsupportedAttentionError("alibi_slopes are not supported by cpshim's kernel providers")
    left = -1 if window_size_left is None else int(window_size_left)
    right = -1 if window_size_right is None else int(window_size_right)
    if seqlen_k is not None:
        if left >= seqlen_k:
            left = -1
        if right >= seqlen_k:
            right = -1
    if causal and right >= 0:
        right = -1
    if right != -1 or (left != -1 and not causal):
        raise UnsupportedAttentionError(
            f"window_size=({window_size_left}, {window_size_right}) with causal={causal} is not supported by "
            "cpshim's kernel providers: only a causal window to the left is"
        )
    return left


def check_finite_scale(scale: float) -> None:
    if not math.isfinite(scale):
        raise UnsupportedAttentionError(f"softmax_scale must be finite, got {scale}")


def varlen_softmax_d(delta: torch.Tensor, cu_seqlens_q: torch.Tensor) -> torch.Tensor:
    """Place per-token delta (h, total_q) in flash-attn 2.8's varlen softmax_d layout.

    That layout is (h, total_q + 128 * batch) with sequence i starting at cu_seqlens_q[i] + 128 * i
    (flash_bwd_preprocess_kernel.h). Built with bucketize, so no host sync.
    """
    h, total = delta.shape
    n = cu_seqlens_q.numel() - 1
    out = torch.zeros((h, total + 128 * n), dtype=torch.float32, device=delta.device)
    cu = cu_seqlens_q.to(device=delta.device, dtype=torch.long)
    tok = torch.arange(total, device=delta.device)
    seq = torch.bucketize(tok, cu[1:], right=True)
    inside = tok < cu[-1]
    idx = (tok + 128 * seq)[inside]
    out[:, idx] = delta[:, inside].float()
    return out


def _token_positions(cu_seqlens_q: torch.Tensor, total: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence, position within it) of every packed token (bucketize: no host sync)."""
    cu = cu_seqlens_q.to(device=device, dtype=torch.long)
    tok = torch.arange(total, device=device)
    seq = torch.bucketize(tok, cu[1:], right=True)
    return seq, tok - cu[seq]


def pack_lse(lse: torch.Tensor, cu_seqlens_q: torch.Tensor, total: int) -> torch.Tensor:
    """Varlen lse from the padded layout (batch, h, max_seqlen_q) of torch <= 2.6's vendored kernel to
    flash-attn 2.8's packed (h, total_q), which ring-flash-attn reads."""
    seq, pos = _token_positions(cu_seqlens_q, total, lse.device)
    return lse[seq, :, pos].transpose(0, 1).contiguous()


def pad_lse(lse: torch.Tensor, cu_seqlens_q: torch.Tensor, max_seqlen_q: int) -> torch.Tensor:
    """The inverse of :func:`pack_lse`, for that kernel's backward (positions past a sequence: 0)."""
    h, total = lse.shape
    out = torch.zeros((cu_seqlens_q.numel() - 1, h, max_seqlen_q), dtype=lse.dtype, device=lse.device)
    seq, pos = _token_positions(cu_seqlens_q, total, lse.device)
    out[seq, :, pos] = lse.transpose(0, 1)
    return out
