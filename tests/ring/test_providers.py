"""Kernel providers: flash-attn 2.8 signatures, returns, and numerics against full attention.

Oracle: torch SDPA (math backend, fp32) with an explicit bottom-right causal mask. fp32 tolerance:
max |err| <= 2e-5 * max(1, max|ref|) -- a few hundred fp32 roundings (u = 6e-8) in reductions of
<= 64 terms, far below any real bug (a wrong mask or a missed GQA group gives errors ~1e-1).
"""

from __future__ import annotations

import importlib.util
import inspect
import pathlib
import traceback

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from cpshim.ring.errors import ProviderError, UnsupportedAttentionError
from cpshim.ring.providers import (
    FUNCTION_NAMES, REFERENCE, SHIM_MARKER, get_provider, identify, qualified_name, real_flash_attn_provider,
    reference_provider, select_provider,
)
from cpshim.ring.providers import cuda as cuda_mod
from cpshim.ring.providers import reference as ref_mod
from cpshim.ring.providers.autograd import attention, attention_varlen

from ._attn_ref import eager_math, sdpa_math, sdpa_math_varlen

P = reference_provider()
ND = inspect.Parameter.empty
# flash_attn/flash_attn_interface.py at v2.8.3 (identical in v2.8.0-v2.8.3.post1): (name, default).
_BWD_COMMON = [("dropout_p", ND), ("softmax_scale", ND), ("causal", ND), ("window_size_left", ND),
               ("window_size_right", ND), ("softcap", ND), ("alibi_slopes", ND), ("deterministic", ND),
               ("rng_state", None)]
FA_2_8_3 = {
    "_flash_attn_forward": [("q", ND), ("k", ND), ("v", ND), ("dropout_p", ND), ("softmax_scale", ND),
                            ("causal", ND), ("window_size_left", ND), ("window_size_right", ND),
                            ("softcap", ND), ("alibi_slopes", ND), ("return_softmax", ND)],
    "_flash_attn_varlen_forward": [("q", ND), ("k", ND), ("v", ND), ("cu_seqlens_q", ND), ("cu_seqlens_k", ND),
                                   ("max_seqlen_q", ND), ("max_seqlen_k", ND), ("dropout_p", ND),
                                   ("softmax_scale", ND), ("causal", ND), ("window_size_left", -1),
                                   ("window_size_right", -1), ("softcap", 0.0), ("alibi_slopes", None),
                                   ("return_softmax", False), ("block_table", None), ("leftpad_k", None),
                                   ("seqused_k", None), ("zero_tensors", False)],
    "_flash_attn_backward": [("dout", ND), ("q", ND), ("k", ND), ("v", ND), ("out", ND), ("softmax_lse", ND),
                             ("dq", ND), ("dk", ND), ("dv", ND)] + _BWD_COMMON,
    "_flash_attn_varlen_backward": [("dout", ND), ("q", ND), ("k", ND), ("v", ND), ("out", ND),
                                    ("softmax_lse", ND), ("dq", ND), ("dk", ND), ("dv", ND),
                                    ("cu_seqlens_q", ND), ("cu_seqlens_k", ND), ("max_seqlen_q", ND),
                                    ("max_seqlen_k", ND)] + _BWD_COMMON + [("zero_tensors", False)],
}


def _ring_get_default_args():
    """ring-flash-attn's own get_default_args, loaded from its utils.py without importing the package."""
    spec = importlib.util.find_spec("ring_flash_attn")
    if spec is None:
        pytest.skip("ring-flash-attn not installed")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "utils.py"
    mspec = importlib.util.spec_from_file_location("_cpshim_probe_ring_utils", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod.get_default_args


@pytest.mark.parametrize("module", [ref_mod, cuda_mod], ids=["reference", "torch_cuda"])
@pytest.mark.parametrize("fn_name", FUNCTION_NAMES)
def test_signatures_match_flash_attn_2_8(module, fn_name):
    params = inspect.signature(getattr(module, fn_name)).parameters
    got = [(p.name, p.default) for p in params.values()]
    assert got == FA_2_8_3[fn_name]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params.values())
    assert inspect.isfunction(getattr(module, fn_name))  # ring's get_default_args takes the plain-function path


