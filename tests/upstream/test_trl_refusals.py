"""A TRL trainer ring mode does not make exact is refused by name, on its real batch (TRL installed only)."""

from __future__ import annotations

import copy
import importlib.util

import pytest

import cpshim

_NEEDS = ("trl", "datasets", "ring_flash_attn")
pytestmark = [pytest.mark.needs_cp,
              pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in _NEEDS),
                                 reason="needs trl, datasets and ring-flash-attn (the matrix's TRL cells)")]


def _refusal(trainer, match):
    """Give the trainer a CP config and run its real first batch through the hook in ring mode."""
    from accelerate import ParallelismConfig

    batch = next(iter(trainer.get_train_dataloader()))
    assert "labels" not in batch and "input_ids" in batch  # a label-less batch: the backbone path
    state = trainer.accelerator.state
    saved = state.parallelism_config
    state.parallelism_config = ParallelismConfig(cp_size=2)
    try:
        with pytest.raises(cpshim.CpshimRuntimeError, match=match):
            trainer._prepare_context_parallel_inputs(trainer.model, dict(batch))
    finally:
        state.parallelism_config = saved


def _args(cls, tmp_path, **extra):
    return cls(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[], use_cpu=True, max_steps=1,
               **extra)


def test_reference_logps_precomputed_before_enable_are_refused(upstream, tmp_path):
    """DPO precomputes its reference log-probs when it is built: built before `cpshim.enable()`, they were
    gathered once per process (per CP rank), so the step refuses, naming the fix."""
    import trl
    from transformers import LlamaForCausalLM

    from cpshim.ring import parity
    from tests.parity._pref_worker import _dataset, rows, tokenizer

    model = LlamaForCausalLM(parity._config())
    trainer = trl.DPOTrainer(model=model, ref_model=copy.deepcopy(model),  # an on-disk dataset: TRL caches beside it
                             args=_args(trl.DPOConfig, tmp_path, precompute_ref_log_probs=True),
                             train_dataset=_dataset(rows("dpo", 4, 1), str(tmp_path), "train"),
                             processing_class=tokenizer())
    cpshim.enable()
    try:
        _refusal(trainer, "DPOTrainer precomputed its reference log-probs outside cpshim's scope")
    finally:
        cpshim.revert()
