"""Model families under ring CP with a real Trainer on 2 gloo ranks equal one process, one per feature
(all in one launch: each process pays the Trainer import once).

- Sliding windows: Qwen2 and Gemma 3 (layer_types: sliding and full layers, the window per layer) and Mistral
  (every layer sliding), on every strategy; windows shorter than a zigzag chunk, not dividing it, and longer
  than a shard; packed documents shorter than the window. The one process attends through transformers' own
  4-D masks (`parity_models`), not the window ring mode reads.
- MLA: DeepSeek-V3 (q/k head dim 24, v head dim 8; llama3's varlen gather takes one buffer shape, so v is
  zero-padded to 24 there and the output cut back).
- Softcap: Gemma 2 (softcap 1 on scores near 1), eager attention. Sinks: gpt-oss (sinks ~ N(2, 1), sliding and
  full layers, experts), eager attention.
- Vision-language, an image in every row (`parity_vlm`): Qwen2-VL, Qwen2.5-VL (window attention in the tower,
  `accepts_loss_kwargs = False`), Qwen3-VL (deepstack features, transformers >= 4.57), LLaVA (CLIP tower and
  projector, a Llama decoder that gets no positions from the model), InternVL (pixel shuffle, a Qwen2 decoder).
  Every tensor is compared, the towers' too.

Same check and tolerances as the full-attention parity (`test_ring_parity`). The negative controls (sliding
layers without their halo, the ring without the layer's softcap, without its sinks, the decoder counting its
own positions per shard) must fail it.
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

SEQ = {"batch": 1, "seq_len": 64, "steps": 2}
CASES = [  # 64 tokens, cp=2: a zigzag chunk is 16 tokens, a shard 32
    {"id": "qwen2-zigzag-w8", "model": "qwen2", "window": 8, "strategy": "zigzag", **SEQ},
    {"id": "qwen2-contiguous-b2-w40", "model": "qwen2", "window": 40, "strategy": "contiguous", **SEQ, "batch": 2},
    # documents of 17 and 47 tokens per row, the first shorter than the window
    {"id": "qwen2-varlen-packed-w20", "model": "qwen2", "window": 20, "strategy": "varlen", **SEQ, "batch": 2,
     "packed": True},
    {"id": "mistral-zigzag-b2-w11", "model": "mistral", "window": 11, "strategy": "zigzag", **SEQ, "batch": 2},
    {"id": "gemma3-zigzag-w8", "model": "gemma3", "window": 8, "strategy": "zigzag", **SEQ},
    # its one process with fp32 attention: the bf16 reference is judged against it first (conditioning)
    {"id": "gemma3-zigzag-w8-fp32", "model": "gemma3", "window": 8, "strategy": "zigzag", **SEQ,
     "reference_dtype": "float32"},
    {"id": "mla-deepseek_v3-zigzag-b2", "model": "deepseek_v3", "strategy": "zigzag", **SEQ, "batch": 2},
    {"id": "mla-deepseek_v3-varlen-packed", "model": "deepseek_v3", "strategy": "varlen", **SEQ, "batch": 2,
     "packed": True},
    # eager attention (routed during sharded steps): Gemma 2's softcap, gpt-oss's sinks (with its experts)
    {"id": "softcap-gemma2-zigzag-w8", "model": "gemma2", "window": 8, "strategy": "zigzag", **SEQ},
    {"id": "softcap-gemma2-varlen-packed-w20", "model": "gemma2", "window": 20, "strategy": "varlen", **SEQ,
     "batch": 2, "packed": True},
    {"id": "sinks-gpt_oss-contiguous-b2-w20", "model": "gpt_oss", "window": 20, "strategy": "contiguous", **SEQ,
     "batch": 2},
    {"id": "sinks-gpt_oss-varlen-packed-w8", "model": "gpt_oss", "window": 8, "strategy": "varlen", **SEQ,
     "batch": 2, "packed": True},
    # vision-language: the tower unsharded, the decoder sharded at its entry (mrope positions from the whole row)
    {"id": "vlm-qwen2_vl-zigzag-b2", "model": "qwen2_vl", "strategy": "zigzag", **SEQ, "batch": 2},
    {"id": "vlm-qwen2_5_vl-contiguous-b2", "model": "qwen2_5_vl", "strategy": "contiguous", **SEQ, "batch": 2,
     "eval": True},
    *([{"id": "vlm-qwen3_vl-zigzag-b2", "model": "qwen3_vl", "strategy": "zigzag", **SEQ, "batch": 2}]
      if importlib.util.find_spec("transformers.models.qwen3_vl") else []),  # transformers >= 4.57
    # CLIP's k_proj biases get no gradient (a key bias shifts a query's scores by a constant: 4e-11 measured), so
    # LLaVA's tensors are judged with the architecture table's floor (1e-3 of the largest tensor's update)
    {"id": "vlm-llava-zigzag-b2", "model": "llava", "strategy": "zigzag", **SEQ, "batch": 2, "floor": 1e-3},
    {"id": "vlm-llava-contiguous", "model": "llava", "strategy": "contiguous", **SEQ, "floor": 1e-3},
    {"id": "vlm-internvl-zigzag-b2", "model": "internvl", "strategy": "zigzag", **SEQ, "batch": 2},
    {"id": "negative-no-halo", "model": "qwen2", "window": 8, "strategy": "zigzag", **SEQ, "negative": "no-halo"},
    {"id": "negative-no-softcap", "model": "gemma2", "window": 8, "strategy": "zigzag", **SEQ,
     "negative": "no-softcap"},
    {"id": "negative-positions-per-shard", "model": "qwen2_vl", "strategy": "zigzag", **SEQ, "batch": 2,
     "negative": "positions-per-shard"},
    {"id": "negative-llava-positions-per-shard", "model": "llava", "strategy": "zigzag", **SEQ, "batch": 2,
     "negative": "positions-per-shard", "floor": 1e-3},
    {"id": "negative-internvl-positions-per-shard", "model": "internvl", "strategy": "zigzag", **SEQ, "batch": 2,
     "negative": "positions-per-shard"},
    {"id": "negative-no-sinks", "model": "gpt_oss", "window": 20, "strategy": "contiguous", **SEQ, "batch": 2,
     "negative": "no-sinks"},
]
NEGATIVES = [c["id"] for c in CASES if c.get("negative")]
JUDGED = [c["id"] for c in CASES if not c.get("negative") and "reference_dtype" not in c]
FLOORS = {c["id"]: c["floor"] for c in CASES if "floor" in c}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_parity_pair("cpshim.ring.parity", CASES, str(tmp_path_factory.mktemp("architectures")))


@pytest.mark.parametrize("case", JUDGED)
def test_model_matches_one_process(results, case):
    from cpshim.ring.parity import compare

    if f"{case}-fp32" in results:
        # Gemma 3's tiny model on transformers 4.56 is ill-conditioned in bf16: its one-process bf16 run is
        # itself 6.4e-2 off the fp32 one (measured; 9.6e-3 on 5.24), so a 2e-2 check cannot judge the ring.
        truth, bf16 = results[f"{case}-fp32"][0], results[case][0]
        conditioning = compare(truth, bf16, loss_rtol=LOSS_RTOL, grad_rtol=GRAD_RTOL)
        if not conditioning["ok"]:
            pytest.skip(f"{case}: the bf16 one-process run is {conditioning['grad_rel_err_max']:.1e} off its fp32 "
                        "attention run, more than the check's tolerance: not judgeable at these tolerances")
    verdict = compare(*results[case], loss_rtol=LOSS_RTOL, grad_rtol=GRAD_RTOL, floor=FLOORS.get(case, 0.0))
    print(case, verdict)
    assert verdict["ok"], verdict


def test_vision_language_eval_matches_one_process(results):
    """`evaluate()` on image batches: the loss, and next-token accuracy from the full-length logits."""
    ref, ring = (r["eval"] for r in results["vlm-qwen2_5_vl-contiguous-b2"])
    print("eval", ref, ring)
    assert abs(ring["loss"] - ref["loss"]) <= LOSS_RTOL * abs(ref["loss"])
    assert ring["logit_tokens"] == ref["logit_tokens"] == SEQ["seq_len"] and ring["accuracy"] == ref["accuracy"]


@pytest.mark.parametrize("case", NEGATIVES)
def test_negative_control_fails_the_same_check(results, case):
    """The sliding layers without their halo, the ring without the layer's softcap, or without its sinks."""
    from cpshim.ring.parity import compare

    verdict = compare(*results[case], loss_rtol=LOSS_RTOL, grad_rtol=GRAD_RTOL, floor=FLOORS.get(case, 0.0))
    print(case, verdict)
    assert not verdict["ok"], f"{case} passed the parity check: {verdict}"
