"""LFM2's conv layers under CP (`cpshim.ring.short_conv`): for any length, cp, strategy, kernel and batch, each
rank's shard through the patch, its halo filled exactly as the plan's sends fill it, equals the rows of upstream's
forward over the whole sequence (hypothesis; the real `Lfm2ShortConv`, float64, no processes). The halo exchange
over gloo and the Trainer end to end: `tests/architectures/test_architecture_parity.py` (conv cases and the
negative control without the halo).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.upstream
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _module(kernel: int):
    from transformers import Lfm2Config
    from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv

    config = Lfm2Config(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, layer_types=["conv"], conv_L_cache=kernel, conv_bias=True)
    torch.manual_seed(kernel)
    return Lfm2ShortConv(config, 0).double()


def _upstream(module):
    """The class's forward as transformers ships it (below cpshim's wrapper, where the patch is applied)."""
    from cpshim import patching

    method = type(module).forward
    return (method.__wrapped__ if patching.is_wrapper(method) else method).__get__(module)


@settings(max_examples=60, deadline=None)
@given(cp=st.sampled_from([2, 3, 4]), strategy=st.sampled_from(["zigzag", "contiguous"]),
       chunks=st.integers(1, 5), kernel=st.integers(2, 24), batch=st.integers(1, 2))
def test_each_shard_with_its_halo_equals_the_whole_sequence(cp, strategy, chunks, kernel, batch):
    from cpshim.ring import runtime, sharding, short_conv, sliding

    length = chunks * sharding.multiple_for(strategy, cp)
    module = _module(kernel)
    x = torch.randn(batch, length, 8, dtype=torch.float64)
    with torch.no_grad():
        whole = _upstream(module)(x)
    held = {r: sharding.shard_indices(length, r, cp, strategy).tolist() for r in range(cp)}
    shards = {r: x[:, held[r]] for r in range(cp)}

    def halo_of(rank):
        def halo(local, plan, group):
            out = local.new_zeros((local.shape[0], plan.halo_len, local.shape[2]))
            for slot, idx in zip(*plan.own):
                out[:, slot] = local[:, idx]
            for src, slots in plan.recv:
                sent = dict(sliding.plan(length, cp, src, strategy, kernel).send)[rank]
                for slot, idx in zip(slots, sent):
                    out[:, slot] = shards[src][:, idx]
            return out
        return halo

    exchange = sliding.halo
    try:
        for rank in range(cp):
            step = SimpleNamespace(cp=cp, rank=rank, group=None, strategy=strategy, global_len=length,
                                   local_len=len(held[rank]), outside=frozenset(), ran=set())
            sliding.halo = halo_of(rank)
            runtime.set_step(step)
            try:
                with torch.no_grad():
                    got = short_conv.forward(SimpleNamespace(original=_upstream(module)), module, shards[rank])
            finally:
                runtime.set_step(None)
            assert id(module) in step.ran
            torch.testing.assert_close(got, whole[:, held[rank]], rtol=0, atol=1e-12)
    finally:
        sliding.halo = exchange


def test_without_the_halo_a_shard_differs():
    """The check above can fail: with no rows before a run (the parity's negative control), rank 1 is wrong."""
    from cpshim.ring import runtime, sharding, short_conv, sliding

    module, length = _module(3), 16
    x = torch.randn(1, length, 8, dtype=torch.float64)
    held = sharding.shard_indices(length, 1, 2, "zigzag").tolist()
    exchange = sliding.halo
    sliding.halo = lambda local, plan, group: local.new_zeros((1, plan.halo_len, 8))
    runtime.set_step(SimpleNamespace(cp=2, rank=1, group=None, strategy="zigzag", global_len=length,
                                     local_len=len(held), outside=frozenset(), ran=set()))
    try:
        with torch.no_grad():
            got = short_conv.forward(SimpleNamespace(original=_upstream(module)), module, x[:, held])
            assert not torch.allclose(got, _upstream(module)(x)[:, held])
    finally:
        runtime.set_step(None)
        sliding.halo = exchange
