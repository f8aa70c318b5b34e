"""The parity runs' negative controls: ring CP with one exchange taken out, which must fail the parity check
that the exact run passes (`cpshim.ring.parity.run_case`, case key `negative`). Each replaces a module
attribute the ring looks up at call time; `snapshot()` / `restore()` put them back after the case.
"""

from __future__ import annotations

from typing import Any


def snapshot() -> tuple:
    """The attributes a control replaces, as they are."""
    from . import carry_state, head_shards, routing, sliding, vlm

    return (routing.ring_forward, sliding.plan, vlm._entry_hook, carry_state.chain, carry_state._scan_started,
            head_shards.run_core)


def restore(saved: tuple) -> None:
    from . import carry_state, head_shards, routing, sliding, vlm

    (routing.ring_forward, sliding.plan, vlm._entry_hook, carry_state.chain, carry_state._scan_started,
     head_shards.run_core) = saved


def apply(negative: Any, model: Any) -> None:
    """`negative`: a control's name, or True (the KV exchange; for a model without attention, pure Mamba-2,
    the state chain too)."""
    from . import parity_vlm, positions

    if negative == "no-halo":
        _skip_halo()
    elif negative == "no-state":
        _skip_state()
    elif negative == "zero-started-scan":  # Mamba-1/2: the state travels, its part is never added
        _zero_started_scans()
    elif negative == "local-cores":  # Gated DeltaNet by head shards: no all-to-all
        _local_cores()
    elif negative == "positions-per-shard":
        parity_vlm.positions_per_shard()
    elif negative in ("no-softcap", "no-sinks"):
        _drop_argument({"no-softcap": "softcap", "no-sinks": "s_aux"}[negative])
    else:
        _skip_kv_exchange()
        if positions.reads_no_positions(model):  # no attention to cut off (pure Mamba-2): cut the state chain
            _skip_state()


def _skip_kv_exchange() -> None:
    """Negative control: every rank attends to its own shard only (what a broken ring would do)."""
    import torch

    from . import routing, runtime
    from .providers import select_provider
    from .providers.autograd import attention

    provider = select_provider("cpu")

    def local_only(step, module, query, key, value, dropout=0.0, scaling=None, **kwargs):
        q, k, v = (t.transpose(1, 2).to(torch.bfloat16) for t in (query, key, value))
        step.ran.add(id(module))
        return attention(q, k, v, provider, softmax_scale=scaling).to(query.dtype).contiguous(), None

    routing.ring_forward = local_only  # type: ignore[assignment]
    assert runtime.loaded is not None


def _drop_argument(name: str) -> None:
    """Negative control of a modifier: the ring runs without the layer's `softcap` or `s_aux` (sinks)."""
    from . import routing

    exact = routing.ring_forward

    def without(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop(name, None)
        return exact(*args, **kwargs)

    routing.ring_forward = without  # type: ignore[assignment]


def _skip_halo() -> None:
    """Negative control of the sliding layers: each run attends to its own keys only (no halo exchanged)."""
    import dataclasses

    from . import sliding

    exact = sliding.plan

    def no_halo(*args: Any) -> Any:
        p = exact(*args)
        return dataclasses.replace(p, runs=tuple(dataclasses.replace(r, halo=0) for r in p.runs))

    sliding.plan = no_halo  # type: ignore[assignment]


def _skip_state() -> None:
    """Negative control of the recurrent layers (Gated DeltaNet, Mamba-2, Mamba-1): every run starts from no
    state."""
    from . import carry_state

    exact = carry_state.chain

    def no_state(*args: Any) -> Any:
        return tuple((local, start, length, None, None, i) for local, start, length, _, _, i in exact(*args))

    carry_state.chain = no_state  # type: ignore[assignment]


def _zero_started_scans() -> None:
    """Negative control of the Mamba-1 and Mamba-2 mixers: each run's scan receives and takes the state (the
    carry's tripwire sees it read), multiplied by zero."""
    from . import carry_state

    exact = carry_state._scan_started

    def zeroed(module: Any, info: dict, state: Any, cache: Any) -> Any:
        if state is None:
            return exact(module, info, state, cache)
        return exact(module, info, lambda: (state() if callable(state) else state) * 0, cache)

    carry_state._scan_started = zeroed  # type: ignore[assignment]


def _local_cores() -> None:
    """Negative control of the cores run by head shards (`cpshim.ring.head_shards`): each run's core on its own
    positions, every head, from no state (no all-to-all)."""
    from . import head_shards

    def local(core: Any, calls: list, lengths: list, step: Any, name: str) -> list:
        return [core(*args, **{**kwargs, "output_final_state": False})[0] for args, kwargs in calls]

    head_shards.run_core = local  # type: ignore[assignment]