def _ring_style_params(get_default_args, fn, **updates):
    """Build kwargs exactly as ring-flash-attn 0.1.8 does before calling a kernel."""
    params = get_default_args(fn).copy()
    window = updates.pop("window_size", (-1, -1))
    params.update(updates)
    if "window_size" in params:
        params["window_size"] = window
    else:
        params.update(window_size_left=window[0], window_size_right=window[1])
    return params


def test_ring_call_convention_on_reference():
    """Call the reference the way ring-flash-attn does (get_default_args + update) and check returns."""
    gda = _ring_get_default_args()
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 16, 4, 8), torch.randn(2, 16, 2, 8), torch.randn(2, 16, 2, 8)
    outs = P.forward(**_ring_style_params(gda, P.forward, q=q, k=k, v=v, dropout_p=0, softmax_scale=8 ** -0.5,
                                          causal=True, alibi_slopes=None, return_softmax=False))
    assert len(outs) == 4
    out, lse, s_dmask, rng = outs
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (2, 4, 16) and lse.dtype == torch.float32
    assert s_dmask.numel() == 0 and rng.shape == (2,) and rng.dtype == torch.int64
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dout = torch.randn_like(out)
    sd = P.backward(**_ring_style_params(gda, P.backward, dout=dout, q=q, k=k, v=v, out=out, softmax_lse=lse,
                                         dq=dq, dk=dk, dv=dv, dropout_p=0, softmax_scale=8 ** -0.5, causal=True,
                                         alibi_slopes=None, deterministic=False))
    assert sd.shape == (2, 4, 128) and sd.dtype == torch.float32
    torch.testing.assert_close(sd[..., :16], (dout * out).sum(-1).transpose(1, 2), rtol=0, atol=1e-5)
    assert bool((sd[..., 16:] == 0).all())


CASES = [  # b, sq, sk, h, hk, d, causal
    (2, 37, 37, 4, 4, 16, True),
    (2, 37, 37, 6, 2, 16, True),    # GQA
    (1, 20, 53, 4, 1, 8, True),     # MQA, sq < sk: bottom-right alignment
    (2, 53, 20, 4, 2, 8, True),     # sq > sk: first 33 rows see no key (out 0, lse +inf)
    (2, 33, 47, 6, 3, 16, False),
]


def _tol(ref: torch.Tensor) -> float:
    return 2e-5 * max(1.0, float(ref.detach().abs().max()))


