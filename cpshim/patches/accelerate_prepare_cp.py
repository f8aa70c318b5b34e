"""`Accelerator._prepare_cp` that prepares nothing: cpshim (or the trainer) owns the sharding.

Upstream sets `_cp_context` to torch's `context_parallel` and hooks every `*self_attn` module to drop
the mask (1.10.1-1.11.0, 1.13.0-1.16.0); 1.12.0 never sets `_cp_context` at all (accelerate #3856).
Replacing the body fixes both: `maybe_context_parallel` gets a context that does nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from .. import lifecycle
from ..errors import CpshimRuntimeError, CpshimWarning
from ..modes import RING, cp_owned
from .mixer_catalog import MIXER_LAYER_TYPES


@contextlib.contextmanager
def no_cp_context(buffers: Any = None, buffer_seq_dims: Any = None, no_restore_buffers: Any = None) -> Iterator[None]:
    """Takes what `Accelerator.maybe_context_parallel` passes; shards nothing."""
    yield


SLIDING = "sliding_attention"
#: Layer types ring mode computes exactly: full attention by the ring, sliding windows by a halo exchange
#: (`cpshim.ring.sliding`). Any other type, and any type a future release adds, is refused.
RING_LAYER_TYPES = ("full_attention", SLIDING)
#: Mixers other than attention (`MIXER_LAYER_TYPES`: conv, linear_attention, hybrid, ...) are computed where their
#: family's registry patch runs (`cpshim.ring.mixers`): LFM2's short convolutions, Gated DeltaNet, Mamba-2


def text_config(config: Any) -> Any:
    """The config of the text a causal LM outputs: its decoder's (MusicGen holds a text encoder and a decoder,
    where a bare `get_text_config()` raises for the ambiguity)."""
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def non_full_attention_layers(model_or_config: Any) -> list[str]:
    """Layer types that ring attention over the whole sequence would compute wrongly (a model or its config).

    Same rule as accelerate 1.15's refusal, applied on every version: any `layer_types` entry other
    than full_attention, or a truthy `sliding_window` when there are no layer types.
    """
    config = getattr(model_or_config, "config", model_or_config)
    if config is None or isinstance(config, dict):
        return []
    text = text_config(config)
    layer_types = getattr(text, "layer_types", None)
    if layer_types:
        return sorted({t for t in layer_types if t != "full_attention"})
    return ["sliding_attention"] if getattr(text, "sliding_window", None) else []


def ring_uncomputed(model_or_config: Any, applied: bool = True) -> tuple[list[str], list[str]]:
    """(layer types ring mode would compute wrongly, why for those that a patch could compute): full and
    sliding attention always computed; `conv` and `linear_attention` layers where their family's mixer patch
    runs (`cpshim.ring.mixers`; `applied` False: where it is selected)."""
    bad = [t for t in non_full_attention_layers(model_or_config) if t not in RING_LAYER_TYPES]
    if not bad:
        return bad, []
    from ..ring.mixers import family_known, uncovered

    config = getattr(model_or_config, "config", model_or_config)
    mixed = bad if family_known(config) else [t for t in bad if t in MIXER_LAYER_TYPES]
    why = {t: uncovered(config, t, applied) for t in mixed}
    return ([t for t in bad if why.get(t, "") is not None],
            list(dict.fromkeys(w for w in why.values() if w is not None)))


def ring_layers_problem(model_or_config: Any, name: str, applied: bool = True) -> str | None:
    bad, why = ring_uncomputed(model_or_config, applied)
    if not bad:
        return None
    mixers = " (and the conv and recurrent layers of the families its mixer patches cover)" if why else ""
    return (f"{name} has {', '.join(bad)} layers: ring mode computes only {' and '.join(RING_LAYER_TYPES)} "
            f"layers exactly{mixers}" + "".join(f"; {w}" for w in why))


def check_layers(model: Any, mode: str) -> None:
    if mode == RING:
        problem = ring_layers_problem(model, type(model).__name__)
        if problem:
            raise CpshimRuntimeError(f"cpshim ring mode refuses this model: {problem}: use such a model, or train "
                                     "it without cpshim.enable()")
        from ..ring.mixers import conv_problem

        problem = conv_problem(model)
        if problem:
            raise CpshimRuntimeError(f"cpshim ring mode refuses this model: {problem}")
        return
    bad = non_full_attention_layers(model)
    if not bad:
        return
    reason = (f"{type(model).__name__} has attention layers of type {', '.join(bad)}; context parallelism "
              "over the full sequence computes them wrongly: use a model with full attention only, or disable CP")
    lifecycle.notice("non-full-attention", reason, model=type(model).__name__)
    import warnings

    warnings.warn(f"cpshim: {reason}", CpshimWarning, stacklevel=4)


def no_op_context(call: Any, accelerator: Any, *args: Any) -> tuple:
    """Keeps: the arguments, returned unchanged. Turns off: rotate method, torch context_parallel,
    self_attn hooks. Checked against accelerate 1.10.1-1.16.0."""
    if not cp_owned(getattr(accelerator, "parallelism_config", None)):
        return call.original(*args)
    for arg in args:
        if hasattr(arg, "config") and hasattr(arg, "named_modules"):
            check_layers(arg, call.mode)
    accelerator._cp_context = no_cp_context
    return args
