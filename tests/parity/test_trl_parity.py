"""TRL's SFTTrainer with packing under ring CP (strategy varlen) equals one process running the same script.

TRL >= 1.11 refuses packing with CP (right for torch's native CP, which drops the block mask); cpshim's
`trl-sft-packing-guard` relaxes the guard in ring mode with strategy varlen only. SGD, the copy task cut
to ragged lengths with prompts masked (completion-only loss), TRL packing the rows itself: per-step
losses, first-step per-tensor gradients and the eval loss against one process whose attention keeps the
documents apart as transformers does. The negative control (the ring treats each packed row as one
document) must fail the same check; TRL's own refusal stays under zigzag (with cpshim's fix named) and in
external mode. The worker is tests/parity/_trl_worker.py; one launch runs every case.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

import cpshim
from tests.helpers import parity_verdict, run_parity_pair

pytestmark = [pytest.mark.multiproc, pytest.mark.upstream, pytest.mark.needs_cp]
if any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "accelerate", "ring_flash_attn",
                                                     "trl", "datasets")):
    pytest.skip("needs torch, transformers, accelerate, ring-flash-attn and trl", allow_module_level=True)

GUARDED = cpshim.report()["trl-sft-packing-guard"].state != "not-needed"  # TRL >= 1.11 has the guard
LOSS_RTOL, GRAD_RTOL = 1e-3, 2e-2  # the training parity suite's (tests/parity/test_ring_parity.py)
CASES = [
    {"id": "bfd", "packing": "bfd", "steps": 3, "batch": 1},
    {"id": "bfd-b2-eval-packing", "packing": "bfd", "eval_packing": True, "steps": 2, "batch": 2},
    {"id": "wrapped", "packing": "wrapped", "steps": 2, "batch": 2},
    {"id": "padding-free-unpacked", "packing": None, "padding_free": True, "steps": 2, "batch": 2},
    {"id": "assistant-only-bfd", "packing": "bfd", "assistant_only": True, "steps": 2, "batch": 2},
    {"id": "assistant-only-padded", "packing": None, "assistant_only": True, "steps": 2, "batch": 2},
    {"id": "negative-one-document-per-row", "packing": "bfd", "steps": 2, "batch": 1, "negative": True},
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("trlparity"))
    got = run_parity_pair("tests.parity._trl_worker", CASES, out)
    with open(os.path.join(out, "guard.json")) as fh:
        return got, json.load(fh)


def _check(ref: dict, ring: dict) -> dict:
    return parity_verdict(ref, ring, LOSS_RTOL, GRAD_RTOL)


@pytest.mark.parametrize("case", [c["id"] for c in CASES if not c.get("negative")])
def test_packed_sft_equals_one_process(results, case):
    ref, ring = results[0][case]
    assert ref["first_batch"] == ring["first_batch"], "the two runs collated different batches"
    verdict = _check(ref, ring)
    print(case, verdict)
    assert verdict["ok"], verdict


def test_the_batches_are_packed(results):
    """bfd and padding_free give one row of several documents; wrapped keeps (batch, max_length) rows."""
    got = results[0]
    assert got["bfd"][0]["first_batch"]["input_ids"][0] == 1 and "position_ids" in got["bfd"][0]["first_batch"]
    assert got["wrapped"][0]["first_batch"]["input_ids"] == (2, 128)


def test_negative_control_fails_the_same_check(results):
    verdict = _check(*results[0]["negative-one-document-per-row"])
    print("negative control:", verdict)
    assert not verdict["ok"], verdict


@pytest.mark.skipif(not GUARDED, reason="this TRL has no packing guard (it appeared in 1.11.0)")
def test_trl_guard_stays_outside_varlen(results):
    guard = results[1]
    assert guard["zigzag"].startswith("ConfigurationError") and "strategy='varlen'" in guard["zigzag"], guard
    assert guard["zigzag"].endswith("cause: ValueError"), guard  # raised from TRL's own error
    assert guard["external"].startswith("ValueError: Packing is not compatible with context parallelism"), guard
