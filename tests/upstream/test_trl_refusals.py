"""A TRL trainer ring mode does not make exact is refused by name, on its real batch (TRL installed only)."""

from __future__ import annotations

import copy
import importlib.util

import pytest

import cpshim

pytestmark = [pytest.mark.needs_cp,
              pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("trl", "datasets", "ring_flash_attn")),
                                 reason="needs trl, datasets and ring-flash-attn (the matrix's TRL cells)")]


def test_dpo_batch_is_refused_naming_the_trainer(upstream, tmp_path):
    """DPOTrainer's collated batch (input_ids, attention_mask, completion_mask: no labels) reaches the hook; a
    loss of per-sequence log-prob sums over each rank's shard would be silently wrong, so it is refused."""
    from accelerate import ParallelismConfig
    from datasets import Dataset
    from transformers import LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    from cpshim.ring import parity
    from tests.parity._eval_worker import _tokenizer

    model = LlamaForCausalLM(parity._config())
    rows = [{"prompt": "t3 t4 t5", "chosen": " t6 t7", "rejected": " t8 t9 t10"}] * 4
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[], use_cpu=True,
                     max_steps=1)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=_tokenizer())
    batch = next(iter(trainer.get_train_dataloader()))
    assert "labels" not in batch and "input_ids" in batch
    state = trainer.accelerator.state
    saved = state.parallelism_config
    state.parallelism_config = ParallelismConfig(cp_size=2)
    cpshim.enable()
    try:
        with pytest.raises(cpshim.CpshimRuntimeError, match="DPOTrainer sent a training batch without labels"):
            trainer._prepare_context_parallel_inputs(trainer.model, dict(batch))
    finally:
        state.parallelism_config = saved
        cpshim.revert()
