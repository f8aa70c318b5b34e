"""state-is-fsdp2 on the real AcceleratorState (the __init__ path needs several GPUs: GPU issue)."""

from __future__ import annotations

import pytest

import cpshim
from tests.helpers import code_runs


def test_is_fsdp2_without_plugin(trainer, cp):
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    state = trainer.accelerator.state
    original = vars(AcceleratorState)["is_fsdp2"].fget
    saved = {k: state.__dict__[k] for k in ("distributed_type", "fsdp_plugin") if k in state.__dict__}
    state.distributed_type, state.fsdp_plugin = DistributedType.FSDP, None  # what the multi-GPU CP branch leaves
    try:
        # upstream: None.fsdp_version raises inside the property, surfacing as "no attribute is_fsdp2"
        with pytest.raises(AttributeError, match="is_fsdp2|fsdp_version"):
            state.is_fsdp2
        cpshim.apply()
        with code_runs(original) as ran:
            assert state.is_fsdp2 is False
        assert original not in ran
    finally:
        state.__dict__.pop("fsdp_plugin", None)
        state.__dict__.update(saved)
