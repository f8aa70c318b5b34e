"""Gated DeltaNet layers under CP (`cpshim.ring.delta_rule`): for any length, cp, strategy and batch, the runs of
every rank, each run by upstream's forward from the one-run cache its predecessor in `chain` left (conv rows and
recurrent state), put together equal upstream's forward over the whole sequence, and so does the gradient of
every parameter (hypothesis; the real `Qwen3_5GatedDeltaNet`, no processes). The exchange over gloo and the
Trainer end to end: tests/parity/test_mixer_parity.py (with the negative control that drops the state).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.upstream
torch = pytest.importorskip("torch")
pytest.importorskip("transformers.models.qwen3_5")
if not __import__("cpshim").report()["qwen3-5-gated-deltanet"].variant:
    pytest.skip("the forward takes a run's state from its cache from transformers 5.21 on (ring mode refuses "
                "Gated DeltaNet below)", allow_module_level=True)


def _module():
    from transformers import Qwen3_5TextConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

    config = Qwen3_5TextConfig(hidden_size=32, linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=8,
                               linear_value_head_dim=8, linear_conv_kernel_dim=4, num_hidden_layers=1,
                               layer_types=["linear_attention"])
    torch.manual_seed(0)
    return Qwen3_5GatedDeltaNet(config, 0)


def _upstream(module):
    from cpshim import patching

    method = type(module).forward
    return (method.__wrapped__ if patching.is_wrapper(method) else method).__get__(module)


def _chained(module, x, cp, strategy, carry_state=True):
    """Every rank's runs in sequence order, each from what the run before it left (as the chain sends it)."""
    from cpshim.ring import delta_rule, sharding

    length = x.shape[1]
    runs = sorted((start, rank, local, n) for rank in range(cp)
                  for local, start, n, *_ in delta_rule.chain(length, cp, rank, strategy))
    held = {r: sharding.shard_indices(length, r, cp, strategy).tolist() for r in range(cp)}
    name = delta_rule._cache_name(type(module))  # `cache_params` before 5.24
    out, carry = torch.empty_like(x), (None, None)
    for start, rank, local, n in runs:
        assert held[rank][local:local + n] == list(range(start, start + n))
        cache = delta_rule.RunCache(*(carry if carry_state else (None, None)))
        out[:, start:start + n] = _upstream(module)(x[:, start:start + n], **{name: cache})
        carry = (cache.conv_out, cache.state_out)
    return out


@settings(max_examples=25, deadline=None)
@given(cp=st.sampled_from([2, 3, 4]), strategy=st.sampled_from(["zigzag", "contiguous"]), chunks=st.integers(2, 9),
       batch=st.integers(1, 2))
def test_the_chain_of_runs_equals_the_whole_sequence(cp, strategy, chunks, batch):
    from cpshim.ring import sharding

    module = _module()
    x = torch.randn(batch, chunks * sharding.multiple_for(strategy, cp), 32, requires_grad=True)
    weights = torch.randn(batch, x.shape[1], 32)
    params = [p for p in module.parameters() if p.requires_grad]
    whole = _upstream(module)(x)
    got = _chained(module, x, cp, strategy)
    torch.testing.assert_close(got, whole, rtol=1e-4, atol=1e-5)
    expected = torch.autograd.grad((whole * weights).sum(), [x, *params])
    grads = torch.autograd.grad((got * weights).sum(), [x, *params])
    for e, g in zip(expected, grads):
        assert float((g - e).norm() / e.norm()) < 1e-4


def test_without_the_state_the_chain_differs():
    module = _module()
    x = torch.randn(1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(_chained(module, x, 2, "zigzag", carry_state=False), _upstream(module)(x), atol=1e-3)
