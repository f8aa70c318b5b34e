"""Tripwires on a real tiny Llama: each must fire on the condition it names and stay quiet otherwise."""

from __future__ import annotations

import pytest

from cpshim.ring.step import Step
from cpshim.ring.tripwires import TripwireError, arm, check_all_ran, check_local_length, watch


def _step(model, local_len=8):
    return Step(cp=2, rank=0, group=None, strategy="zigzag", local_len=local_len, global_len=16, padding=0,
                heads_k_stride=1, ring_dtype="bfloat16", model=model)


def test_every_attention_module_must_run_the_ring(trainer):
    step = _step(trainer.model)
    assert sorted(step.expected) == ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    step.ran.add(id(step.expected["model.layers.0.self_attn"]))
    with pytest.raises(TripwireError, match="model.layers.1.self_attn"):
        check_all_ran(step)
    step.ran.add(id(step.expected["model.layers.1.self_attn"]))
    check_all_ran(step)


def test_double_sharding_is_caught():
    check_local_length(_step_stub(8), 8, "m")
    with pytest.raises(TripwireError, match="1/cp\\^2"):
        check_local_length(_step_stub(8), 4, "m")


def _step_stub(local_len):
    class Empty:
        def named_modules(self):
            return iter(())

    return _step(Empty(), local_len)


@pytest.mark.needs_cp
def test_unsharded_training_forward_is_caught(cp):
    """An armed model (it trained in ring mode) may not run a training forward outside a sharded step; a
    forward under no_grad (generation, eval) or in eval mode may, and so may any forward once reverted."""
    import torch
    from transformers import LlamaForCausalLM

    import cpshim

    from .conftest import tiny_config

    cpshim.enable()
    model = LlamaForCausalLM(tiny_config())
    ids = torch.zeros(1, 4, dtype=torch.long)
    model.train()
    model(input_ids=ids)  # never trained in ring mode
    arm(model)
    arm(model)  # idempotent: one hook
    assert len(model._forward_pre_hooks) == 1
    with pytest.raises(TripwireError, match="unsharded batch"):
        model(input_ids=ids)
    with torch.no_grad():
        model(input_ids=ids)
    model.eval()
    model(input_ids=ids)
    model.train()
    cpshim.revert()
    model(input_ids=ids)


def _tiny(model_type):
    from cpshim.ring.shrink import build, shrink

    return build(shrink(model_type))


def _run_watched(model):
    import torch

    step = _step(model)
    handles = watch(step)
    try:
        model(input_ids=torch.arange(3, 19).reshape(1, 16))
    finally:
        for h in handles:
            h.remove()
    return step


def test_attention_that_never_asks_the_registry_is_caught():
    """GPT-1 computes attention inline in `transformer.h.N.attn` (no registry, not named self_attn): a module
    named like attention that ran with nothing routed at, under or above it attended only to its shard."""
    step = _run_watched(_tiny("openai-gpt"))
    assert not step.expected and step.called
    with pytest.raises(TripwireError, match=r"transformer\.h\.0\.attn"):
        check_all_ran(step)


def test_a_wrapper_around_routed_attention_passes():
    """BERT's `attention` wraps `attention.self`, the module the registry's function receives: once that one is
    routed (what ring_forward records), the wrapper that ran around it is satisfied; hooks are gone after."""
    model = _tiny("bert")
    step = _run_watched(model)
    names = dict(model.named_modules())
    for layer in range(model.config.num_hidden_layers):
        step.ran.add(id(names[f"bert.encoder.layer.{layer}.attention.self"]))
    check_all_ran(step)
    step.ran.discard(id(names["bert.encoder.layer.0.attention.self"]))
    with pytest.raises(TripwireError, match=r"bert\.encoder\.layer\.0\.attention"):
        check_all_ran(step)
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_a_vision_language_model_expects_the_ring_in_its_text_decoder_only():
    """Gemma 3's vision tower has `self_attn` modules too; on a text-only batch they never run, on an image batch
    they attend over whole images (upstream's): only the text decoder's must run the ring."""
    model = _tiny("gemma3").eval()  # 5.0-5.3 require token_type_ids in a training forward of Gemma 3
    assert any(n.endswith("self_attn") and "vision_tower" in n for n, _ in model.named_modules())
    step = _run_watched(model)
    decoder = [m for n, m in model.get_decoder().named_modules() if n.endswith("self_attn")]
    assert sorted(map(id, step.expected.values())) == sorted(map(id, decoder))
    step.ran.update(map(id, decoder))
    check_all_ran(step)
    step.ran.discard(id(decoder[0]))
    with pytest.raises(TripwireError, match="layers.0.self_attn"):
        check_all_ran(step)


@pytest.mark.parametrize("model_type, says", [
    ("bart", "takes no position_ids"),
    ("roberta", "padding_idx + 1"),
    ("llama", None),
    ("gpt2", None),
])
def test_models_that_number_positions_themselves_are_refused(model_type, says):
    from cpshim.ring import positions

    found = positions.problems(_tiny(model_type))
    assert (found == []) if says is None else (says in found[0])


def test_a_peft_wrapper_is_judged_by_the_model_it_wraps():
    peft = pytest.importorskip("peft")
    from cpshim.ring import positions

    wrapped = peft.get_peft_model(_tiny("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert positions.problems(wrapped) == []


def test_a_forward_replaced_on_the_instance_is_read_from_the_class():
    """TRL and accelerate replace `model.forward` with (*args, **kwargs) wrappers: the class's forward decides."""
    from cpshim.ring import positions

    model = _tiny("llama")
    original = model.forward
    model.forward = lambda *args, **kwargs: original(*args, **kwargs)
    assert positions.problems(model) == []
