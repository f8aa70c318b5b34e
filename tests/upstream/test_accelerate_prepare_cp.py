"""accelerate-prepare-cp against the real Accelerator of the installed accelerate."""

from __future__ import annotations

import warnings

import pytest
from packaging.version import Version

import cpshim
from tests.helpers import code_runs
from tests.upstream.conftest import tiny_config

ACCELERATE = Version(Version(cpshim.report().versions["accelerate"]).base_version)


def _attn_hooks(model):
    return sum(len(m._forward_pre_hooks) for n, m in model.named_modules() if n.endswith("self_attn"))


def test_cp_on_prepares_nothing(trainer, upstream, cp):
    import torch

    acc, model = trainer.accelerator, trainer.model
    if ACCELERATE == Version("1.12.0"):
        # 1.12.0 returns before creating _cp_context (accelerate #3856): upstream fails later.
        acc._prepare_cp(model)
        with pytest.raises(AttributeError, match="_cp_context"):
            with acc.maybe_context_parallel(buffers=[torch.zeros(1, 4)], buffer_seq_dims=[1], no_restore_buffers=set()):
                pass
    else:
        with pytest.raises(Exception):  # torch's native CP needs a device mesh: fails on this CPU process
            acc._prepare_cp(model)
    cpshim.apply()
    buf = torch.arange(8).reshape(1, 8)
    with code_runs(upstream["prepare_cp"]) as ran:
        out = acc._prepare_cp(model)
    assert upstream["prepare_cp"] not in ran and out == (model,) and out[0] is model
    assert _attn_hooks(model) == 0, "self_attn hooks attached"
    with acc.maybe_context_parallel(buffers=[buf], buffer_seq_dims=[1], no_restore_buffers={buf}):
        assert buf.shape == (1, 8)
    assert buf.tolist() == [list(range(8))]


def test_prepare_call_goes_through_the_patch(trainer, upstream, cp):
    import torch

    cpshim.apply()
    layer = torch.nn.Linear(2, 2)
    prepared = trainer.accelerator.prepare(layer)
    assert isinstance(prepared, torch.nn.Module)
    assert callable(trainer.accelerator._cp_context)


@pytest.mark.parametrize("case", ["cp-off", "native"])
def test_passthrough_reaches_upstream(trainer, upstream, cp, case):
    acc = trainer.accelerator
    if case == "cp-off":
        acc.state.parallelism_config = None
    cpshim.apply()
    if case == "native":
        cpshim.set_mode(acc, "native")
    if case == "native" and ACCELERATE == Version("1.12.0"):
        # upstream 1.12.0 returns at once without creating _cp_context (accelerate #3856)
        with code_runs(upstream["prepare_cp"]) as ran:
            assert acc._prepare_cp(trainer.model) == (trainer.model,)
        assert "_cp_context" not in vars(acc)
    else:
        with code_runs(upstream["prepare_cp"]) as ran, pytest.raises(Exception):
            acc._prepare_cp(trainer.model)
    assert upstream["prepare_cp"] in ran


def test_sliding_window_model_is_reported_in_external_mode(trainer, upstream, cp):
    from transformers import MistralConfig, MistralForCausalLM

    model = MistralForCausalLM(MistralConfig(**{k: getattr(tiny_config(), k) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads")}, sliding_window=8))
    # upstream's own refusal (on CPU _prepare_cp fails before reaching it): 1.15 reads the config ("... does not
    # support attention layers ..."); 1.16 asks the model's `supports_context_parallel`, which transformers has from
    # 5.17 only, so 1.16 with an older transformers lets a sliding-window model through (cpshim's warning stays)
    refuses = ACCELERATE < Version("1.16.0") or hasattr(model, "supports_context_parallel")
    if ACCELERATE >= Version("1.15.0") and refuses:
        from accelerate.big_modeling import _attach_context_parallel_hooks

        with pytest.raises(ValueError, match="does not support (attention layers|context parallelism)"):
            _attach_context_parallel_hooks(model)
    cpshim.apply()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.accelerator._prepare_cp(model)
    assert any("sliding_attention" in str(w.message) for w in caught if issubclass(w.category, cpshim.CpshimWarning))
    assert any(n["kind"] == "non-full-attention" for n in cpshim.report().notices)
