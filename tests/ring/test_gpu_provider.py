"""torch_cuda provider on a real GPU (skipped without CUDA). The fuller check with benchmarks is
tests/ring/gpu_check.py. Tolerance as there: relative Frobenius error vs SDPA math in fp32 on the
same inputs, bf16 out 1e-2 / grads 2e-2, fp16 out 2e-3 / grads 4e-3."""

from __future__ import annotations

import pytest
import torch

from ._attn_ref import rel_err, sdpa_math, sdpa_math_varlen

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TOL = {torch.bfloat16: (1e-2, 2e-2), torch.float16: (2e-3, 4e-3)}


def _grads(fn, ts, dout):
    ts = [t.detach().clone().requires_grad_() for t in ts]
    out = fn(*ts)
    return [out.detach(), *torch.autograd.grad(out, ts, dout)]


def _check(got, want, dtype):
    tol_o, tol_g = TOL[dtype]
    errs = [rel_err(a, b) for a, b in zip(got, want)]
    assert errs[0] <= tol_o and all(e <= tol_g for e in errs[1:]), errs


@pytest.fixture(scope="module")
def provider():
    from cpshim.ring.providers import get_provider, select_provider

    p = get_provider("torch_cuda")
    assert select_provider("cuda").name in ("torch_cuda", "flash_attn")
    return p


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("hk", [8, 2])
@pytest.mark.parametrize("sq,sk,causal", [(256, 256, True), (256, 256, False), (128, 256, True), (256, 128, True)])
def test_dense_matches_sdpa_math(provider, dtype, d, hk, sq, sk, causal):
    from cpshim.ring.providers.autograd import attention

    torch.manual_seed(0)
    q = torch.randn(2, sq, 8, d, device="cuda", dtype=dtype)
    k, v = (torch.randn(2, sk, hk, d, device="cuda", dtype=dtype) for _ in range(2))
    dout = torch.randn_like(q)
    got = _grads(lambda a, b, c: attention(a, b, c, provider, causal=causal), (q, k, v), dout)
    want = _grads(lambda a, b, c: sdpa_math(a, b, c, causal), [t.float() for t in (q, k, v)], dout.float())
    _check(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hk", [8, 2])
def test_varlen_matches_sdpa_math(provider, dtype, hk):
    from cpshim.ring.providers.autograd import attention_varlen

    torch.manual_seed(1)
    lens = [100, 7, 256, 1, 64]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    T = int(cu[-1])
    q = torch.randn(T, 8, 128, device="cuda", dtype=dtype)
    k, v = (torch.randn(T, hk, 128, device="cuda", dtype=dtype) for _ in range(2))
    dout = torch.randn_like(q)
    for causal in (True, False):
        got = _grads(lambda a, b, c: attention_varlen(a, b, c, cu, cu, 256, 256, provider, causal=causal), (q, k, v), dout)
        want = _grads(lambda a, b, c: sdpa_math_varlen(a, b, c, cu, cu, causal), [t.float() for t in (q, k, v)],
                      dout.float())
        _check(got, want, dtype)