@pytest.mark.parametrize("b,sq,sk,h,hk,d,causal", CASES)
def test_reference_matches_sdpa_math_fp32(b, sq, sk, h, hk, d, causal, monkeypatch):
    monkeypatch.setattr(ref_mod, "BLOCK_ROWS", 16)  # force many query blocks
    torch.manual_seed(1)
    q = torch.randn(b, sq, h, d, requires_grad=True)
    k = torch.randn(b, sk, hk, d, requires_grad=True)
    v = torch.randn(b, sk, hk, d, requires_grad=True)
    out = attention(q, k, v, P, causal=causal)
    ref = sdpa_math(q, k, v, causal)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for got, want in zip((out, *grads), (ref, *ref_grads)):
        assert (got - want).abs().max().item() <= _tol(want)
    _, lse, _, _ = P.forward(q=q.detach(), k=k.detach(), v=v.detach(), dropout_p=0.0, softmax_scale=None,
                             causal=causal, window_size_left=-1, window_size_right=-1, softcap=0.0,
                             alibi_slopes=None, return_softmax=False)
    s = torch.einsum("bqhd,bkhd->bhqk", q.detach(), k.detach().repeat_interleave(h // hk, 2)) * d ** -0.5
    if causal:
        s = s.masked_fill(~(torch.arange(sk)[None, :] <= torch.arange(sq)[:, None] + sk - sq), float("-inf"))
    want = torch.logsumexp(s, dim=-1)
    want = torch.where(torch.isinf(want), torch.full_like(want, float("inf")), want)  # empty row: +inf
    assert torch.equal(torch.isinf(lse), torch.isinf(want))
    assert (lse[torch.isfinite(lse)] - want[torch.isfinite(want)]).abs().max() <= 1e-5


def test_reference_varlen_matches_sdpa_math_fp32(monkeypatch):
    monkeypatch.setattr(ref_mod, "BLOCK_ROWS", 16)
    torch.manual_seed(2)
    lens_q, lens_k = [5, 0, 17, 9, 30], [8, 3, 17, 20, 30]
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
    h, hk, d = 6, 2, 16
    q = torch.randn(int(cu_q[-1]), h, d, requires_grad=True)
    k = torch.randn(int(cu_k[-1]), hk, d, requires_grad=True)
    v = torch.randn(int(cu_k[-1]), hk, d, requires_grad=True)
    for causal in (True, False):
        out = attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), P, causal=causal)
        ref = sdpa_math_varlen(q, k, v, cu_q, cu_k, causal)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), g)
        ref_grads = torch.autograd.grad(ref, (q, k, v), g)
        for got, want in zip((out, *grads), (ref, *ref_grads)):
            assert (got - want).abs().max().item() <= _tol(want)
    out, lse, _, _ = P.varlen_forward(q=q.detach(), k=k.detach(), v=v.detach(), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                      max_seqlen_q=30, max_seqlen_k=30, dropout_p=0.0, softmax_scale=None, causal=True)
    assert lse.shape == (h, int(cu_q[-1])) and lse.dtype == torch.float32
    dout = torch.randn_like(out)
    bufs = [torch.empty_like(t) for t in (q, k, v)]
    sd = P.varlen_backward(dout=dout, q=q.detach(), k=k.detach(), v=v.detach(), out=out, softmax_lse=lse, dq=bufs[0],
                           dk=bufs[1], dv=bufs[2], cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=30,
                           max_seqlen_k=30, dropout_p=0.0, softmax_scale=None, causal=True, window_size_left=-1,
                           window_size_right=-1, softcap=0.0, alibi_slopes=None, deterministic=False)
    assert sd.shape == (h, int(cu_q[-1]) + 128 * len(lens_q))
    delta = (dout * out).sum(-1).T
    for i in range(len(lens_q)):  # sequence i starts at cu_q[i] + 128 * i (flash-attn 2.8 layout)
        s0 = int(cu_q[i]) + 128 * i
        torch.testing.assert_close(sd[:, s0:s0 + lens_q[i]], delta[:, int(cu_q[i]):int(cu_q[i + 1])], rtol=0, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 2), sq=st.integers(1, 40), extra=st.integers(0, 30), hk=st.sampled_from([1, 2]),
       g=st.sampled_from([1, 3]), window=st.integers(0, 45), block=st.sampled_from([4, 16, 128]))
def test_reference_sliding_window_matches_sdpa_math_fp32(b, sq, extra, hk, g, window, block):
    """A causal window to the left (bottom-right aligned, as flash-attn's window_size=(left, 0)): windows shorter
    and longer than the keys, blocks that split the window."""
    ref_mod.BLOCK_ROWS, saved = block, ref_mod.BLOCK_ROWS
    try:
        torch.manual_seed(sq * 131 + extra)
        sk, d = sq + extra, 8
        q = torch.randn(b, sq, hk * g, d, requires_grad=True)
        k = torch.randn(b, sk, hk, d, requires_grad=True)
        v = torch.randn(b, sk, hk, d, requires_grad=True)
        out = attention(q, k, v, P, causal=True, window_left=window)
        ref = sdpa_math(q, k, v, True, window_left=window)
        gout = torch.randn_like(out)
        for got, want in zip((out, *torch.autograd.grad(out, (q, k, v), gout)),
                             (ref, *torch.autograd.grad(ref, (q, k, v), gout))):
            assert (got - want).abs().max().item() <= _tol(want)
    finally:
        ref_mod.BLOCK_ROWS = saved


@settings(max_examples=25, deadline=None)
@given(docs=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 10)), min_size=1, max_size=4),
       window=st.integers(0, 14))
def test_reference_varlen_sliding_window_matches_sdpa_math(docs, window):
    lens_q = [q for q, _ in docs]
    lens_k = [q + e for q, e in docs]
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
    torch.manual_seed(len(docs) * 7 + window)
    q = torch.randn(int(cu_q[-1]), 4, 8, requires_grad=True)
    k = torch.randn(int(cu_k[-1]), 2, 8, requires_grad=True)
    v = torch.randn(int(cu_k[-1]), 2, 8, requires_grad=True)
    out = attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), P, causal=True, window_left=window)
    ref = sdpa_math_varlen(q, k, v, cu_q, cu_k, True, window_left=window)
    if out.numel() == 0:
        return
    gout = torch.randn_like(out)
    for got, want in zip((out, *torch.autograd.grad(out, (q, k, v), gout, allow_unused=True)),
                         (ref, *torch.autograd.grad(ref, (q, k, v), gout, allow_unused=True))):
        want = torch.zeros_like(got) if want is None else want
        assert (got - want).abs().max().item() <= _tol(want)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 2), sq=st.integers(1, 40), extra=st.integers(0, 20), g=st.sampled_from([1, 2]),
       window=st.integers(-1, 30), cap=st.sampled_from([0.0, 1.0, 5.0, 50.0]), sink=st.sampled_from([None, 0.0, 3.0]),
       block=st.sampled_from([4, 16, 128]))
