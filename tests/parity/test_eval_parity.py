"""Everything the Trainer reports and returns under ring CP equals one process running the same script.

train + evaluate + predict with compute_metrics and a callback that records every number it sees
(tests/parity/_eval_worker.py), CP=2 and cp=2 x dp=2 against one process: predictions and label_ids in
dataset order, the metrics compute_metrics returns (counts, sums and index-aligned checksums, which
duplicated, reordered or truncated rows change), eval loss on uneven sets, tokens seen, FLOPs, step
and epoch accounting, step rates, what on_log/on_evaluate/on_predict receive, and the best checkpoint.
The negative control (cpshim's gathers and counters off: upstream's over every process) must fail the
same check. Hypothesis draws dataset and batch sizes, drop_last and accumulation for one more launch.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cpshim
from tests.helpers import run_python, run_ranks

pytestmark = [pytest.mark.multiproc, pytest.mark.upstream, pytest.mark.needs_cp]
if any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "accelerate", "ring_flash_attn")):
    pytest.skip("needs torch, transformers, accelerate and ring-flash-attn", allow_module_level=True)

# Below transformers 5.3 ring mode refuses include_num_input_tokens_seen (tests/upstream/test_eval_counters.py)
COUNTS_TOKENS = cpshim.report()["trainer-tokens-seen"].state != "not-needed"
LOSS_RTOL = 1e-3   # as the training parity suite: bf16 attention through the same provider, another order
LOGIT_RTOL = 2e-2  # relative Frobenius error of all logits, as the training suite's gradient tolerance
EXACT = ("rows", "targets", "label_checksum", "input_checksum", "loss_entries")
_BASE = {"strategy": "zigzag", "train_rows": 4, "train_batch": 1, "steps": 2, "tokens_seen": "all",
         "include_for_metrics": ["inputs", "loss"]}
CASES = [
    {**_BASE, "id": "uneven-18-by-4", "eval_rows": 18, "eval_batch": 4},
    {**_BASE, "id": "drop-last-accumulate", "eval_rows": 18, "eval_batch": 4, "drop_last": True,
     "eval_accumulation_steps": 2, "tokens_seen": "non_padding", "concat_batches": False},
    {**_BASE, "id": "gather-object", "eval_rows": 18, "eval_batch": 4, "gather_object": True},
    {**_BASE, "id": "batch-eval-metrics", "eval_rows": 17, "eval_batch": 4, "batch_eval_metrics": True},
    {**_BASE, "id": "best-model-avg-off", "strategy": "contiguous", "eval_rows": 10, "eval_batch": 4, "steps": 3,
     "best_model": True, "average_tokens": False, "include_for_metrics": []},
    {**_BASE, "id": "negative-gather-everywhere", "eval_rows": 18, "eval_batch": 4, "negative": True},
]
# cp=2 x dp=2: one process gets each global batch (train and eval batch x dp). 16 rows: upstream's data
# parallelism pads an uneven last batch with rows from the start, which one process does not do.
CASES_4 = [{**_BASE, "id": "cp2xdp2", "train_rows": 8, "eval_rows": 16, "eval_batch": 2, "dp": 2}]


def _launch(cases, world, out):
    import torch

    cases = [c if COUNTS_TOKENS else {**c, "tokens_seen": False} for c in cases]  # False: 4.56 reads a bool
    code = (f"from tests.parity._eval_worker import main_worker; main_worker({json.dumps(cases)!r}, {out!r}, CP)")
    run_python(code.replace("CP", "1"), env={"OMP_NUM_THREADS": "1"}, timeout=900)
    run_ranks(code.replace("CP", "2"), world, timeout=900)
    return {c["id"]: (torch.load(os.path.join(out, f"ref-{i}.pt"), weights_only=False),
                      torch.load(os.path.join(out, f"ring-{i}.pt"), weights_only=False))
            for i, c in enumerate(cases)}


def _close(a, b, rtol):
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-6)


def _rates_agree(ref: dict, ring: dict, prefix: str) -> bool:
    """steps/s over samples/s is steps per sample: the runtimes differ, the counts behind the rates do not."""
    def ratio(m):
        return m[f"{prefix}_steps_per_second"] / m[f"{prefix}_samples_per_second"]

    return _close(ratio(ref), ratio(ring), 0.02)


def differences(ref: dict, ring: dict) -> list[str]:
    """Every number the ring run reported that one process did not (empty: parity)."""
    import numpy as np

    bad = []
    rp, gp = ref["predict"], ring["predict"]
    if rp["predictions"].shape != gp["predictions"].shape or not np.array_equal(rp["label_ids"], gp["label_ids"]):
        bad.append(f"predict(): predictions {gp['predictions'].shape} label_ids {gp['label_ids'].shape}, one "
                   f"process {rp['predictions'].shape} {rp['label_ids'].shape} (or label_ids out of order)")
    else:
        err = float(np.linalg.norm(gp["predictions"] - rp["predictions"]) / max(np.linalg.norm(rp["predictions"]),
                                                                                  1e-12))
        if err > LOGIT_RTOL:
            bad.append(f"predictions: relative error {err:.3g} > {LOGIT_RTOL}")
    for where in ("evaluate", "predict_metrics"):
        r, g = ref[where], ring[where]
        loss_key = next((k for k in r if k.endswith("_loss")), None)
        if loss_key and not _close(r[loss_key], g.get(loss_key, math.nan), LOSS_RTOL):
            bad.append(f"{where} {loss_key}: {g.get(loss_key)} vs {r[loss_key]}")
        for key in r:
            name = key.split("_", 1)[-1]
            if name in EXACT and r[key] != g.get(key):
                bad.append(f"{where} {key}: {g.get(key)} vs {r[key]}")
            elif name in ("correct", "logit_sum", "loss_sum") and not _close(r[key], g.get(key, math.nan), 2e-2):
                bad.append(f"{where} {key}: {g.get(key)} vs {r[key]}")
        prefix = loss_key.rsplit("_", 1)[0] if loss_key else ("eval" if where == "evaluate" else "test")
        if f"{prefix}_steps_per_second" in r and not _rates_agree(r, g, prefix):
            rates = [f"{m[f'{prefix}_steps_per_second']}/{m[f'{prefix}_samples_per_second']}" for m in (g, r)]
            bad.append(f"{where} steps per sample: {rates[0]} vs {rates[1]}")
    if len(ref["metrics_seen"]) != len(ring["metrics_seen"]):
        bad.append(f"compute_metrics called {len(ring['metrics_seen'])} times, one process {len(ref['metrics_seen'])}")
    for key in ("global_step", "epoch", "tokens_seen", "total_flos", "best_checkpoint"):
        if ref["state"][key] != ring["state"][key]:
            bad.append(f"state.{key}: {ring['state'][key]} vs {ref['state'][key]}")
    if ref["state"]["best_metric"] is not None and not _close(ref["state"]["best_metric"],
                                                               ring["state"]["best_metric"], LOSS_RTOL):
        bad.append(f"state.best_metric: {ring['state']['best_metric']} vs {ref['state']['best_metric']}")
    if not _rates_agree(ref["train_metrics"], ring["train_metrics"], "train"):
        bad.append("train steps per sample differ")
    bad += _event_differences(ref["events"], ring["events"])
    return bad


def _event_differences(ref: list, ring: list) -> list[str]:
    if [(e["event"], e.get("global_step")) for e in ref] != [(e["event"], e.get("global_step")) for e in ring]:
        return ["callbacks saw another sequence of events"]
    bad = []
    for r, g in zip(ref, ring):
        for key in ("epoch", "tokens_seen", "total_flos"):
            if r.get(key) != g.get(key):
                bad.append(f"{r['event']}@{r.get('global_step')}: state.{key} {g.get(key)} vs {r.get(key)}")
        values_r, values_g = r.get("logs") or r.get("metrics") or {}, g.get("logs") or g.get("metrics") or {}
        for key, value in values_r.items():
            if key.endswith(("runtime", "per_second")) or not isinstance(value, (int, float)):
                continue
            name = key.split("_", 1)[-1]
            exact = name in EXACT or key in ("epoch", "num_input_tokens_seen", "step", "total_flos")
            loose = name in ("correct", "logit_sum", "loss_sum") or key == "grad_norm"
            ok = value == values_g.get(key) if exact else _close(value, values_g.get(key, math.nan),
                                                                 2e-2 if loose else LOSS_RTOL)
            if not ok:
                bad.append(f"{r['event']}@{r.get('global_step')} {key}: {values_g.get(key)} vs {value}")
    return bad


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _launch(CASES, 2, str(tmp_path_factory.mktemp("evalparity")))


@pytest.mark.parametrize("case", [c["id"] for c in CASES if not c.get("negative")])
def test_everything_reported_equals_one_process(results, case):
    bad = differences(*results[case])
    assert not bad, "\n".join(bad)


def test_negative_control_fails_the_same_check(results):
    bad = differences(*results["negative-gather-everywhere"])
    print("negative control:", bad)
    assert any("predict()" in b for b in bad), bad
    assert any("total_flos" in b for b in bad), bad
    assert any("tokens_seen" in b for b in bad) or not COUNTS_TOKENS, bad


def test_predict_returns_one_row_per_sample_in_dataset_order(results):
    ref, ring = results["uneven-18-by-4"]
    assert ring["predict"]["label_ids"].shape[0] == 18
    assert (ring["predict"]["label_ids"] == ref["predict"]["label_ids"]).all()


def test_cp2_dp2_everything_reported_equals_one_process(tmp_path):
    bad = differences(*_launch(CASES_4, 4, str(tmp_path))["cp2xdp2"])
    assert not bad, "\n".join(bad)


_draw = st.fixed_dictionaries({
    "eval_rows": st.integers(5, 21), "eval_batch": st.integers(1, 5), "drop_last": st.booleans(),
    "eval_accumulation_steps": st.one_of(st.none(), st.integers(1, 3)), "batch_eval_metrics": st.booleans(),
    "concat_batches": st.booleans(),
    "strategy": st.sampled_from(["zigzag", "contiguous"]),
})


@settings(max_examples=1, derandomize=False)
@given(st.lists(_draw, min_size=3, max_size=3))
def test_drawn_sizes_equal_one_process(tmp_path_factory, drawn):
    """One launch (one process, then cp=2) over three drawn configurations."""
    cases = [{**_BASE, "steps": 1, "train_rows": 1, "id": f"drawn-{i}", **d} for i, d in enumerate(drawn)]
    got = _launch(cases, 2, str(tmp_path_factory.mktemp("drawn")))
    for case in cases:
        bad = differences(*got[case["id"]])
        assert not bad, f"{case}:\n" + "\n".join(bad)


def _trl_release() -> tuple[int, ...] | None:
    import importlib.metadata

    try:
        return tuple(int(p) for p in importlib.metadata.version("trl").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.mark.skipif(_trl_release() is None, reason="needs trl (the matrix's TRL cells install it)")
@pytest.mark.skipif((_trl_release() or (99,)) < (1, 16),
                    reason="TRL < 1.16 hands compute_metrics no logits (1-D predictions), in one process too: this "
                           "test's metrics need them (packing parity on that TRL: tests/parity/test_trl_parity.py)")
def test_trl_sft_evaluate_and_predict_equal_one_process(tmp_path):
    """TRL's SFTTrainer: its own prediction_step (unsharded eval on every CP rank), its compute_loss metrics
    (entropy, token accuracy, gathered with gather_for_metrics) and its token count (num_tokens, from the
    sharded attention_mask) on rows of different lengths that its collator pads."""
    case = {**_BASE, "id": "sft", "sft": True, "ragged": True, "train_batch": 2, "eval_rows": 18, "eval_batch": 4}
    bad = differences(*_launch([case], 2, str(tmp_path))["sft"])
    assert not bad, "\n".join(bad)
