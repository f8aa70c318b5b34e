"""TRL's DPO, KTO and reward trainers under ring CP equal one process running the same script.

Their batches carry no labels: the backbone runs sharded and its hidden states are all-gathered, so
TRL's heads and losses see the whole sequence (`cpshim.ring.backbone`); TRL's fused log-prob head (TRL >=
1.15, DPO and KTO) runs on the shard and its per-token log-probs are gathered (`cpshim.ring.fused_head`).
SGD, TRL's defaults otherwise
(gradient checkpointing on: the recompute runs the ring again), zigzag, a prompt whose copy is the
chosen completion (attention across shards matters): per-step losses and first-step per-tensor
gradients against one process's reference attention, within the parity suite's tolerances. DPO:
sigmoid, IPO and hinge losses, an explicit reference model, the PEFT-adapter reference, and
precomputed reference log-probs (`trl-dpo-precompute-gather`: upstream's gather over every process
misassigned them, first loss 3.05 for 0.693). Reward: its score head read at each sequence's last
token, the model in fp32 and the ring in bf16 and fp16 (the worker says why). TRL's logged metrics
(token count, log-prob means, entropy), evaluate()'s and predict()'s outputs match too. The negative
controls (DPO, reward) keep each rank's share of the gathered hidden states' gradient without summing
it over the group (DPO's also gathers the metrics over every process): they must fail the same check,
and DPO's count the tokens twice.
The worker is tests/parity/_pref_worker.py; one launch runs every case.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers import parity_verdict, run_parity_pair

pytestmark = [pytest.mark.multiproc, pytest.mark.upstream, pytest.mark.needs_cp]
if any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "accelerate", "ring_flash_attn",
                                                     "trl", "datasets", "peft")):
    pytest.skip("needs torch, transformers, accelerate, ring-flash-attn, trl, datasets and peft",
                allow_module_level=True)

LOSS_RTOL, GRAD_RTOL = 1e-3, 2e-2  # the training parity suite's (tests/parity/test_ring_parity.py)
CASES = [
    {"id": "dpo-sigmoid", "trainer": "dpo", "steps": 3, "batch": 2, "eval": True},
    {"id": "dpo-ipo", "trainer": "dpo", "loss_type": "ipo", "steps": 3, "batch": 2},
    {"id": "dpo-hinge", "trainer": "dpo", "loss_type": "hinge", "steps": 3, "batch": 2},
    {"id": "dpo-precompute", "trainer": "dpo", "precompute": True, "steps": 2, "batch": 2},
    {"id": "dpo-peft-reference", "trainer": "dpo", "ref": "peft", "steps": 2, "batch": 2},
    {"id": "kto", "trainer": "kto", "steps": 3, "batch": 2, "eval": True},
    # a reward read at one token: the model in fp32 (the worker's docstring says why), the ring in bf16 and fp16
    {"id": "reward", "trainer": "reward", "steps": 3, "batch": 2, "bf16": False},
    {"id": "reward-fp16", "trainer": "reward", "steps": 2, "batch": 2, "bf16": False, "ring_dtype": "float16",
     "eval": True},
    {"id": "negative-no-gradient-sum", "trainer": "dpo", "steps": 2, "batch": 2, "negative": True},
    {"id": "reward-negative", "trainer": "reward", "steps": 2, "batch": 2, "bf16": False, "negative": True},
]
NEGATIVE = {"negative-no-gradient-sum": "dpo", "reward-negative": "reward"}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_parity_pair("tests.parity._pref_worker", CASES, str(tmp_path_factory.mktemp("prefparity")))


def _check(ref: dict, ring: dict) -> dict:
    return parity_verdict(ref, ring, LOSS_RTOL, GRAD_RTOL)


@pytest.mark.parametrize("case", [c["id"] for c in CASES if not c.get("negative")])
def test_preference_trainer_equals_one_process(results, case):
    ref, ring = results[case]
    assert ref["first_batch"] == ring["first_batch"], "the two runs collated different batches"
    assert "labels" not in ring["first_batch"]  # a label-less batch: the backbone path
    verdict = _check(ref, ring)
    print(case, verdict)
    assert verdict["ok"], verdict


@pytest.mark.parametrize("case", ["dpo-sigmoid", "dpo-peft-reference", "kto"])
def test_fused_head_runs_on_the_shard(results, case):
    """On a TRL with the fused log-prob head (1.15 on) every call through it ran on this rank's shard: the
    per-token outputs it computed are 1/cp of the row (policy, reference and KTO's KL calls alike). On an
    older TRL there is no such call (the hidden states are gathered)."""
    import trl.trainer.utils

    calls = results[case][1]["fused_head_calls"]
    if not hasattr(trl.trainer.utils, "add_fused_lm_head"):
        assert calls == []
        return
    assert calls, "no call through TRL's fused head was sharded at the model"
    assert all(2 * width == padded for width, padded in calls), calls


@pytest.mark.parametrize("case", [c["id"] for c in CASES if not c.get("negative")])
def test_logged_metrics_equal_one_process(results, case):
    """TRL's own metrics, gathered in the replicated scope over data-parallel ranks: the token count exactly at
    every step, the per-sequence log-prob means and the entropy at step 1 (same weights) within the loss's
    tolerance."""
    ref, ring = (r["metrics"] for r in results[case])
    assert [m.get("num_tokens") for m in ring] == [m.get("num_tokens") for m in ref], (ref, ring)
    for key in ("logps/chosen", "logps/rejected", "entropy"):
        if key in ref[0]:
            assert abs(ring[0][key] - ref[0][key]) <= LOSS_RTOL * abs(ref[0][key]), (key, ref[0], ring[0])


def test_eval_reports_each_row_once(results):
    """evaluate()'s metrics (RewardTrainer's accuracy, mean reward and margin; the token count) and predict()'s
    outputs: one row per eval row (a gather over CP peers would repeat each), values within the loss's tolerance
    (the metrics) and the gradients' relative to the largest (the outputs). The reward case evaluates with the
    ring in fp16: a mean of one-token readouts after training carries bf16's rounding (2e-3 on a mean reward
    of 0.14) above the loss's tolerance, fp16's (1e-4) below it."""
    import numpy as np

    for case in (c["id"] for c in CASES if c.get("eval")):
        ref, ring = results[case]
        assert ring["eval_metrics"].keys() == ref["eval_metrics"].keys(), case
        for key, value in ref["eval_metrics"].items():
            assert abs(ring["eval_metrics"][key] - value) <= LOSS_RTOL * max(abs(value), 1.0), (case, key)
        for a, b in zip(ref["predictions"], ring["predictions"], strict=True):
            a, b = np.asarray(a), np.asarray(b)
            assert a.shape == b.shape, (case, a.shape, b.shape)
            assert np.abs(a - b).max() <= GRAD_RTOL * np.abs(a).max(), (case, np.abs(a - b).max())


@pytest.mark.parametrize("case", sorted(NEGATIVE))
def test_negative_control_fails_the_same_check(results, case):
    verdict = _check(*results[case])
    print("negative control:", verdict)
    assert not verdict["ok"] and verdict["grad_rel_err_max"] > 10 * GRAD_RTOL, verdict
    ref, ring = (r["metrics"] for r in results[case])
    if NEGATIVE[case] == "dpo":  # TRL's metrics gathered over every process: each CP rank's copy counted
        assert ring[0]["num_tokens"] == 2 * ref[0]["num_tokens"], (ref, ring)
