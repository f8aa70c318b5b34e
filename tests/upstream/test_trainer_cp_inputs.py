"""trainer-cp-inputs against the real Trainer of the installed transformers.

Each test first shows upstream failing in the same call, then the patched behaviour; whether
upstream's own function ran is observed with a profiler, never by replacing it.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import pytest
from packaging.version import Version

import cpshim
from tests.helpers import code_runs

SDPA_GUARD = "Context parallelism is supported only with SDPA attention"


def _installed(dist):
    return Version(Version(cpshim.report().versions[dist]).base_version)


T5 = _installed("transformers") >= Version("5")


def _shift(labels):
    import torch

    return torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]


def test_cp_on_flash_attention(trainer, upstream, cp, batch):
    model = trainer.model
    with pytest.raises(ValueError, match=SDPA_GUARD):
        trainer._prepare_context_parallel_inputs(model, dict(batch))
    original = upstream["cp_inputs"]
    cpshim.apply()
    with code_runs(original) as ran:
        ctx, out = trainer._prepare_context_parallel_inputs(model, dict(batch))
    assert ctx is contextlib.nullcontext
    with ctx():
        pass
    assert model.config._attn_implementation == "flash_attention_2", "user config mutated"
    assert out["input_ids"].shape == batch["input_ids"].shape, "inputs were sharded"
    if T5:  # 5.x no-op: upstream not reached, nothing added
        assert original not in ran and sorted(out) == ["input_ids", "labels"]
    else:   # 4.x guard-relax: upstream ran (without its guard) and added full-length keys
        assert original in ran and sorted(out) == ["input_ids", "labels", "position_ids", "shift_labels"]
        assert out["position_ids"].tolist() == [list(range(16))] * 2
        assert out["shift_labels"].equal(_shift(batch["labels"]))
    record = cpshim.report()["trainer-cp-inputs"]
    assert record.state == "applied" and record.info["adds_keys"] == ([] if T5 else ["position_ids", "shift_labels"])


def test_full_length_keys_switch_gives_the_4x_contract(trainer, upstream, cp, batch):
    cpshim.apply(full_length_keys=True)
    _, out = trainer._prepare_context_parallel_inputs(trainer.model, dict(batch))
    assert sorted(out) == ["input_ids", "labels", "position_ids", "shift_labels"]
    assert out["shift_labels"].equal(_shift(batch["labels"]))


def test_non_causal_mask_still_refused(trainer, upstream, cp, batch):
    import torch

    cpshim.apply(full_length_keys=True)
    mask = torch.ones(2, 1, 16, 16)  # 4-D all-ones: every token sees the future
    trainer.__dict__.pop("_attn_mask_causal_checked", None)
    with pytest.raises(ValueError, match="only supports causal attention masks"):
        trainer._prepare_context_parallel_inputs(trainer.model, {**batch, "attention_mask": mask})
    trainer.__dict__.pop("_attn_mask_causal_checked", None)


def test_deepspeed_engine_dict_config(trainer, upstream, cp, batch):
    """A DeepSpeed engine's `.config` is its DS config dict (axolotl #3204)."""
    import torch

    class Engine(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module
            self.config = {"train_micro_batch_size_per_gpu": 1}

    engine = Engine(trainer.model)
    if not T5:
        with pytest.raises(AttributeError):
            trainer._prepare_context_parallel_inputs(engine, dict(batch))
    cpshim.apply(full_length_keys=True)
    ctx, out = trainer._prepare_context_parallel_inputs(engine, dict(batch))
    assert ctx is contextlib.nullcontext and "shift_labels" in out


@pytest.mark.parametrize("cp_size", [None, 1])
def test_cp_off_reaches_upstream(trainer, upstream, cp, batch, cp_size):
    from accelerate import ParallelismConfig

    trainer.accelerator.state.parallelism_config = None if cp_size is None else ParallelismConfig(cp_size=cp_size)
    cpshim.apply()
    original = upstream["cp_inputs"]
    with code_runs(original) as ran:
        ctx, out = trainer._prepare_context_parallel_inputs(trainer.model, dict(batch))
    assert original in ran and ctx is contextlib.nullcontext and sorted(out) == ["input_ids", "labels"]


def test_deepspeed_sp_on_reaches_upstream(trainer, upstream, cp, batch):
    if not hasattr(cp, "sp_size"):
        pytest.skip("accelerate < 1.12 has no DeepSpeed sequence parallelism")
    cp.sp_size = 2  # CP and Ulysses SP together: upstream's (DeepSpeed's) path owns the sequence
    assert cp.sp_enabled
    cpshim.apply()
    original = upstream["cp_inputs"]
    with code_runs(original) as ran, pytest.raises(ValueError, match=SDPA_GUARD):
        trainer._prepare_context_parallel_inputs(trainer.model, dict(batch))
    assert original in ran


def test_native_mode_reaches_upstream(trainer, upstream, cp, batch):
    cpshim.apply()
    cpshim.set_mode(trainer, "native")
    original = upstream["cp_inputs"]
    with code_runs(original) as ran, pytest.raises(ValueError, match=SDPA_GUARD):
        trainer._prepare_context_parallel_inputs(trainer.model, dict(batch))
    assert original in ran
    cpshim.set_mode(trainer, "external")  # modes change state, never re-patch
    ctx, _ = trainer._prepare_context_parallel_inputs(trainer.model, dict(batch))
    assert ctx is contextlib.nullcontext


def test_set_mode_alone_installs_without_changing_process_mode(trainer, upstream, cp, batch):
    cpshim.set_mode(trainer, "external")
    assert cpshim.report().mode == "native"
    ctx, _ = trainer._prepare_context_parallel_inputs(trainer.model, dict(batch))
    assert ctx is contextlib.nullcontext


def test_unknown_mode_and_policy_are_clear_errors(trainer):
    with pytest.raises(cpshim.ConfigurationError, match="unknown cpshim mode 'ringg'"):
        cpshim.set_mode(trainer, "ringg")
    with pytest.raises(cpshim.ConfigurationError, match="unknown cpshim policy"):
        cpshim.apply(policy="loud")


def test_bad_env_policy_is_recorded(trainer, upstream, cp, monkeypatch):
    monkeypatch.setenv("CPSHIM_POLICY", "loud")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        rep = cpshim.apply()
    assert rep.policy == "warn" and any(n["kind"] == "bad-policy" for n in rep.notices)


@pytest.mark.skipif(_installed("transformers") < Version("5.16"), reason="prediction_step calls the hook from 5.16")
def test_evaluate_with_cp_goes_through_the_patched_hook(trainer, upstream, cp):
    import torch

    from cpshim.patches import trainer_cp_inputs

    trainer.model.config._attn_implementation = "sdpa"
    g = torch.Generator().manual_seed(3)
    data = [{"input_ids": (ids := torch.randint(0, 64, (16,), generator=g)), "labels": ids.clone()} for _ in range(2)]
    state = trainer.accelerator.state
    state.parallelism_config, pc = None, state.parallelism_config
    expected = trainer.evaluate(data)["eval_loss"]  # CP off: the plain evaluation
    state.parallelism_config = pc
    with pytest.raises(Exception):  # upstream: torch's native CP cannot prepare on this CPU process
        trainer.evaluate(data)
    cpshim.apply()
    with code_runs(upstream["cp_inputs"], trainer_cp_inputs.no_op) as ran:
        got = trainer.evaluate(data)["eval_loss"]
    assert trainer_cp_inputs.no_op in ran and upstream["cp_inputs"] not in ran
    # Upstream divides the eval target count by cp (each rank of a sharding trainer holds 1/cp of the
    # targets); this one process holds them all, so its loss is larger than the plain one by about cp
    # (exactly cp on 5.23+, where the division is true division; 5.16-5.22 floor-divide).
    assert math.isfinite(got) and got >= expected * pc.cp_size * (1 - 1e-6)
