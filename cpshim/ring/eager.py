"""Eager attention during sharded steps: the same math as the ring, routed through the registry.

A model loaded with attn_implementation="eager" calls its modeling file's `eager_attention_forward`
directly, never looking up transformers' attention registry (4.x: `if config._attn_implementation !=
"eager"`; 5.x: `get_interface(..., default=eager_attention_forward)`), so `attention-dispatch` cannot
route it. Gemma 2 (softcap) and gpt-oss (sinks) support no sdpa on 5.24, so eager is what a CPU user
loads. Without `output_attentions` (refused), eager computes softmax(q k^T * scale [softcapped] [+ sinks])
v, which is what the ring computes from the same arguments. So while a sharded step is in flight, the
step's eager attention configs read "sdpa", a key every release registers: the layers look it up, the
lookup returns the ring, and the arguments (softcap, sliding_window, s_aux) reach the ring as they would
reach eager. Outside steps (generation, evaluation before 5.16) the configs read "eager" again.
"""

from __future__ import annotations

from typing import Any, Iterable

EAGER, ROUTED = "eager", "sdpa"
_swapped: dict[int, Any] = {}  # id(config) -> config, while a step routes it


def configs(modules: Iterable[Any]) -> tuple[Any, ...]:
    """The distinct configs of these attention modules that load eager attention (or are routed now)."""
    found: dict[int, Any] = {}
    for m in modules:
        c = getattr(m, "config", None)
        if c is not None and (id(c) in _swapped or getattr(c, "_attn_implementation", None) == EAGER):
            found[id(c)] = c
    return tuple(found.values())


def route(cfgs: tuple[Any, ...]) -> None:
    for c in cfgs:
        if id(c) not in _swapped:
            _swapped[id(c)] = c
            c._attn_implementation_internal = ROUTED


def restore(cfgs: tuple[Any, ...]) -> None:
    for c in cfgs:
        if _swapped.pop(id(c), None) is not None:
            c._attn_implementation_internal = EAGER
