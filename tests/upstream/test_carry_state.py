"""Recurrent mixers under CP (`cpshim.ring.carry_state`): for any length, cp, strategy and batch, the runs of
every rank, each run by upstream's forward from the one-run cache its predecessor in `chain` left (conv rows and
recurrent state), put together equal upstream's forward over the whole sequence, and so does the gradient of
every parameter (hypothesis; the real `Qwen3_5GatedDeltaNet` and `BambaMixer` (Mamba-2, chunks of 5 so that
runs end in padded chunks), no processes). The exchange over gloo and the
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
                "Gated DeltaNet and Mamba-2 below)", allow_module_level=True)
MIXERS = ["gated-deltanet", "mamba2"]


def _module(kind):
    import transformers
    from transformers.models.bamba.modeling_bamba import BambaMixer
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

    torch.manual_seed(0)
    if kind == "mamba2":
        config = transformers.BambaConfig(hidden_size=32, mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=2,
                                          mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=5,
                                          num_hidden_layers=1, attn_layer_indices=[])
        module = BambaMixer(config, 0)
        with torch.no_grad():  # upstream's init (A 1..heads, dt_bias 1) runs only in from_config / post_init
            module.A_log.copy_(torch.log(torch.arange(1, 5.0)))
            module.dt_bias.fill_(1.0)
            module.D.fill_(1.0)
        return module
    config = transformers.Qwen3_5TextConfig(hidden_size=32, linear_num_value_heads=4, linear_num_key_heads=2,
                                            linear_key_head_dim=8, linear_value_head_dim=8, linear_conv_kernel_dim=4,
                                            num_hidden_layers=1, layer_types=["linear_attention"])
    return Qwen3_5GatedDeltaNet(config, 0)


def _upstream(module):
    from cpshim import patching

    method = type(module).forward
    return (method.__wrapped__ if patching.is_wrapper(method) else method).__get__(module)


def _chained(module, x, cp, strategy, with_state=True):
    """Every rank's runs in sequence order, each from what the run before it left (as the chain sends it)."""
    from cpshim.ring import carry_state, sharding

    length = x.shape[1]
    runs = sorted((start, rank, local, n) for rank in range(cp)
                  for local, start, n, *_ in carry_state.chain(length, cp, rank, strategy))
    held = {r: sharding.shard_indices(length, r, cp, strategy).tolist() for r in range(cp)}
    name = carry_state._cache_name(type(module))  # `cache_params` before 5.24
    out, carry = torch.empty_like(x), (None, None)
    for start, rank, local, n in runs:
        assert held[rank][local:local + n] == list(range(start, start + n))
        cache = carry_state.RunCache(*(carry if with_state else (None, None)))
        out[:, start:start + n] = _upstream(module)(x[:, start:start + n], **{name: cache})
        carry = (cache.conv_out, cache.state_out)
    return out


@pytest.mark.parametrize("kind", MIXERS)
@settings(max_examples=20, deadline=None)
@given(cp=st.sampled_from([2, 3, 4]), strategy=st.sampled_from(["zigzag", "contiguous"]), chunks=st.integers(2, 9),
       batch=st.integers(1, 2))
def test_the_chain_of_runs_equals_the_whole_sequence(kind, cp, strategy, chunks, batch):
    from cpshim.ring import sharding

    module = _module(kind)
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


@pytest.mark.parametrize("kind", MIXERS)
def test_without_the_state_the_chain_differs(kind):
    module = _module(kind)
    x = torch.randn(1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(_chained(module, x, 2, "zigzag", with_state=False), _upstream(module)(x), atol=1e-3)