def test_reference_softcap_and_sinks_match_eager_math_fp32(b, sq, extra, g, window, cap, sink, block):
    """Softcap in the kernels (flash-attn's: cap * tanh(scores / cap) before the masks) and sinks merged into the
    output and lse (`cpshim.ring.sinks`), against the eager formula: outputs and the gradients of q, k, v and the
    sinks. Scores are scaled up so that small caps bite."""
    ref_mod.BLOCK_ROWS, saved = block, ref_mod.BLOCK_ROWS
    try:
        torch.manual_seed(sq * 17 + extra * 5 + window)
        sk, h, d = sq + extra, 2 * g, 8
        q = (3 * torch.randn(b, sq, h, d)).requires_grad_()
        k = torch.randn(b, sk, 2, d, requires_grad=True)
        v = torch.randn(b, sk, 2, 4, requires_grad=True)
        sinks = None if sink is None else (sink + torch.randn(h)).requires_grad_()
        out = attention(q, k, v, P, window_left=window, softcap=cap, sinks=sinks)
        ref = eager_math(q, k, v, window_left=window, softcap=cap, sinks=sinks)
        leaves = (q, k, v) + ((sinks,) if sinks is not None else ())
        gout = torch.randn_like(out)
        for got, want in zip((out, *torch.autograd.grad(out, leaves, gout)),
                             (ref, *torch.autograd.grad(ref, leaves, gout))):
            assert (got - want).abs().max().item() <= _tol(want)
    finally:
        ref_mod.BLOCK_ROWS = saved


@settings(max_examples=20, deadline=None)
@given(docs=st.lists(st.integers(1, 12), min_size=1, max_size=4), cap=st.sampled_from([0.0, 2.0]),
       window=st.integers(-1, 6))
def test_reference_varlen_softcap_and_sinks_match_eager_math(docs, cap, window):
    cu = torch.tensor([0] + torch.tensor(docs).cumsum(0).tolist(), dtype=torch.int32)
    torch.manual_seed(len(docs) * 11 + window)
    q = (3 * torch.randn(int(cu[-1]), 4, 8)).requires_grad_()
    k = torch.randn(int(cu[-1]), 2, 8, requires_grad=True)
    v = torch.randn(int(cu[-1]), 2, 8, requires_grad=True)
    sinks = torch.randn(4).requires_grad_()
    out = attention_varlen(q, k, v, cu, cu, max(docs), max(docs), P, window_left=window, softcap=cap, sinks=sinks)
    c = cu.tolist()
    ref = torch.cat([eager_math(q[a:e][None], k[a:e][None], v[a:e][None], window_left=window, softcap=cap,
                                sinks=sinks)[0] for a, e in zip(c, c[1:])])
    gout = torch.randn_like(out)
    for got, want in zip((out, *torch.autograd.grad(out, (q, k, v, sinks), gout)),
                         (ref, *torch.autograd.grad(ref, (q, k, v, sinks), gout))):
        assert (got - want).abs().max().item() <= _tol(want)


def test_layer_softcap_reaches_the_kernels_only_inside_its_scope():
    """ring-flash-attn passes softcap=0.0: the layer's softcap comes from `layer_softcap`, and only while it is held."""
    from cpshim.ring.providers.softcap import layer_softcap

    torch.manual_seed(0)
    q = 3 * torch.randn(1, 12, 2, 8)
    base = dict(q=q, k=q, v=q, dropout_p=0.0, softmax_scale=None, causal=True, window_size_left=-1,
                window_size_right=-1, softcap=0.0, alibi_slopes=None, return_softmax=False)
    with layer_softcap(2.0):
        capped = P.forward(**base)[0]
    plain = P.forward(**base)[0]
    torch.testing.assert_close(capped, eager_math(q, q, q, softcap=2.0), rtol=0, atol=1e-5)
    torch.testing.assert_close(plain, eager_math(q, q, q), rtol=0, atol=1e-5)
    assert (capped - plain).abs().max() > 1e-2
    with layer_softcap(2.0), pytest.raises(UnsupportedAttentionError, match="softcap"):
        cuda_mod._flash_attn_forward(**base)


