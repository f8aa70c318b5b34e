"""Gated DeltaNet's core by head shards (`cpshim.ring.head_shards`, through `carry_state._by_heads`): for any
length, cp, strategy and batch, every rank's runs (upstream's forward stopped at the core, the core over the whole
sequence for that rank's heads, the forward again with its share of the output) put together equal upstream's
forward over the whole sequence, and so does the gradient of every parameter (hypothesis; the real
`Qwen3_5GatedDeltaNet`). The ranks are threads of this process and the all-to-all between them a barrier: the
test is of cpshim's sharding by heads and its orders (one core swap at a time: threads share the module), not
of gloo (tests/parity/test_mixer_parity.py runs it over gloo with the Trainer, and its negative control without
the all-to-all).
"""

from __future__ import annotations

import contextlib
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import mixer_patch_info, skip_below_carry_state, upstream_forward

pytestmark = pytest.mark.upstream
skip_below_carry_state()
torch = pytest.importorskip("torch")


def _module(cp):
    import transformers
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

    torch.manual_seed(0)
    config = transformers.Qwen3_5TextConfig(hidden_size=32, linear_num_value_heads=2 * cp, linear_num_key_heads=cp,
                                            linear_key_head_dim=8, linear_value_head_dim=8, linear_conv_kernel_dim=4,
                                            num_hidden_layers=1, layer_types=["linear_attention"])
    return Qwen3_5GatedDeltaNet(config, 0)


class _Group:
    """The CP group as threads: each rank's all-to-all waits for every rank's parts, then takes its own."""

    def __init__(self, cp):
        self.cp, self.parts, self.barrier = cp, {}, threading.Barrier(cp)
        self.local = threading.local()

    def one_at_a_time(self, swapped):
        """`runtime.swapped` (a module global swapped for a run's call, one process per rank in use) for threads
        sharing the module: one swap at a time."""
        lock = threading.Lock()

        @contextlib.contextmanager
        def locked(*args):
            with lock, swapped(*args) as original:
                yield original

        return locked

    def all_to_all(self, parts, group):
        me = self.local.rank
        self.parts[me] = parts.detach().clone()
        self.barrier.wait()
        got = torch.stack([self.parts[r][me] for r in range(self.cp)])
        self.barrier.wait()  # every rank has taken its share before the next exchange overwrites them
        return got


def _by_heads(group, module, x, weights, cp, strategy):
    """Each rank's output and its loss's gradients, from `carry_state._by_heads` in a thread per rank of `group`."""
    from types import SimpleNamespace

    from cpshim.ring import carry_state, head_shards, sharding

    info = mixer_patch_info(module)
    assert head_shards.applies(module, info, cp)
    call = SimpleNamespace(original=upstream_forward(module), variant=SimpleNamespace(info=info))
    run_call = carry_state._RUNS["cache"]
    params = [p for p in module.parameters() if p.requires_grad]
    results, errors = {}, []
    runs = {r: carry_state.chain(x.shape[1], cp, r, strategy) for r in range(cp)}
    convs = {r: {local: carry_state._conv_rows(call, module, run_call, x[:, max(0, start - 3):start], {})
                 if start else None for local, start, *_ in runs[r]} for r in range(cp)}  # the halo's, as `forward`

    def rank(r):
        try:
            group.local.rank = r
            held = sharding.shard_indices(x.shape[1], r, cp, strategy)
            step = SimpleNamespace(cp=cp, rank=r, group=None, global_len=x.shape[1], strategy=strategy)
            outs, _ = carry_state._by_heads(call, module, x[:, held], runs[r], convs[r], {}, step,
                                            "Qwen3_5GatedDeltaNet")
            out = torch.cat(outs, dim=1)
            grads = torch.autograd.grad((out * weights[:, held]).sum(), [x, *params])
            results[r] = (held, out.detach(), grads)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)
            group.barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(cp)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@settings(max_examples=15, deadline=None)
@given(cp=st.sampled_from([2, 3, 4]), strategy=st.sampled_from(["zigzag", "contiguous"]), chunks=st.integers(1, 6),
       batch=st.integers(1, 2))
def test_the_core_by_head_shards_equals_the_whole_sequence(cp, strategy, chunks, batch):
    from cpshim.ring import head_shards, runtime, sharding

    module = _module(cp)
    length = chunks * sharding.multiple_for(strategy, cp) * 2  # runs of at least 2 positions
    x = torch.randn(batch, length, 32, requires_grad=True)
    weights = torch.randn(batch, length, 32)
    params = [p for p in module.parameters() if p.requires_grad]
    whole = module(x)
    expected = torch.autograd.grad((whole * weights).sum(), [x, *params])
    group, exchange, swapped = _Group(cp), head_shards._all_to_all, runtime.swapped
    head_shards._all_to_all, runtime.swapped = group.all_to_all, group.one_at_a_time(swapped)
    try:
        results = _by_heads(group, module, x, weights, cp, strategy)
    finally:
        head_shards._all_to_all, runtime.swapped = exchange, swapped
    got = torch.empty_like(whole)
    for held, out, _ in results.values():
        got[:, held] = out
    torch.testing.assert_close(got, whole.detach(), rtol=1e-4, atol=1e-5)
    for i, e in enumerate(expected):
        g = sum(grads[i] for _, _, grads in results.values())
        assert float((g - e).norm()) <= 1e-4 * float(e.norm())
