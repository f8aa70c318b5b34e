"""Recurrent mixers under CP (`cpshim.ring.carry_state`): for any length, cp, strategy and batch, the runs of
every rank, each run by upstream's forward from the one-run cache its predecessor in `chain` left (conv rows and
recurrent state), put together equal upstream's forward over the whole sequence, and so does the gradient of
every parameter (hypothesis; the real `Qwen3_5GatedDeltaNet`, `BambaMixer` (Mamba-2, chunks of 5 so that
runs end in padded chunks), `JambaMambaMixer` and `ZambaMambaMixer` (Mamba-1, whose zero-started scan gets the
state's part added, one scan per head in Zamba), RecurrentGemma's `RecurrentGemmaRecurrentBlock` (its RG-LRU
from the block's cache attributes, with a document restarting its positions inside the row), no processes). The
exchange over gloo and the Trainer end to end: tests/parity/test_mixer_parity.py (with the negative controls that
drop the state, or its part in the scan). Gated DeltaNet with heads divisible by cp runs its core by head shards
instead (tests/upstream/test_head_shards.py); the chain here is what it runs otherwise.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import mixer_patch_info, skip_below_carry_state, upstream_forward

pytestmark = pytest.mark.upstream
skip_below_carry_state()
torch = pytest.importorskip("torch")
MIXERS = ["gated-deltanet", "mamba2", "mamba1", "mamba1-heads",
          *(["rg-lru"] if __import__("cpshim").report()["recurrent-gemma-rg-lru"].variant else [])]


def _module(kind):
    import transformers
    from transformers.models.bamba.modeling_bamba import BambaMixer
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

    torch.manual_seed(0)
    mamba1 = dict(hidden_size=32, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=4,
                  num_hidden_layers=1)
    if kind == "mamba1":
        from transformers.models.jamba.modeling_jamba import JambaMambaMixer

        module = JambaMambaMixer(transformers.JambaConfig(**mamba1, attn_layer_period=2, attn_layer_offset=1), 0)
        with torch.no_grad():  # small steps (softplus(-4) ~ 0.02): a state that lasts across runs
            module.dt_proj.bias.fill_(-4.0)
        return module
    if kind == "mamba1-heads":
        from transformers.models.zamba.modeling_zamba import ZambaMambaMixer

        module = ZambaMambaMixer(transformers.ZambaConfig(**mamba1, n_mamba_heads=2, attention_hidden_size=64,
                                                           attention_head_dim=16,
                                                           layers_block_type=["linear_attention"]), 0)
        with torch.no_grad():  # upstream's init of x_proj (zeros in __init__: B = C = 0) runs in post_init
            module.dt_proj_bias.fill_(-4.0)
            module.x_proj_weight.normal_(0.0, 0.2)
        return module
    if kind == "rg-lru":
        from transformers.models.recurrent_gemma.modeling_recurrent_gemma import RecurrentGemmaRecurrentBlock

        module = RecurrentGemmaRecurrentBlock(transformers.RecurrentGemmaConfig(
            hidden_size=32, lru_width=32, num_attention_heads=2, conv1d_width=4, num_hidden_layers=1), 0)
        with torch.no_grad():  # its parameters are torch.empty until post_init; softplus(-3) ~ 0.05: a lasting state
            for p in module.rg_lru.parameters():
                p.normal_(0.0, 0.3)
            module.rg_lru.recurrent_param.add_(-3.0)
        return module
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


def _kwargs(module, x):
    """What the model passes besides the hidden states: RecurrentGemma's position_ids, a document restarting them
    two thirds in (its RG-LRU resets there)."""
    if not hasattr(module, "rg_lru"):
        return {}
    length = x.shape[1]
    positions = torch.arange(length)
    positions[2 * length // 3:] -= 2 * length // 3
    return {"position_ids": positions[None].expand(x.shape[0], -1), "attention_mask": None, "use_cache": False}


def _whole(module, x):
    out = upstream_forward(module)(x, **_kwargs(module, x))
    return out[0] if isinstance(out, tuple) else out


def _chained(module, x, cp, strategy, with_state=True, started=True):
    """Every rank's runs in sequence order, each from what the run before it left (as the chain sends it), by the
    patch's own run call (`carry_state._RUNS`), its conv rows computed from the k - 1 input rows before it (the halo)