def test_reference_bf16_writes_input_dtype_and_stays_close():
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 64, 4, 32, dtype=torch.bfloat16) for _ in range(3))
    out = attention(q, k, v, P, causal=True)
    assert out.dtype == torch.bfloat16
    ref = sdpa_math(q.float(), k.float(), v.float(), True)
    assert float((out.float() - ref).norm() / ref.norm()) < 2 ** -7  # a single bf16 rounding is 2^-9


def test_backward_writes_into_strided_views_only():
    """ring-flash-attn passes views such as dq_buffer[:, :n]; results must land there and nowhere else."""
    torch.manual_seed(4)
    q, k, v = torch.randn(2, 8, 2, 8), torch.randn(2, 8, 2, 8), torch.randn(2, 8, 2, 8)
    out, lse, _, _ = P.forward(q=q, k=k, v=v, dropout_p=0.0, softmax_scale=None, causal=True, window_size_left=-1,
                               window_size_right=-1, softcap=0.0, alibi_slopes=None, return_softmax=False)
    dout = torch.randn_like(out)
    big = [torch.full((2, 16, 2, 8), 7.0) for _ in range(3)]
    views = [b[:, :8] for b in big]
    P.backward(dout=dout, q=q, k=k, v=v, out=out, softmax_lse=lse, dq=views[0], dk=views[1], dv=views[2],
               dropout_p=0.0, softmax_scale=None, causal=True, window_size_left=-1, window_size_right=-1,
               softcap=0.0, alibi_slopes=None, deterministic=False)
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    want = torch.autograd.grad(sdpa_math(qq, kk, vv, True), (qq, kk, vv), dout)
    for b, w in zip(big, want):
        assert (b[:, :8] - w).abs().max() <= 1e-5
        assert bool((b[:, 8:] == 7.0).all())


class _NewStorages(TorchDispatchMode):
    """Bytes of every storage an op returns that none of its inputs owns: the allocations made under it."""

    def __init__(self) -> None:
        super().__init__()
        self.nbytes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        self.nbytes += [t.untyped_storage().nbytes() for t in tree_leaves(out)
                        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in given]
        return out


@settings(max_examples=30, deadline=None)
@given(sq=st.integers(33, 80), extra=st.integers(0, 12), hk=st.sampled_from([1, 2]), g=st.sampled_from([1, 2]),
       causal=st.booleans(), window=st.sampled_from([-1, 24]), cap=st.sampled_from([0.0, 2.0]))
def test_reference_allocates_score_blocks_once_per_call(sq, extra, hk, g, causal, window, cap):
    """The score-sized blocks (rows x keys) of a call live in buffers allocated once (forward: the scores;
    backward: the scores and their gradient; with a softcap, its tanh too), not once per row block: causal
    blocks widen block by block, and a fresh allocation each, a little larger than the last, fragments a CPU
    heap. Counted: allocations of at least half the widest block, with rows of 16 and head dim 1 so that no
    per-call tensor (inputs' fp32 copies, lse, softmax_d, the key gradients' accumulators, index ranges, masks)
    reaches that size. One allocation per row block would give at least two here (3 to 5 row blocks, half or
    more of them that wide)."""
    rows = 16
    ref_mod.BLOCK_ROWS, saved = rows, ref_mod.BLOCK_ROWS
    try:
        sk, left = sq + extra, window if causal else -1
        q, k, v = torch.randn(1, sq, hk * g, 1), torch.randn(1, sk, hk, 1), torch.randn(1, sk, hk, 1)
        widest = max(hi - lo for i0 in range(0, sq, rows)
                     for lo, hi in [ref_mod._key_range(i0, min(sq, i0 + rows), sk - sq, sk, causal, left)])
        score_sized = hk * g * rows * widest * 4 // 2  # bytes: half the widest fp32 block
        common = dict(dropout_p=0.0, softmax_scale=None, causal=causal, window_size_left=left,
                      window_size_right=0 if left >= 0 else -1, softcap=cap, alibi_slopes=None)
        with _NewStorages() as fwd:
            out, lse, _, _ = P.forward(q=q, k=k, v=v, return_softmax=False, **common)
        dout, dq, dk, dv = torch.randn_like(out), torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        with _NewStorages() as bwd:
            P.backward(dout=dout, q=q, k=k, v=v, out=out, softmax_lse=lse, dq=dq, dk=dk, dv=dv,
                       deterministic=False, **common)
        assert sum(n >= score_sized for n in fwd.nbytes) == 1 + bool(cap), (score_sized, sorted(fwd.nbytes))
        assert sum(n >= score_sized for n in bwd.nbytes) == 2 + bool(cap), (score_sized, sorted(bwd.nbytes))
    finally:
        ref_mod.BLOCK_ROWS = saved


