"""TRL's GRPO and RLOO trainers under ring CP equal one process running the same script.

They build their model inputs inside the step, so the Trainer hook gets the raw generation batch and the
step runs on the backbone path in the replicated scope (`cpshim.patches.trl_rl`): each CP rank generates
its share of the group's prompts, the shares are exchanged, accelerate's collectives see the group as one
data-parallel rank, every backbone call is sharded (its left-padded prompts rolled to right padding) and its
hidden states all-gathered. Completions are fixed (see tests/parity/_rl_worker.py) so both runs train on the
same tokens. Checked: first-step per-tensor gradients (SGD) and per-step losses within the parity suite's
tolerances, for every GRPO loss type (normalised per sequence: grpo, sapo, luspo, GSPO's sequence-level
ratio; by token counts: dapo, bnpo, cispo, vespo; by a constant: dr_grpo), the KL term with a reference
model, reused generations (steps_per_generation 2, num_iterations 2: old log-probs, ratios != 1), each ring
strategy, the float16 ring (the one process's reference attention in float16 too), RLOO, and GRPO's eval loss
(its prediction_step skips the hook: generation split, the rest unsharded on every rank, collectives over
data-parallel ranks); the group's completions equal one process's, each rank generated half of them, and TRL's
logged metrics (token count and reward exactly, entropy at every step) match. With two data-parallel ranks
(dp=2 x cp=2 against two processes), each CP group is one of them, its completions log included. The negative
control does not sum the gathered hidden states' gradient over the group and must fail the same check.

Losses: at ratio 1 (a fresh generation) GRPO's `grpo`/GSPO and RLOO's losses are 0 in exact arithmetic
(group-centred advantages, summed per group); a relative error of float32 residue around 0 means nothing, so a
loss is compared relative to max(|loss|, LOSS_FLOOR): an absolute 1e-6 near 0, the suite's relative 1e-3 above.
One launch runs every case: all of them on the newest TRL, the cases that cross cpshim's patches on the other
TRL cells (see CORE).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json

import pytest

from cpshim.patches.ceilings import TRL_CEILING
from tests.helpers import parity_results, parity_verdict, run_parity_pair, run_ranks

pytestmark = [pytest.mark.multiproc, pytest.mark.upstream, pytest.mark.needs_cp]
if any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "accelerate", "ring_flash_attn",
                                                     "trl", "datasets")):
    pytest.skip("needs torch, transformers, accelerate, ring-flash-attn, trl and datasets", allow_module_level=True)

LOSS_RTOL, GRAD_RTOL = 1e-3, 2e-2  # the training parity suite's (tests/parity/test_ring_parity.py)
LOSS_FLOOR = 1e-3
ALL_CASES = [
    {"id": "grpo-dapo", "trainer": "grpo", "eval": True},
    *({"id": f"grpo-{t}", "trainer": "grpo", "loss_type": t}
      for t in ("grpo", "bnpo", "dr_grpo", "cispo", "sapo", "vespo")),
    {"id": "grpo-luspo", "trainer": "grpo", "loss_type": "luspo", "level": "sequence"},
    {"id": "gspo", "trainer": "grpo", "loss_type": "grpo", "level": "sequence"},
    {"id": "grpo-kl", "trainer": "grpo", "beta": 0.04},
    {"id": "grpo-reuse", "trainer": "grpo", "spg": 2, "iterations": 2, "steps": 4},
    {"id": "grpo-contiguous", "trainer": "grpo", "strategy": "contiguous"},
    {"id": "grpo-varlen", "trainer": "grpo", "strategy": "varlen"},
    {"id": "grpo-fp16", "trainer": "grpo", "ring_dtype": "float16"},
    {"id": "rloo", "trainer": "rloo"},
    {"id": "grpo-hf-generate", "trainer": "grpo", "generate": "greedy"},
    {"id": "negative-no-gradient-sum", "trainer": "grpo", "negative": True},
]
#: The newest TRL (on the oldest and the newest transformers cells) runs every case and the dp=2 x cp=2 test; the
#: other TRL cells (one per fingerprint group of the patched TRL code) run the cases that cross what is patched:
#: the split, a reference model, reused generations, RLOO, HF generate, the negative control. The loss types
#: differ only in TRL's `_compute_loss`, which cpshim does not patch; the dp=2 run covers accelerate's groups
#: (1.10.1 and 1.15.0) on the newest TRL's two cells. This keeps CI's nine TRL cells within its time.
NEWEST = importlib.metadata.version("trl") == TRL_CEILING
CORE = {"grpo-dapo", "grpo-kl", "grpo-reuse", "rloo", "grpo-hf-generate", "negative-no-gradient-sum"}
CASES = ALL_CASES if NEWEST else [c for c in ALL_CASES if c["id"] in CORE]
PARITY = [c["id"] for c in CASES if not c.get("negative") and c.get("generate") != "greedy"]


#: Two data-parallel ranks: two processes without CP against four ranks (dp=2 x cp=2). Each CP group must act as
#: one data-parallel rank: its share of the sampler's generation batch, its slice of the gathered advantages.
DP_CASES = [{"id": "grpo-dp2", "trainer": "grpo"}]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_parity_pair("tests.parity._rl_worker", CASES, str(tmp_path_factory.mktemp("rlparity")))


@pytest.fixture(scope="module")
def dp_results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rldp"))
    code = f"from tests.parity._rl_worker import main_worker; main_worker({json.dumps(DP_CASES)!r}, {out!r}, CP)"
    run_ranks(code.replace("CP", "1"), 2, timeout=900)
    run_ranks(code.replace("CP", "2"), 4, timeout=900)
    return parity_results(out, DP_CASES)


def _verdict(ref: dict, ring: dict) -> dict:
    verdict = parity_verdict(ref, ring, LOSS_RTOL, GRAD_RTOL)
    verdict["loss_err"] = max(abs(a - b) / max(abs(a), LOSS_FLOOR) for a, b in zip(ref["losses"], ring["losses"]))
    verdict["ok"] = (verdict["grad_rel_err_max"] <= GRAD_RTOL and verdict["loss_err"] <= LOSS_RTOL
                     and len(ref["losses"]) == len(ring["losses"]) and verdict.get("eval_rel_err", 0.0) <= LOSS_RTOL)
    return verdict


@pytest.mark.parametrize("case", PARITY)
def test_rl_trainer_equals_one_process(results, case):
    ref, ring = results[case]
    assert ring["generation_batch_size"] == ref["generation_batch_size"]  # CP ranks not counted as data-parallel
    assert ring["completions"] == ref["completions"], "the group trained on other completions than one process"
    verdict = _verdict(ref, ring)
    print(case, verdict)
    assert verdict["ok"], verdict


@pytest.mark.skipif(not NEWEST, reason=f"the dp=2 x cp=2 run is on the newest TRL's cells ({TRL_CEILING})")
def test_two_data_parallel_ranks_equal_two_processes(dp_results):
    """dp=2 x cp=2 against two processes without CP: rank 0's losses, the averaged first-step gradients, the
    completions, metrics and completion logs of the first data-parallel rank."""
    ref, ring = dp_results["grpo-dp2"]
    assert ring["generation_batch_size"] == ref["generation_batch_size"] == 16
    assert ring["completions"] == ref["completions"] and ring["generated"] == [n // 2 for n in ref["generated"]]
    assert [(m["num_tokens"], m["reward"]) for m in ring["metrics"]] == [(m["num_tokens"], m["reward"])
                                                                        for m in ref["metrics"]]
    # the log keeps the last generation_batch_size entries: gathered over every process it would hold the second
    # group twice ([g0, g0, g1, g1] cut to [g1, g1]); over DP ranks it holds [g0, g1], as the two processes do
    assert ring["logged"] == ref["logged"]
    verdict = _verdict(ref, ring)
    print("dp2", verdict)
    assert verdict["ok"], verdict


@pytest.mark.parametrize("case", PARITY)
def test_logged_metrics_equal_one_process(results, case):
    """Gathered over data-parallel ranks (the token count over every process inside generation, where each rank
    holds its own share): the token count and the reward exactly, the entropy at every step (updated weights)."""
    ref, ring = (r["metrics"] for r in results[case])
    assert len(ref) == len(ring)
    for a, b in zip(ref, ring):
        assert (a.get("num_tokens"), a.get("reward")) == (b.get("num_tokens"), b.get("reward")), (a, b)
        assert abs(a["entropy"] - b["entropy"]) <= LOSS_RTOL * abs(a["entropy"]), (a, b)


@pytest.mark.parametrize("case", ["rloo", "grpo-hf-generate", "grpo-dapo"])
def test_generation_split_over_the_group(results, case):
    """Each rank of the CP group generated half of the batch one process generated (rollout_func for GRPO's
    fixed completions, HF generate for the greedy case, the generation backend for RLOO), and the group's
    completions after the exchange are one process's, in order: with HF generate (greedy) too."""
    ref, ring = results[case]
    assert ref["generated"] and ring["generated"] == [n // 2 for n in ref["generated"]], (ref["generated"],
                                                                                          ring["generated"])
    assert ring["completions"] == ref["completions"]


def test_negative_control_fails_the_same_check(results):
    verdict = _verdict(*results["negative-no-gradient-sum"])
    print("negative control:", verdict)
    assert not verdict["ok"] and verdict["grad_rel_err_max"] > 10 * GRAD_RTOL, verdict
