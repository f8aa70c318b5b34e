"""Which sequence mixers other than attention ring mode computes, per model family (no torch import).

A layer type other than attention (`conv`, `linear_attention`, `hybrid`, ...) is computed only where a registry
patch for that family's mixer class runs (`cpshim.patches.mixer_catalog`); any other family with such layers is refused
by name, as is a family whose patch does not apply on the installed transformers.
"""

from __future__ import annotations

import weakref
from typing import Any

_SCANNED: Any = weakref.WeakKeyDictionary()  # model -> its conv problem (the step hook asks every step)


def family_known(config: Any) -> bool:
    """Whether a patch computes this config's family's mixer somewhere. Such a family's refusal says why for
    every layer type it has, including names an older release gives them (transformers <= 5.12 Bamba:
    `mamba`, `attention`)."""
    from ..patches.accelerate_prepare_cp import text_config
    from ..patches.mixer_catalog import PATCH_OF_FAMILY

    return getattr(text_config(config), "model_type", None) in PATCH_OF_FAMILY


def uncovered(config: Any, layer_type: str, applied: bool) -> str | None:
    """Why ring mode cannot compute this config's `layer_type` layers (None: a patch computes them). `applied`:
    the patch must be running (a model about to train), else selected for the installed versions (`cpshim check
    --model`, before anything is applied)."""
    from .. import lifecycle
    from ..patches.accelerate_prepare_cp import text_config
    from ..patches.mixer_catalog import MIXER_OF, PATCH_OF_FAMILY

    model_type = getattr(text_config(config), "model_type", None)
    pid = MIXER_OF.get((layer_type, model_type))
    if pid is None:
        family = PATCH_OF_FAMILY.get(model_type)
        if family is None or _runs(family, applied):
            known = sorted(m for t, m in MIXER_OF if t == layer_type)
            covers = f"; cpshim computes those of {', '.join(known)}" if known else ""
            return f"{model_type} has {layer_type} layers that no cpshim patch computes{covers}: train it without " \
                   "cpshim.enable()"
        pid, layer_type = family, "mixer"  # its patch does not run here, and this release names its layers otherwise
    if _runs(pid, applied):
        return None
    chosen = lifecycle.selection(pid)
    why = chosen.reason if chosen is not None and chosen.variant is None else "it is not applied (cpshim.apply())"
    return f"{model_type}'s {layer_type} layers are computed by patch {pid}, and {why}"


def _runs(pid: str, applied: bool) -> bool:
    """The patch is running, or (`applied` False) selected for the installed versions."""
    from .. import lifecycle

    if lifecycle.is_active(pid):
        return True
    chosen = lifecycle.selection(pid)
    return not applied and chosen is not None and chosen.variant is not None


def unpatched_causal_convs(model: Any) -> list[str]:
    """'name in OwnerClass' of each depthwise causal conv1d (groups = channels, padding kernel - 1: the token
    mixer of Mamba, DeltaNet, short-conv and RG-LRU layers) in `model`'s text (a VLM: its decoder) that no active
    mixer patch computes. Read from the modules, not the config: a config without `layer_types` (transformers
    4.x Bamba, Jamba) names no such layer, and those convs would run on each shard alone."""
    import torch

    from .. import lifecycle
    from ..patches.mixer_catalog import PATCH_OF_MIXER
    from .vlm import decoder_of

    root = decoder_of(model) or model
    covered: set[int] = set()
    found = []
    for name, m in root.named_modules():
        pid = PATCH_OF_MIXER.get((type(m).__module__, type(m).__name__))
        if pid is not None and lifecycle.is_active(pid):
            covered.update(id(c) for c in m.modules())
        elif (isinstance(m, torch.nn.Conv1d) and id(m) not in covered and m.groups == m.in_channels > 1
              and m.padding[0] == m.kernel_size[0] - 1 > 0):
            found.append(f"{name} in {type(root.get_submodule(name.rpartition('.')[0])).__name__}")
    return found


def conv_problem(model: Any) -> str | None:
    """The refusal for a model whose causal-conv mixers no active patch computes (None: none); once per model."""
    if model in _SCANNED:
        return _SCANNED[model]
    convs = unpatched_causal_convs(model)
    problem = None if not convs else (
        f"{type(model).__name__} has {len(convs)} sequence mixer(s) with a causal convolution that no active cpshim "
        f"patch computes under CP (first: {convs[0]}; each would run on its shard alone): on transformers >= 5.21 "
        "cpshim computes Gated DeltaNet, Mamba-2, Mamba-1 and LFM2 conv layers, on >= 5.23 RecurrentGemma's; "
        "otherwise train it without cpshim.enable()")
    _SCANNED[model] = problem
    return problem
