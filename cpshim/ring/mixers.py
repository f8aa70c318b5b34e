"""Which sequence mixers other than attention ring mode computes, per model family (no torch import).

A layer type other than attention (`conv`, `linear_attention`) is computed only where a registry patch for
that family's mixer class runs (`cpshim.patches.mixer_catalog`); any other family with such layers is refused
by name, as is a family whose patch does not apply on the installed transformers.
"""

from __future__ import annotations

from typing import Any


def uncovered(config: Any, layer_type: str, applied: bool) -> str | None:
    """Why ring mode cannot compute this config's `layer_type` layers (None: a patch computes them). `applied`:
    the patch must be running (a model about to train), else selected for the installed versions (`cpshim check
    --model`, before anything is applied)."""
    from .. import lifecycle
    from ..patches.accelerate_prepare_cp import text_config
    from ..patches.mixer_catalog import MIXER_OF

    model_type = getattr(text_config(config), "model_type", None)
    pid = MIXER_OF.get((layer_type, model_type))
    if pid is None:
        known = sorted(m for t, m in MIXER_OF if t == layer_type)
        return (f"{model_type} has {layer_type} layers that no cpshim patch computes (cpshim computes those of "
                f"{', '.join(known)}): train it without cpshim.enable()")
    if lifecycle.is_active(pid):
        return None
    chosen = lifecycle.selection(pid)
    if chosen is not None and chosen.variant is not None and not applied:
        return None
    why = chosen.reason if chosen is not None and chosen.variant is None else "it is not applied (cpshim.apply())"
    return f"{model_type}'s {layer_type} layers are computed by patch {pid}, and {why}"