@pytest.mark.parametrize("kwargs", [
    dict(dropout_p=0.1), dict(alibi_slopes=torch.ones(4)), dict(window_size_left=4, causal=False),
    dict(window_size_left=-1, window_size_right=3, causal=False), dict(return_softmax=True),
])
def test_unsupported_arguments_raise(kwargs):
    q = torch.randn(1, 8, 4, 8)
    base = dict(q=q, k=q, v=q, dropout_p=0.0, softmax_scale=None, causal=True, window_size_left=-1,
                window_size_right=-1, softcap=0.0, alibi_slopes=None, return_softmax=False)
    base.update(kwargs)
    with pytest.raises(UnsupportedAttentionError):
        P.forward(**base)


def test_equivalent_window_forms_are_accepted():
    q = torch.randn(1, 8, 2, 8)
    base = dict(q=q, k=q, v=q, dropout_p=0.0, softmax_scale=None, softcap=0.0, alibi_slopes=None, return_softmax=False)
    a = P.forward(causal=True, window_size_left=-1, window_size_right=-1, **base)[0]
    b = P.forward(causal=True, window_size_left=8, window_size_right=0, **base)[0]  # >= seqlen_k: unlimited
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_selection_on_cpu():
    assert select_provider("cpu").name == REFERENCE
    if not torch.cuda.is_available():
        assert select_provider().name == REFERENCE
        with pytest.raises(ProviderError):
            get_provider("torch_cuda")
    with pytest.raises(ProviderError):
        get_provider("nope")
    assert [identify(f) for f in P.functions().values()] == [REFERENCE] * 4
    assert qualified_name(P.forward) == "cpshim.ring.providers.reference._flash_attn_forward"
    assert list(P.functions()) == list(FUNCTION_NAMES)


