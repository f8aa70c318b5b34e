"""flash-attn 2.8's private kernels on top of PyTorch's own CUDA flash attention (no flash-attn build).

Wraps `torch.ops.aten._flash_attention_forward/_backward` (dense when cum_seq_q is None, varlen with
int32 cum_seq tensors; lse (b, h, s_q) dense, (h, total_q) varlen) behind the exact signatures ring-
flash-attn introspects. The ops' arguments are bound by name from the schema this torch registers
(`aten_calls`: they changed in 2.4, 2.7 and 2.12). torch <= 2.6's kernel returns the varlen lse
padded (batch, h, max_seqlen_q): it is packed for ring-flash-attn and padded back for the backward.
Importable on CPU; only calling it needs CUDA. The aten kernel is PyTorch's vendored flash-attn 2,
so causal masks are bottom-right aligned for s_q != s_k (SDPA refuses that case, the raw op does
not). `deterministic` is ignored: the aten op reads `torch.use_deterministic_algorithms` instead.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import aten_calls
from ..errors import ProviderError
from ._common import check_supported, pack_lse, pad_lse, resolve_scale, round_multiple, varlen_softmax_d
from .softcap import effective_softcap

NAME = "torch_cuda"
# None until the first GQA call; then whether aten took fewer kv heads than query heads natively.
_GQA_NATIVE: Optional[bool] = None
# None until the first varlen forward; then whether this torch's kernel returns the varlen lse padded,
# (batch, h, max_seqlen_q) (torch <= 2.6's vendored flash-attn), instead of packed (h, total_q).
_LSE_PADDED: Optional[bool] = None


def flash_attn_ge_2_1() -> bool:
    """PyTorch vendors flash-attn >= 2.1 semantics (bottom-right causal)."""
    return True


def available() -> bool:
    return torch.cuda.is_available() and hasattr(torch.ops.aten, "_flash_attention_forward")


def _contig(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _expand_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Repeat kv heads so that query head i reads kv head i // group, as flash-attn does."""
    return x.repeat_interleave(heads // x.shape[-2], dim=-2)


def _reduce_kv(grad: torch.Tensor, kv_heads: int) -> torch.Tensor:
    if grad.shape[-2] == kv_heads:
        return grad
    shape = grad.shape[:-2] + (kv_heads, grad.shape[-2] // kv_heads, grad.shape[-1])
    return grad.reshape(shape).sum(dim=-2)


def _check_device(q: torch.Tensor) -> None:
    if q.device.type != "cuda":
        raise ProviderError(f"the torch_cuda provider needs CUDA tensors, got {q.device}")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ProviderError(f"PyTorch's flash kernels take fp16/bf16 only, got {q.dtype}")


def _forward(q, k, v, cum_q, cum_k, max_q, max_k, causal, scale, left=-1):
    global _GQA_NATIVE
    h, hk = q.shape[-2], k.shape[-2]
    if h != hk and _GQA_NATIVE is False:
        k, v = _expand_kv(k, h), _expand_kv(v, h)
    schema = aten_calls.live(aten_calls.FORWARD)
    try:
        res = aten_calls.call(torch.ops.aten._flash_attention_forward, schema,
                              aten_calls.forward_values(q, k, v, cum_q, cum_k, max_q, max_k, causal, scale, left))
    except RuntimeError as e:  # only a refusal of fewer kv heads switches to expanding them
        if h == hk or _GQA_NATIVE is False or "head" not in str(e).lower():
            raise
        _GQA_NATIVE = False
        return _forward(q, k, v, cum_q, cum_k, max_q, max_k, causal, scale, left)
    if h != hk:
        _GQA_NATIVE = True if _GQA_NATIVE is None else _GQA_NATIVE
    named = aten_calls.named_outputs(schema, res)
    rng = named.get("rng_state")  # 2.7+: (seed, offset) as 2 x uint64; before it: a philox seed tensor
    rng_state = rng.view(torch.int64) if rng is not None and rng.numel() == 2 and rng.element_size() == 8 else \
        torch.zeros((2,), dtype=torch.int64, device=q.device)
    lse = named["softmax_logsumexp"]
    if cum_q is not None:
        global _LSE_PADDED
        _LSE_PADDED = lse.dim() == 3
        if _LSE_PADDED:
            lse = pack_lse(lse, cum_q, q.shape[0])
    return named["output"], lse, torch.empty((0,), dtype=q.dtype, device=q.device), rng_state


def _rng_placeholders(schema, device: torch.device) -> tuple:
    """The backward's RNG pair at dropout 0 (never read): shaped as each torch's forward returns them."""
    if aten_calls.rng_names(schema) == ("rng_state", "unused"):
        return torch.zeros((2,), dtype=torch.uint64, device=device), torch.empty((0,), device=device)
    return torch.zeros((), dtype=torch.int64, device=device), torch.zeros((), dtype=torch.int64, device=device)


def _backward(dout, q, k, v, out, lse, dq, dk, dv, cum_q, cum_k, max_q, max_k, causal, scale, left=-1):
    h, hk = q.shape[-2], k.shape[-2]
    kk, vv = (k, v) if (h == hk or _GQA_NATIVE is not False) else (_expand_kv(k, h), _expand_kv(v, h))
    schema = aten_calls.live(aten_calls.BACKWARD)
    if cum_q is not None and _LSE_PADDED is None:
        raise ProviderError("varlen backward before any varlen forward in this process: the lse layout of this "
                            "torch's kernel is not known yet")
    if cum_q is not None and _LSE_PADDED:
        lse = pad_lse(lse, cum_q, max_q)
    values = aten_calls.backward_values(schema, _contig(dout), _contig(q), _contig(kk), _contig(vv), _contig(out),
                                        lse.contiguous(), cum_q, cum_k, max_q, max_k, causal, scale,
                                        _rng_placeholders(schema, q.device), left)
    gq, gk, gv = aten_calls.call(torch.ops.aten._flash_attention_backward, schema, values)
    dq = torch.empty_like(q) if dq is None else dq
    dk = torch.empty_like(k) if dk is None else dk
    dv = torch.empty_like(v) if dv is None else dv
    dq.copy_(gq)
    dk.copy_(_reduce_kv(gk, hk))
    dv.copy_(_reduce_kv(gv, hk))
    return dq


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
    left = check_supported(dropout_p=dropout_p, softcap=effective_softcap(softcap), alibi_slopes=alibi_slopes,
                           window_size_left=window_size_left, window_size_right=window_size_right,
                           causal=causal, seqlen_k=k.shape[1], return_softmax=return_softmax)
    _check_device(q)
    q, k, v = _contig(q), _contig(k), _contig(v)
    with torch.no_grad():
        return _forward(q, k, v, None, None, q.shape[1], k.shape[1], bool(causal),
                        resolve_scale(softmax_scale, q.shape[-1]), left)


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
    if block_table is not None or leftpad_k is not None or seqused_k is not None:
        raise ProviderError("block_table / leftpad_k / seqused_k (KV cache) are not supported")
    left = check_supported(dropout_p=dropout_p, softcap=effective_softcap(softcap), alibi_slopes=alibi_slopes,
                           window_size_left=window_size_left, window_size_right=window_size_right,
                           causal=causal, seqlen_k=max_seqlen_k, return_softmax=return_softmax)
    _check_device(q)
    q, k, v = _contig(q), _contig(k), _contig(v)
    cq, ck = _cu(cu_seqlens_q, q.device), _cu(cu_seqlens_k, q.device)
    with torch.no_grad():
        return _forward(q, k, v, cq, ck, int(max_seqlen_q), int(max_seqlen_k), bool(causal),
                        resolve_scale(softmax_scale, q.shape[-1]), left)


def _cu(cu: torch.Tensor, device: torch.device) -> torch.Tensor:
    return cu.to(device=device, dtype=torch.int32).contiguous()


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
    left = check_supported(dropout_p=dropout_p, softcap=effective_softcap(softcap), alibi_slopes=alibi_slopes,
                           window_size_left=window_size_left, window_size_right=window_size_right,
                           causal=causal, seqlen_k=k.shape[1])
    _check_device(q)
    with torch.no_grad():
        _backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, None, None, q.shape[1], k.shape[1],
                  bool(causal), resolve_scale(softmax_scale, q.shape[-1]), left)
        b, sq, h, _ = q.shape
        softmax_d = torch.zeros((b, h, round_multiple(sq, 128)), dtype=torch.float32, device=q.device)
        # rowsum(dout * out): products in the input dtype, sum in fp32 (cheap; ring ignores it).
        softmax_d[..., :sq] = (dout * out).sum(-1, dtype=torch.float32).transpose(1, 2)
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
    left = check_supported(dropout_p=dropout_p, softcap=effective_softcap(softcap), alibi_slopes=alibi_slopes,
                           window_size_left=window_size_left, window_size_right=window_size_right,
                           causal=causal, seqlen_k=max_seqlen_k)
    _check_device(q)
    if softmax_lse.dim() != 2:
        raise ProviderError(f"varlen softmax_lse must be (nheads, total_q), got {tuple(softmax_lse.shape)}")
    cq, ck = _cu(cu_seqlens_q, q.device), _cu(cu_seqlens_k, q.device)
    with torch.no_grad():
        _backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, cq, ck, int(max_seqlen_q),
                  int(max_seqlen_k), bool(causal), resolve_scale(softmax_scale, q.shape[-1]), left)
        delta = (dout * out).sum(-1, dtype=torch.float32).transpose(0, 1)
        softmax_d = varlen_softmax_d(delta, cq)
    return softmax_d
