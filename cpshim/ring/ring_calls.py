"""The ring of each strategy, through ring-flash-attn 0.1.8's autograd Functions, with a layer's softcap
and attention sinks.

A layer with neither runs the strategy's Function as ring-flash-attn's `*_func` would. A layer with
either runs the same Function's forward and backward inside cpshim's `Modified`:
- softcap: ring-flash-attn passes softcap=0.0 to the kernels, so the layer's softcap is held around
  the ring's forward and backward (`providers._common.layer_softcap`) and the kernels apply it per
  ring step; the log-sum-exp merge across steps is unchanged, since softcap acts on each score alone.
- sinks: merged once per query into the ring's output and lse after the last step, and the ring's
  backward runs on the merged pair (`cpshim.ring.sinks` says why that is the exact gradient).
Neither adds traffic: the ring moves the same keys and values.
"""

from __future__ import annotations

import functools
from typing import Any

from . import sinks as sink_math
from .providers.softcap import layer_softcap

_CLASSES = {"zigzag": ("zigzag_ring_flash_attn", "ZigZagRingFlashAttnFunc"),
            "contiguous": ("ring_flash_attn", "RingFlashAttnFunc"),
            "varlen": ("llama3_flash_attn_varlen", "Llama3FlashAttnVarlenFunc")}


def _function(ring: Any, strategy: str) -> Any:
    module, name = _CLASSES[strategy]
    return getattr(getattr(ring, module), name)


def _args(step: Any, scale: float, softmax: bool) -> tuple:
    """The Function's arguments after q, k, v, as ring-flash-attn's `*_func` passes them."""
    tail = (0.0, scale, True, (-1, -1), None, False, softmax, step.group)  # dropout .. return_softmax, group
    if step.strategy != "varlen":
        return tail
    cu_q, cu_k, max_q, max_k, local_k_slice = step.varlen
    return (cu_q, cu_k, max_q, max_k, step.heads_k_stride, local_k_slice) + tail


class _Ctx:
    """What ring-flash-attn's Functions read and write on their ctx."""

    saved_tensors: tuple = ()

    def save_for_backward(self, *tensors: Any) -> None:
        self.saved_tensors = tensors


@functools.lru_cache(maxsize=1)
def _modified_function() -> Any:
    """cpshim's autograd Function around a ring Function (built on first use: no torch at import)."""
    import torch

    class Modified(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, sinks, fn, args, cap):
            inner = _Ctx()
            with layer_softcap(cap):
                out, lse, _ = fn.forward(inner, q, k, v, *args)
            if sinks is not None:
                out, lse = sink_math.merge(out, lse, sinks)
            q_, k_, v_, _, _, *rest = inner.saved_tensors
            inner.saved_tensors = ()
            ctx.save_for_backward(q_, k_, v_, out, lse, *rest, sinks)
            ctx.inner, ctx.fn, ctx.cap = inner, fn, cap
            return out

        @staticmethod
        def backward(ctx, dout):
            *saved, sinks = ctx.saved_tensors
            ctx.inner.saved_tensors = tuple(saved)
            dout = dout.contiguous()
            with layer_softcap(ctx.cap):
                dq, dk, dv = ctx.fn.backward(ctx.inner, dout)[:3]
            ctx.inner.saved_tensors = ()
            dsinks = sink_math.grad(dout, saved[3], saved[4], sinks) if sinks is not None else None
            return dq, dk, dv, dsinks, None, None, None

    return Modified


def run(ring: Any, step: Any, q: Any, k: Any, v: Any, scale: float, softcap: float = 0.0, sinks: Any = None) -> Any:
    """The ring attention of this rank's shard: q (b, s_local, h, d) (varlen: b = 1), k/v (b, s_local, hk, d)."""
    fn = _function(ring, step.strategy)
    if step.strategy == "varlen":
        q, k, v = q[0], k[0], v[0]
    if not softcap and sinks is None:
        out = fn.apply(q, k, v, *_args(step, scale, False))
    else:
        out = _modified_function().apply(q, k, v, sinks, fn, _args(step, scale, True), float(softcap))
    return out.unsqueeze(0) if step.strategy == "varlen" else out