as `forward` computes them. A patch naming its scan gets, as `forward` hands it, a state from
    another rank as a pending receive (a callable its zero-started scan calls after running); `started=False`:
    that scan gets a state of zeros instead (it reads the state, but adds nothing)."""
    from types import SimpleNamespace

    from cpshim.ring import carry_state, sharding

    length = x.shape[1]
    runs = sorted((start, rank, local, n) for rank in range(cp)
                  for local, start, n, *_ in carry_state.chain(length, cp, rank, strategy))
    held = {r: sharding.shard_indices(length, r, cp, strategy).tolist() for r in range(cp)}
    info = mixer_patch_info(module)
    call = SimpleNamespace(original=upstream_forward(module), variant=SimpleNamespace(info=info))
    run_call = carry_state._RUNS[info.get("run", "cache")]
    halo = int(getattr(module, info["carry"].get("kernel", "conv_kernel_size"))) - 1
    out, state, before = torch.empty_like(x), None, None
    for start, rank, local, n in runs:
        assert held[rank][local:local + n] == list(range(start, start + n))
        state = state if with_state else None
        if state is not None and "scan" in info and (rank != before or not started):
            state = (lambda s: lambda: s)(state if started else torch.zeros_like(state))
        rows = x[:, max(0, start - halo):start]  # the halo `forward` exchanges: the conv rows from them
        conv = carry_state._conv_rows(call, module, run_call, rows, _kwargs(module, x)) if start and with_state \
            else None
        got, (_, state) = run_call(call, module, x, start, n, (conv, state), _kwargs(module, x))
        out[:, start:start + n] = got[0] if isinstance(got, tuple) else got
        before = rank
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
    whole = _whole(module, x)
    got = _chained(module, x, cp, strategy)
    torch.testing.assert_close(got, whole, rtol=1e-4, atol=1e-5)
    expected = torch.autograd.grad((whole * weights).sum(), [x, *params])
    grads = torch.autograd.grad((got * weights).sum(), [x, *params])
    for e, g in zip(expected, grads):  # a parameter the forward does not use (Zamba's dt_proj_bias): 0 on both
        assert float((g - e).norm()) <= 1e-4 * float(e.norm())


@pytest.mark.parametrize("kind", MIXERS)
def test_without_the_state_the_chain_differs(kind):
    module = _module(kind)
    x = torch.randn(1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(_chained(module, x, 2, "zigzag", with_state=False), _whole(module, x), atol=1e-3)


@pytest.mark.parametrize("kind", ["mamba2", "mamba1", "mamba1-heads"])
def test_scans_that_read_the_state_but_add_nothing_differ(kind):
    """The conv rows are right and the scan takes the state, but of zeros: upstream's scan from zero, alone."""
    module = _module(kind)
    x = torch.randn(1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(_chained(module, x, 2, "zigzag", started=False), _whole(module, x), atol=1e-3)


@pytest.mark.parametrize("kind", ["gated-deltanet", "mamba2", "mamba1"])
def test_a_forward_that_goes_around_the_cache_is_refused(kind):
    """A kernel that keeps its own state (kernels' hub, kernelize) would restart every run from zeros: here the
    real forward is called without the one-run cache, as such a kernel would ignore it."""
    from types import SimpleNamespace

    from cpshim.ring import carry_state, tripwires

    module = _module(kind)
    name = carry_state._cache_name(type(module))
    upstream = upstream_forward(module)
    call = SimpleNamespace(original=lambda x, **kw: upstream(x, **{**kw, name: None}),
                           variant=SimpleNamespace(info=mixer_patch_info(module)))
    x = torch.randn(1, 16, 32)
    with torch.no_grad():
        with pytest.raises(tripwires.TripwireError, match="left no conv rows.*does not go through transformers' cache"):
            carry_state._through_cache(call, module, x, 0, 8, (None, None), {})
        real = SimpleNamespace(original=upstream, variant=call.variant)
        _, carry = carry_state._through_cache(real, module, x, 0, 8, (None, None), {})  # what the first run leaves
        with pytest.raises(tripwires.TripwireError, match="did not read the carried conv rows"):
            carry_state._through_cache(call, module, x, 8, 8, carry, {})
