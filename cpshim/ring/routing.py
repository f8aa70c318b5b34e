"""Attention routing at dispatch time, through transformers' attention registry.

`GeneralInterface.__getitem__` is wrapped (registry entry `attention-dispatch`), so every key a model
looks up (sdpa, flash_attention_*, hub kernels registered later) runs the ring while a sharded step is
in flight in the calling thread, and is upstream's own value otherwise (the wrapper is gated by
`runtime.ROUTING`, closed when no thread has a step: generation looks up per layer per token, and
pays one attribute read); the mask registry returns no mask for sharded steps (the ring
is causal by construction, and transformers would read the zigzag junction in position_ids as a
document boundary and build an O(S_local^2) mask for nothing). No torch import at module level.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from . import runtime, sliding, tripwires

_ATTENTION, _MASK = "AttentionInterface", "AttentionMaskInterface"
_routed: dict[Any, Callable[..., Any]] = {}
_kinds: dict[type, str | None] = {}


def route(call: Any, interface: Any, key: Any) -> Any:
    """Impl of `attention-dispatch`: keeps every lookup's result; adds ring routing around it."""
    value = call.original(key)
    if runtime.current_step() is None:  # another thread's step opened the gate
        return value
    cls = type(interface)
    try:
        kind = _kinds[cls]
    except KeyError:  # once per interface class: this lookup runs for every attention layer call
        kind = _kinds[cls] = next((k.__name__ for k in cls.__mro__ if k.__name__ in (_ATTENTION, _MASK)), None)
    if kind is None or not callable(value):
        return value
    try:
        return _routed[(kind, value)]
    except KeyError:
        wrapper = _ring_attention(value) if kind == _ATTENTION else _no_mask_when_sharded(value)
        _routed[(kind, value)] = wrapper
        return wrapper
    except TypeError:  # unhashable callable: route it without caching
        return _ring_attention(value) if kind == _ATTENTION else _no_mask_when_sharded(value)


def _no_mask_when_sharded(mask_fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(mask_fn)
    def mask(*args: Any, **kwargs: Any) -> Any:
        return None if runtime.current_step() is not None else mask_fn(*args, **kwargs)

    return mask


def _ring_attention(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, *args: Any, **kwargs: Any):
        step = runtime.current_step()
        if step is None or id(module) in step.outside:  # called after its step; a vision tower's attention
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        return ring_forward(step, module, query, key, value, *args, **kwargs)

    return attention


def _refuse(what: str) -> None:
    raise tripwires.TripwireError(f"cpshim ring mode: {what} is not supported by ring attention")


def ring_forward(step: Any, module: Any, query: Any, key: Any, value: Any, dropout: float = 0.0,
                 scaling: float | None = None, sliding_window: Any = None, softcap: Any = None, s_aux: Any = None,
                 **kwargs: Any):
    import torch

    from . import ring_calls
    from .providers import REFERENCE

    name = next((n for n, m in step.expected.items() if m is module), type(module).__name__)
    tripwires.check_local_length(step, query.shape[2], name)
    if dropout and getattr(module, "training", False):
        _refuse(f"attention dropout {dropout}")
    window = sliding.checked_window(step, module, name, sliding_window)
    if softcap and runtime.loaded.provider != REFERENCE:
        _refuse(f"softcap={softcap} in {name} with the {runtime.loaded.provider} kernels (ring-flash-attn 0.1.8 "
                "passes softcap=0 to flash_attn, and aten's flash kernels have none): ring mode computes softcap "
                "with cpshim's reference provider")
    if s_aux is not None and tuple(s_aux.shape) != (query.shape[1],):
        _refuse(f"attention sinks of shape {tuple(s_aux.shape)} in {name} (one logit per query head expected)")
    if getattr(module, "is_causal", True) is False:
        _refuse(f"non-causal attention in {name}")
    ring = runtime.loaded.module
    dtype = query.dtype
    compute = getattr(torch, step.ring_dtype) if dtype not in (torch.bfloat16, torch.float16) else dtype
    q, k, v = (t.transpose(1, 2).to(compute) for t in (query, key, value))  # (b, s, h, d)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    mods = dict(softcap=float(softcap or 0.0), sinks=s_aux)
    if window is not None and window < step.global_len:  # else the window holds the whole sequence: the ring
        out = sliding.attention(q, k, v, window=window, plan_=sliding.plan(
            step.global_len, step.cp, step.rank, step.strategy, window, step.cu), group=step.group,
            provider=sliding.provider(runtime.loaded.provider), scale=scale, **mods)
    else:
        dv = v.shape[-1]
        if step.strategy == "varlen" and dv != k.shape[-1]:
            # MLA: llama3's all-gather takes k and v in one buffer shape; zero dims change nothing
            width = max(dv, k.shape[-1])
            q, k, v = (torch.nn.functional.pad(t, (0, width - t.shape[-1])) for t in (q, k, v))
        out = ring_calls.run(ring, step, q, k, v, scale, **mods)[..., :dv]
    step.ran.add(id(module))
    return out.to(dtype).contiguous(), None