def test_shim_is_never_taken_for_real_flash_attn(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("flash_attn")
    setattr(fake, SHIM_MARKER, True)
    monkeypatch.setitem(sys.modules, "flash_attn", fake)
    assert real_flash_attn_provider() is None
    with pytest.raises(ProviderError):
        get_provider("flash_attn")


def test_cuda_provider_refuses_cpu_tensors_clearly():
    q = torch.randn(1, 8, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(ProviderError, match="CUDA"):
        cuda_mod._flash_attn_forward(q, q, q, 0.0, None, True, -1, -1, 0.0, None, False)


@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("left", [-1, 5])
def test_cuda_provider_plumbing_against_aten_meta_kernels(varlen, left):
    """Drive the aten ops' meta kernels: the calls bound from this torch's schema, output shapes, GQA included,
    and a causal window (`window_size_left`, the sliding layers' halo path; torch < 2.4's op has none: refused)."""
    from cpshim.ring import aten_calls

    if left >= 0 and "window_size_left" not in {a.name for a in aten_calls.live(aten_calls.FORWARD).args}:
        q = torch.empty(2, 16, 8, 64, device="meta", dtype=torch.bfloat16)
        with pytest.raises(ProviderError, match="takes no window_size_left"):
            cuda_mod._forward(q, q, q, None, None, 16, 16, True, 0.125, left)
        return
    h, hk, d = 8, 2, 64
    mk = lambda *s: torch.empty(*s, device="meta", dtype=torch.bfloat16)  # noqa: E731
    if varlen:
        q, k, v = mk(40, h, d), mk(40, hk, d), mk(40, hk, d)
        cu = torch.tensor([0, 15, 40], dtype=torch.int32, device="meta")
        try:
            out, lse, smask, rng = cuda_mod._forward(q, k, v, cu, cu, 25, 25, True, 0.125, left)
        except IndexError as e:  # only the meta kernel's own limit, after the op parser accepted the call
            if not any("_meta_registrations" in f.filename for f in traceback.extract_tb(e.__traceback__)):
                raise
            pytest.skip(f"torch {torch.__version__}'s meta kernel has no varlen shapes (parsed and bound): {e}")
        assert lse.shape == (h, 40)
    else:
        q, k, v = mk(2, 16, h, d), mk(2, 16, hk, d), mk(2, 16, hk, d)
        cu = None
        out, lse, smask, rng = cuda_mod._forward(q, k, v, None, None, 16, 16, True, 0.125, left)
        assert lse.shape == (2, h, 16)
    assert out.shape == q.shape and lse.dtype == torch.float32 and rng.dtype == torch.int64
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    cuda_mod._backward(out, q, k, v, out, lse, dq, dk, dv, cu, cu, 25 if varlen else 16, 25 if varlen else 16,
                       True, 0.125, left)
    assert dk.shape == k.shape and dv.shape == v.shape and dq.shape == q.shape


def test_cuda_gqa_reduction_sums_groups():
    g = torch.arange(2 * 3 * 4 * 2, dtype=torch.float32).reshape(2, 3, 4, 2)  # 4 q heads, 2 kv heads
    red = cuda_mod._reduce_kv(g, 2)
    torch.testing.assert_close(red, g[:, :, 0::2] * 0 + g.reshape(2, 3, 2, 2, 2).sum(3))
    assert cuda_mod._reduce_kv(red, 2) is red
    e = cuda_mod._expand_kv(torch.arange(2.0).reshape(1, 1, 2, 1), 4)
    assert e.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]  # q head i reads kv head i // group


def test_cuda_gqa_fallback_only_on_a_heads_refusal(monkeypatch):
    """If aten refuses fewer kv heads, kv is expanded (and remembered); other errors propagate."""
    calls = []

    def fake(q, k, v, *args, **kwargs):
        calls.append(k.shape[-2])
        if k.shape[-2] != q.shape[-2]:
            raise RuntimeError("Number of heads in key/value must divide number of heads in query")
        lse = torch.zeros(q.shape[0], q.shape[2], q.shape[1])
        return torch.zeros_like(q), lse, torch.zeros(2, dtype=torch.int64), torch.zeros(()), torch.empty(0)

    monkeypatch.setattr(cuda_mod, "_GQA_NATIVE", None)
    monkeypatch.setattr(torch.ops.aten, "_flash_attention_forward", fake)
    q, k = torch.zeros(1, 4, 8, 16), torch.zeros(1, 4, 2, 16)
    out = cuda_mod._forward(q, k, k, None, None, 4, 4, True, 0.25)
    assert calls == [2, 8] and cuda_mod._GQA_NATIVE is False and out[0].shape == q.shape
    cuda_mod._forward(q, k, k, None, None, 4, 4, True, 0.25)
    assert calls == [2, 8, 8]  # remembered: expands straight away

    def oom(*a, **kw):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(cuda_mod, "_GQA_NATIVE", None)
    monkeypatch.setattr(torch.ops.aten, "_flash_attention_forward", oom)
    with pytest.raises(RuntimeError, match="out of memory"):
        cuda_mod._forward(q, k, k, None, None, 4, 4, True, 0.25)
    assert cuda_mod._GQA_NATIVE is None


@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=5), h=st.integers(1, 3))
def test_padded_varlen_lse_packs_and_pads_back_exactly(lengths, h):
    """torch <= 2.6 returns the varlen lse as (batch, h, max_seqlen_q); ring-flash-attn reads (h, total_q)."""
    from cpshim.ring.providers._common import pack_lse, pad_lse

    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    total, max_q = int(cu[-1]), max(lengths)
    padded = torch.randn(len(lengths), h, max_q)
    packed = pack_lse(padded, cu, total)
    for i, n in enumerate(lengths):  # independent of the implementation: token j of sequence i
        torch.testing.assert_close(packed[:, int(cu[i]):int(cu[i]) + n], padded[i, :, :n], rtol=0, atol=0)
    back = pad_lse(packed, cu, max_q)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(back[i, :, :n], padded[i, :, :n], rtol=0, atol=0)
        assert not back[i, :, n:].any()
