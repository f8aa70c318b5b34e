"""A real Trainer and Accelerator (tiny Llama from a config, no hub) shared by one process."""

from __future__ import annotations

import importlib.util

import pytest

if any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "accelerate")):
    pytest.skip("needs torch, transformers and accelerate (pip install -e '.[hf,test]')", allow_module_level=True)


def tiny_config(**overrides):
    from transformers import LlamaConfig

    fields = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
    fields.update(overrides)
    return LlamaConfig(**fields)


@pytest.fixture(scope="session")
def upstream():
    """Upstream's own functions, captured before any test applies cpshim."""
    from accelerate import Accelerator
    from transformers import Trainer

    from cpshim.patching import is_wrapper

    found = {"cp_inputs": vars(Trainer)["_prepare_context_parallel_inputs"],
             "prepare_cp": vars(Accelerator)["_prepare_cp"]}
    assert not any(is_wrapper(f) for f in found.values()), "cpshim applied before the tests captured upstream"
    return found


@pytest.fixture(scope="session")
def trainer(upstream, tmp_path_factory):
    import torch
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config())
    args = TrainingArguments(output_dir=str(tmp_path_factory.mktemp("out")), per_device_train_batch_size=1,
                             per_device_eval_batch_size=1, report_to=[], use_cpu=True, save_strategy="no")
    return Trainer(model=model, args=args)


@pytest.fixture
def cp(trainer):
    """Turn CP on (cp_size=2) on the real AcceleratorState; restore and revert cpshim afterwards."""
    import cpshim
    from accelerate import ParallelismConfig

    state = trainer.accelerator.state
    saved = state.parallelism_config
    trainer.model.config._attn_implementation = "flash_attention_2"
    state.parallelism_config = ParallelismConfig(cp_size=2)
    yield state.parallelism_config
    state.parallelism_config = saved
    trainer.model.config._attn_implementation = "sdpa"
    cpshim.revert()
    cpshim.lifecycle._settings["full_length_keys"] = False
    for obj in (trainer, trainer.accelerator):
        cpshim.modes._overrides.pop(obj, None)
    trainer.accelerator.__dict__.pop("_cp_context", None)


@pytest.fixture
def batch():
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (2, 16), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}
