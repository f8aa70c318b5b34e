"""Sliding-window models under ring CP with a real Trainer on 2 gloo ranks equal one process.

Gemma 3 (layer_types: sliding and full layers, the window per layer) and Mistral (every layer sliding), on
every strategy, windows shorter than a zigzag chunk, not dividing it, and longer than a shard, packed documents
shorter than the window. The one process attends through transformers' own 4-D masks (`parity_models`), not
the window ring mode reads. Same check and tolerances as the full-attention parity (`test_ring_parity`); the
negative control (sliding layers without their halo) must fail it.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers import run_parity_pair

pytestmark = [pytest.mark.multiproc, pytest.mark.upstream, pytest.mark.needs_cp]
if any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "accelerate", "ring_flash_attn")):
    pytest.skip("needs torch, transformers, accelerate and ring-flash-attn", allow_module_level=True)

LOSS_RTOL = 1e-3
GRAD_RTOL = 2e-2

CASES = [
    {"id": "gemma3-zigzag-w8", "model": "gemma3", "window": 8, "strategy": "zigzag", "batch": 1, "seq_len": 64,
     "steps": 2},
    {"id": "gemma3-contiguous-b2-w40", "model": "gemma3", "window": 40, "strategy": "contiguous", "batch": 2,
     "seq_len": 64, "steps": 2},
    {"id": "gemma3-varlen-packed-w20", "model": "gemma3", "window": 20, "strategy": "varlen", "batch": 2,
     "seq_len": 64, "steps": 2, "packed": True},
    {"id": "mistral-zigzag-b2-w11", "model": "mistral", "window": 11, "strategy": "zigzag", "batch": 2,
     "seq_len": 64, "steps": 2},
    {"id": "negative-no-halo", "model": "gemma3", "window": 8, "strategy": "zigzag", "batch": 1, "seq_len": 64,
     "steps": 2, "negative": "no-halo"},
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_parity_pair("cpshim.ring.parity", CASES, str(tmp_path_factory.mktemp("sliding")))


@pytest.mark.parametrize("case", [c["id"] for c in CASES if not c.get("negative")])
def test_sliding_model_matches_one_process(results, case):
    from cpshim.ring.parity import compare

    verdict = compare(*results[case], loss_rtol=LOSS_RTOL, grad_rtol=GRAD_RTOL)
    print(case, verdict)
    assert verdict["ok"], verdict


def test_negative_control_fails_the_same_check(results):
    from cpshim.ring.parity import compare

    verdict = compare(*results["negative-no-halo"], loss_rtol=LOSS_RTOL, grad_rtol=GRAD_RTOL)
    print("negative", verdict)
    assert not verdict["ok"], f"sliding layers without their halo passed the parity check: {verdict}"
