"""Tripwires on a real tiny Llama: each must fire on the condition it names and stay quiet otherwise."""

from __future__ import annotations

import pytest

from cpshim.ring.step import Step
from cpshim.ring.tripwires import TripwireError, check_all_ran, check_local_length, check_unsharded


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


def test_unsharded_training_forward_is_caught(trainer):
    attn = trainer.model.model.layers[0].self_attn
    armed = {attn}
    attn.train()
    with pytest.raises(TripwireError, match="unsharded batch"):
        check_unsharded(attn, armed)
    attn.eval()
    check_unsharded(attn, armed)  # eval forwards may run unsharded (before 5.16 they always do)
    attn.train()
    check_unsharded(attn, set())  # a model that never trained in ring mode
