"""`cpshim check --model PATH_OR_TYPE`: what ring mode will do with a model, from its config alone.

The config is read locally (a directory holding config.json, a config.json file, or a model type of
the installed transformers, whose default config is used); no weights and no hub. The verdict is the
Trainer hook's own refusal rules (`trainer_hook.config_problems`) plus what is refused per batch for
the model's kind (images and audio for a vision-language model). It says what ring mode will refuse;
that a model it runs is exact is shown by the parity tests, for the families they train.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigurationError
from .vlm import IMAGE_BATCHES_EXACT


def load_config(spec: str) -> Any:
    from transformers import AutoConfig

    if os.path.isdir(spec) or os.path.isfile(spec):
        path = os.path.dirname(spec) if os.path.isfile(spec) else spec
        if os.path.isfile(spec) and os.path.basename(spec) != "config.json":
            raise ConfigurationError(f"--model {spec!r}: give a model directory or its config.json")
        try:
            return AutoConfig.from_pretrained(path, local_files_only=True)
        except Exception as e:
            raise ConfigurationError(f"--model {spec!r}: transformers cannot read this config ({e})") from e
    try:
        return AutoConfig.for_model(spec)
    except ValueError as e:  # transformers' message lists every model type it knows
        raise ConfigurationError(f"--model {spec!r} is neither a local model directory nor a model type of the "
                                 "installed transformers (AutoConfig.for_model does not know it)") from e


def verdict(config: Any, heads_k_stride: int = 1, table: bool = True) -> tuple[int, list[str]]:
    """(exit code as `cpshim check`: 0 ring mode runs it, 1 refuses it; lines to print, ending with the
    architecture table's row unless `table` is False)."""
    from transformers.models.auto import modeling_auto

    from .trainer_hook import config_problems

    name = getattr(config, "model_type", type(config).__name__)
    causal = set(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | set(
        getattr(modeling_auto, "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", {}))
    if name not in causal:
        return 1, [f"cpshim check --model: ring mode REFUSES {name}",
                   f"  {name} is not a causal language model in transformers' auto mappings (causal LM, "
                   "image-text-to-text): ring attention is causal by construction"]
    problems = config_problems(config, heads_k_stride, applied=False)
    if problems:
        head = [f"cpshim check --model: ring mode REFUSES {name}"]
        return 1, head + [f"  {p}" for p in problems] + _table(name, table)
    from ..patches.accelerate_prepare_cp import SLIDING, non_full_attention_layers, text_config
    from ..patches.mixer_catalog import CONV, HYBRID, LINEAR

    at_run = _refused_when_run(name) if table else None
    if at_run:
        return 1, [f"cpshim check --model: ring mode REFUSES {name}", f"  {at_run}"] + _table(name, table)
    kinds = non_full_attention_layers(config)
    how = ["full layers by the ring"]
    if SLIDING in kinds:
        how.append("sliding-window layers by a halo exchange of window - 1 tokens")
    if CONV in kinds:
        how.append("conv layers by a halo of kernel - 1 input rows (strategy='varlen' refused: transformers runs "
                   "them across packed documents)")
    if LINEAR in kinds or HYBRID in kinds:
        how.append(_recurrent(config))
    lines = [f"cpshim check --model: ring mode runs {name} ("
             + (", ".join(how) if len(how) > 1 else "full causal attention in every layer") + ")"]
    text = text_config(config)
    if getattr(text, "attn_logit_softcapping", None):
        lines.append(f"  attention logit softcap {text.attn_logit_softcapping}: computed by cpshim's reference kernels "
                     "(CPU); refused with CUDA kernels (ring-flash-attn 0.1.8 passes softcap=0 to flash_attn)")
    if getattr(config, "vision_config", None) is not None and name in IMAGE_BATCHES_EXACT:
        lines.append("  image and video batches with labels: the vision tower runs unsharded and the text decoder "
                     "(get_decoder()) is sharded at its entry, rope positions computed from the whole row "
                     "(zigzag/contiguous; varlen, packed position_ids and label-less trainers refused)")
    elif getattr(config, "vision_config", None) is not None:
        lines.append(f"  image and video batches are refused (exact only for {', '.join(IMAGE_BATCHES_EXACT)}); "
                     "text-only batches run")
    elif getattr(config, "audio_config", None) is not None:
        lines.append("  batches with audio (input_features, ...) are refused by name; text-only batches run")
    return 0, lines + _table(name, table)


def _recurrent(config: Any) -> str:
    """How the config's recurrent mixers run, from their patch's data: a core sharded by heads names the cp
    sizes its head counts allow (`info["head_shards"]["config_heads"]`)."""
    from ..patches.accelerate_prepare_cp import text_config
    from ..patches.mixer_catalog import MIXER_PATCHES, PATCH_OF_FAMILY

    text = text_config(config)
    pid = PATCH_OF_FAMILY.get(getattr(text, "model_type", None))
    info: dict[str, Any] = next((p.variants[0].info for p in MIXER_PATCHES if p.id == pid), {})
    spec = info.get("head_shards")
    if spec is None:  # Mamba-1/2 (their scans side by side, the state corrected after), RG-LRU
        return ("recurrent mixers with the state passed run to run over the CP group, the conv rows from a halo "
                "(strategy='varlen' refused)")
    named = [getattr(text, a, None) for a in spec["config_heads"]]
    counts = [c for c in named if isinstance(c, int)]
    if len(counts) < len(named):  # a release that names them otherwise: the rule, no sizes
        where = "where cp divides their head counts"
    else:
        sizes = [cp for cp in range(2, min(counts) + 1) if all(c % cp == 0 for c in counts)]
        where = (f"where cp divides {' and '.join(map(str, counts))} heads (cp = "
                 f"{', '.join(map(str, sizes)) or 'none'})")
    return (f"recurrent mixers' cores by head shards (an all-to-all of their inputs and outputs) {where}, else "
            "along the state passed run to run; the conv rows from a halo (strategy='varlen' refused)")


def _refused_when_run(model_type: str) -> str | None:
    """The refusal the architecture table's run met for this type (a property of its modeling code: attention
    outside the registry, positions numbered per shard), where the installed transformers is the table's."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import compat

    row = compat.architecture(model_type)
    try:
        installed = version("transformers")
    except PackageNotFoundError:
        return None
    if row.verdict == "refused" and row.transformers == installed and ": cpshim ring mode: " in row.reason:
        return row.reason.split(": cpshim ring mode: ", 1)[1] + " (found when the architecture table ran it)"
    return None


def _table(model_type: str, wanted: bool) -> list[str]:
    """The architecture table's row for the type: what a run of its tiny model showed."""
    from .. import compat

    if not wanted:
        return []
    row = compat.architecture(model_type)
    if row.verdict == "unknown":
        return [f"  architecture table: {model_type} is not in it (transformers {row.transformers})"]
    figures = (f" (loss err {row.figures['loss_rel_err']:.1e}, worst update err {row.figures['grad_rel_err_max']:.1e})"
               if row.figures else f": {row.reason}" if row.reason else "")
    return [f"  architecture table (transformers {row.transformers}, its default config shrunk): "
            f"{row.verdict}{figures}"]
