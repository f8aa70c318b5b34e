"""Sequence mixers other than attention under ring CP, with a real Trainer on 2 gloo ranks, equal one process
(all cases in one launch): LFM2's short convolutions (`cpshim.ring.short_conv`, a halo of kernel - 1 input rows)
and the recurrent mixers, Gated DeltaNet, Mamba-2, Mamba-1 and RG-LRU (`cpshim.ring.carry_state`: the conv rows
from a halo of input rows, the recurrent state passed along the sequence).

- lfm2 (conv, full, conv) on zigzag with batch 2, contiguous with kernel 5, zigzag with a kernel of 20, wider
  than a zigzag chunk (16 tokens), whose halo spans two ranks; lfm2_moe (experts) where transformers has it
  (>= 5.0); lfm3 (conv of kernel 7, a sliding layer of window 8, a full layer) where it has it (>= 5.23).
- varlen with packed documents is refused by name (transformers runs the convolution across documents even in
  one process: there is no exact answer to match).
- Gated DeltaNet where its patches apply (transformers >= 5.21), its core by head shards (`cpshim.ring.head_shards`,
  heads divisible by cp): Qwen3.5 (linear, full, linear) zigzag with batch 2 and contiguous, Qwen3-Next (with
  experts) zigzag; with one key head (not divisible by cp: the state's chain) zigzag with batch 2 and contiguous;
  varlen refused by name.
- Mamba-2 where its patches apply (the same floor; upstream's zero-started scan plus the carried state's part,
  so the group's scans run side by side): Bamba (mamba, attention, mamba; SSD chunks of 6, so a
  16-token run spans three and ends in a padded one) zigzag with batch 2 and contiguous, and with a state that
  lasts (`lasting_state`: upstream's init forgets most of it within a chunk), Granite 4 hybrid (with
  experts) zigzag with batch 2; varlen refused by name. Falcon-H1, NemotronH, Zamba2, OLMo-hybrid's DeltaNet and
  Kimi Linear's KDA (the same path) zigzag, from their default configs shrunk; pure Mamba-2 (no attention, no
  position_ids) too.
- Mamba-1 (the same floor; upstream's zero-started scan plus the carried state's part): Jamba (with experts)
  zigzag and contiguous with batch 2, Mamba, Falcon-Mamba, Zamba (one scan per Mamba head) zigzag, shrunk.
- RecurrentGemma where its patch applies (>= 5.23: two RG-LRU blocks, then local attention of window 8) zigzag,
  contiguous with batch 2; varlen refused by name.
- Gradient checkpointing (Qwen3.5 by head shards and along the chain, Bamba with a lasting state) and eval (Qwen3.5,
  Bamba: the eval loss and whole logits).
- cp=2 x dp=2 (4 ranks): Qwen3.5 by head shards and along the chain, Bamba with a lasting state, contiguous.
- The negative controls (each conv run without the rows before it, LFM2's and Qwen3.5's; each run's Gated
  DeltaNet core on its own positions (no all-to-all); each Gated DeltaNet (along the chain), Mamba-2 (a state
  that lasts) and RG-LRU run from no state; pure Mamba-2 under the architecture table's
  control; Jamba's and Bamba's scans started from zero though their state arrives) must fail the same check.

Same check and tolerances as the other parity suites (`test_ring_parity`). The matrix's `mixers` cells run this
file for each fingerprint group of the short-conv patches.
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
#: The architecture table's rule for a tensor whose update is ~0: a one-process gradient below FLOOR x the largest
#: tensor's is judged at that scale. Gated DeltaNet's A_log and dt_bias get 2-5e-7 of the largest gradient at
#: this init (a sum of cancelling terms): their own-norm error is fp32 rounding (2-3e-2), 1e-8 of the scale.
FLOOR = 1e-3


def _has(model_type: str) -> bool:
    return importlib.util.find_spec(f"transformers.models.{model_type}") is not None


#: The Gated DeltaNet and Mamba-2 patches need transformers >= 5.21 (below, ring mode refuses their layers)
CARRY = _has("qwen3_5") and bool(__import__("cpshim").report()["qwen3-5-gated-deltanet"].variant)
#: RecurrentGemma's layer types are `linear_attention` / `sliding_attention` from 5.23 (ring mode refuses it below)
RG_LRU = _has("recurrent_gemma") and bool(__import__("cpshim").report()["recurrent-gemma-rg-lru"].variant)
SEQ = {"batch": 1, "seq_len": 64, "steps": 2}
CASES = [  # 64 tokens, cp=2: a zigzag chunk is 16 tokens
    {"id": "conv-lfm2-zigzag-b2", "model": "lfm2", "strategy": "zigzag", **SEQ, "batch": 2},
    {"id": "conv-lfm2-contiguous-k5", "model": "lfm2", "kernel": 5, "strategy": "contiguous", **SEQ},
    {"id": "conv-lfm2-zigzag-k20", "model": "lfm2", "kernel": 20, "strategy": "zigzag", **SEQ},
    *([{"id": "conv-lfm2_moe-zigzag-b2", "model": "lfm2_moe", "strategy": "zigzag", **SEQ, "batch": 2}]
      if _has("lfm2_moe") else []),
    *([{"id": "conv-lfm3-zigzag-w8", "model": "lfm3", "window": 8, "strategy": "zigzag", **SEQ, "batch": 2}]
      if _has("lfm3") else []),
    # Gated DeltaNet (transformers >= 5.21: the state handed to upstream's forward through its cache API)
    *([{"id": "deltanet-qwen3_5-zigzag-b2", "model": "qwen3_5", "strategy": "zigzag", **SEQ, "batch": 2},
       {"id": "deltanet-qwen3_5-contiguous", "model": "qwen3_5", "strategy": "contiguous", **SEQ},
       {"id": "deltanet-qwen3_next-zigzag", "model": "qwen3_next", "strategy": "zigzag", **SEQ},
       {"id": "deltanet-qwen3_5-varlen-refused", "model": "qwen3_5", "strategy": "varlen", **SEQ, "batch": 2,
        "packed": True, "refused": True},
       # one key head: not divisible by cp, so the core runs along the state's chain
       {"id": "deltanet-qwen3_5-chain-zigzag-b2", "model": "qwen3_5", "linear_key_heads": 1, "strategy": "zigzag",
        **SEQ, "batch": 2},
       {"id": "deltanet-qwen3_5-chain-contiguous", "model": "qwen3_5", "linear_key_heads": 1,
        "strategy": "contiguous", **SEQ},
       {"id": "negative-no-state", "model": "qwen3_5", "linear_key_heads": 1, "strategy": "zigzag", **SEQ,
        "batch": 2, "negative": "no-state"},
       # gradient checkpointing (the layers' forward again in backward: the all-to-all, the chain, the halos
       # again) and eval (no grad; the logits made whole)
       {"id": "deltanet-qwen3_5-zigzag-b2-checkpointed", "model": "qwen3_5", "strategy": "zigzag", **SEQ,
        "batch": 2, "gradient_checkpointing": True},
       {"id": "deltanet-qwen3_5-chain-zigzag-b2-checkpointed", "model": "qwen3_5", "linear_key_heads": 1,
        "strategy": "zigzag", **SEQ, "batch": 2, "gradient_checkpointing": True},
       {"id": "mamba2-bamba-zigzag-lasting-checkpointed", "model": "bamba", "strategy": "zigzag", **SEQ, "batch": 2,
        "lasting_state": True, "gradient_checkpointing": True},
       {"id": "deltanet-qwen3_5-zigzag-b2-eval", "model": "qwen3_5", "strategy": "zigzag", **SEQ, "batch": 2,
        "steps": 1, "eval": True},
       {"id": "mamba2-bamba-contiguous-b2-eval", "model": "bamba", "strategy": "contiguous", **SEQ, "batch": 2,
        "steps": 1, "eval": True},
       # by head shards, but each run's core on its own positions, every head, from no state (no all-to-all)
       {"id": "negative-deltanet-local-cores", "model": "qwen3_5", "strategy": "zigzag", **SEQ, "batch": 2,
        "negative": "local-cores"},
       # the state travels, but each run's conv starts from zeros (no halo of input rows before it)
       {"id": "negative-deltanet-no-conv-halo", "model": "qwen3_5", "strategy": "zigzag", **SEQ, "batch": 2,
        "negative": "no-halo"},
       # Mamba-2 (the same cache API and floor)
       {"id": "mamba2-bamba-zigzag-b2", "model": "bamba", "strategy": "zigzag", **SEQ, "batch": 2},
       {"id": "mamba2-bamba-contiguous", "model": "bamba", "strategy": "contiguous", **SEQ},
       {"id": "mamba2-granitemoehybrid-zigzag-b2", "model": "granitemoehybrid", "strategy": "zigzag", **SEQ,
        "batch": 2},
       # the other families on this path, from their default configs shrunk (`cpshim.ring.shrink`, as the
       # architecture table builds them): Falcon-H1's hybrid layers, NemotronH, Zamba2, OLMo-hybrid, Kimi Linear
       *({"id": f"carry-{t}-zigzag", "model": f"auto:{t}", "strategy": "zigzag", **SEQ}
         for t in ("falcon_h1", "nemotron_h", "zamba2", "olmo_hybrid", "kimi_linear", "mamba2", "jamba", "mamba",
                   "falcon_mamba", "zamba")),
       # Mamba-1: upstream's zero-started scan plus the carried state's part (`cpshim.ring.linear_scans`)
       {"id": "mamba1-jamba-contiguous-b2", "model": "auto:jamba", "strategy": "contiguous", **SEQ, "batch": 2},
       {"id": "mamba2-bamba-varlen-refused", "model": "bamba", "strategy": "varlen", **SEQ, "batch": 2,
        "packed": True, "refused": True},
       {"id": "negative-mamba2-no-state", "model": "bamba", "strategy": "zigzag", **SEQ, "batch": 2,
        "lasting_state": True, "negative": "no-state"},
       # pure Mamba-2 has no attention whose KV exchange the table's control could drop: it drops the state
       {"id": "negative-pure-mamba2-table-control", "model": "auto:mamba2", "strategy": "zigzag", **SEQ,
        "negative": True},
       # the state reaches each run, but the scan starts from zero (the conv rows alone)
       {"id": "negative-mamba1-zero-started-scan", "model": "auto:jamba", "strategy": "zigzag", **SEQ,
        "negative": "zero-started-scan"},
       # a state that lasts (`lasting_state`: A = -0.05, dt ~ 0.13), exact, and its control: the state arrives,
       # the scan takes it, but of zeros (upstream's init forgets most of a state within a 16-token chunk)
       {"id": "mamba2-bamba-zigzag-lasting", "model": "bamba", "strategy": "zigzag", **SEQ, "batch": 2,
        "lasting_state": True},
       {"id": "negative-mamba2-zero-started-scan", "model": "bamba", "strategy": "zigzag", **SEQ, "batch": 2,
        "lasting_state": True, "negative": "zero-started-scan"}] if CARRY else []),
    # RecurrentGemma: the RG-LRU and its conv from the block's cache attributes, local attention (window 8) beside
    *([{"id": "rg-lru-recurrent_gemma-zigzag", "model": "auto:recurrent_gemma", "strategy": "zigzag", **SEQ},
       {"id": "rg-lru-recurrent_gemma-contiguous-b2", "model": "auto:recurrent_gemma", "strategy": "contiguous",
        **SEQ, "batch": 2},
       {"id": "rg-lru-recurrent_gemma-varlen-refused", "model": "auto:recurrent_gemma", "strategy": "varlen", **SEQ,
        "batch": 2, "packed": True, "refused": True},
       {"id": "negative-rg-lru-no-state", "model": "auto:recurrent_gemma", "strategy": "zigzag", **SEQ,
        "negative": "no-state"}] if RG_LRU else []),
    {"id": "conv-lfm2-varlen-refused", "model": "lfm2", "strategy": "varlen", **SEQ, "batch": 2, "packed": True,
     "refused": True},
    {"id": "negative-no-conv-halo", "model": "lfm2", "strategy": "zigzag", **SEQ, "batch": 2, "negative": "no-halo"},
]
JUDGED = [c["id"] for c in CASES if not c.get("negative") and not c.get("refused")]
# 4 ranks as cp=2 x dp=2: the all-to-all and the chain within each CP group (group ranks, not global ones), equal
# to one process over the same global batches
SEQ_DP = {**SEQ, "dp": 2}
CASES_4 = [{"id": "cp2xdp2-deltanet-heads", "model": "qwen3_5", "strategy": "zigzag", **SEQ_DP},
           {"id": "cp2xdp2-deltanet-chain", "model": "qwen3_5", "linear_key_heads": 1, "strategy": "zigzag",
            **SEQ_DP},
           {"id": "cp2xdp2-mamba2-lasting", "model": "bamba", "strategy": "contiguous", "lasting_state": True,
            **SEQ_DP}] if CARRY else []


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_parity_pair("cpshim.ring.parity", CASES, str(tmp_path_factory.mktemp("mixers")))


@pytest.fixture(scope="module")
def results_4(tmp_path_factory):
    return run_parity_pair("cpshim.ring.parity", CASES_4, str(tmp_path_factory.mktemp("mixers4")), world=4)


@pytest.mark.parametrize("case", [c["id"] for c in CASES_4])
def test_cp2_dp2_matches_one_process_over_global_batches(results_4, case):
    from cpshim.ring.parity import compare

    ref, ring = results_4[case]
    verdict = compare(ref, ring, loss_rtol=LOSS_RTOL, grad_rtol=GRAD_RTOL, floor=FLOOR)
    print(case, verdict)
    assert verdict["ok"], verdict
    assert ring["total_batch"] == ref["total_batch"] == 2  # the cp ranks of a group share one batch


@pytest.mark.parametrize("case", JUDGED)
def test_model_matches_one_process(results, case):
    from cpshim.ring.parity import compare

    verdict = compare(*results[case], loss_rtol=LOSS_RTOL, grad_rtol=GRAD_RTOL, floor=FLOOR)
    print(case, verdict)
    assert verdict["ok"], verdict


@pytest.mark.parametrize("case", [c["id"] for c in CASES if c.get("eval")])
def test_eval_loss_and_logits(results, case):
    ref, ring = results[case]
    assert ring["eval"]["loss"] is not None, ring
    assert abs(ring["eval"]["loss"] - ref["eval"]["loss"]) <= LOSS_RTOL * abs(ref["eval"]["loss"])
    assert ring["eval"]["logit_tokens"] == ref["eval"]["logit_tokens"] == 64


def test_conv_layers_refuse_packed_documents(results):
    ring = results["conv-lfm2-varlen-refused"][1]
    assert "Lfm2ShortConv" in (ring["error"] or "") and "strategy='zigzag'" in ring["error"], ring


@pytest.mark.parametrize("case", [c["id"] for c in CASES if c.get("negative")])
def test_negative_control_fails_the_same_check(results, case):
    """The conv layers without their halo; the recurrent layers without the state passed on."""
    from cpshim.ring.parity import compare

    verdict = compare(*results[case], loss_rtol=LOSS_RTOL, grad_rtol=GRAD_RTOL, floor=FLOOR)
    print(case, verdict)
    assert not verdict["ok"], f"{case} passed the parity check: {verdict}"


@pytest.mark.parametrize(("case", "cls"), [("deltanet-qwen3_5-varlen-refused", "Qwen3_5GatedDeltaNet"),
                                          ("mamba2-bamba-varlen-refused", "BambaMixer"),
                                          ("rg-lru-recurrent_gemma-varlen-refused", "RecurrentGemmaRecurrentBlock")])
def test_recurrent_layers_refuse_packed_documents(results, case, cls):
    if case not in results:
        pytest.skip("the recurrent mixers' patches need transformers >= 5.21 (RecurrentGemma's >= 5.23)")
    ring = results[case][1]
    assert cls in (ring["error"] or "") and "strategy='zigzag'" in ring["error"], ring
