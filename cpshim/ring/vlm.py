"""Vision-language batches under ring CP: the towers run unsharded, and the text decoder is sharded at its entry.

A VLM's forward runs its vision tower over whole images and places the features at the image tokens of
the embedded row. It computes the rope positions from the whole row (Qwen2/2.5/3-VL mrope: (3 or 4, B, L)),
and only then hands the sequence to its text decoder (`get_decoder()`). So the batch enters the model
whole, and a pre-hook on the decoder shards what the decoder receives:
- `inputs_embeds` and every (B, L, ...) argument on dim 1;
- position ids on their last dim;
- side inputs whose rows are picked by a (B, L) mask (`ROWS_AT`: Qwen3-VL's deepstack features at
  `visual_pos_masks`) down to the rows of this rank's positions.
The Trainer hook shards the labels with the same layout. The decoder's local hidden states then meet
their own targets, and the loss is this rank's share, as for a text batch. The tower's attention calls
during the step are upstream's, in forward and in a checkpointed recompute: the step lists every module
outside the decoder (`Step.outside`), and routing passes those through.
"""

from __future__ import annotations

from typing import Any

#: Batch keys of another modality than text: the model runs a tower over them (its own attention, over
#: patches or frames, not the text sequence) and places the result at placeholder tokens of the row.
MODALITY_PREFIXES = ("pixel_values", "input_features", "audio_values", "image_embeds", "video_embeds")
#: Decoder arguments that are lists of rows, picked from the (B, L) positions where a mask argument is True.
ROWS_AT = {"deepstack_visual_embeds": "visual_pos_masks"}
#: Model types whose image batches are exact under ring CP against one process (`tests/architectures`). Image
#: batches of another VLM are refused: its decoder may attend otherwise to image tokens (Gemma 3 and PaliGemma
#: attend bidirectionally within an image, which a causal ring does not), or place features otherwise.
IMAGE_BATCHES_EXACT = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "internvl")
#: Decoder arguments that pass through unchanged: loss kwargs the model forwards everywhere (already sharded
#: or scalars), flags.
_PASSING = ("shift_labels", "num_items_in_batch")


def modality_keys(inputs: Any) -> list[str]:
    if not isinstance(inputs, dict):
        return []
    return sorted(k for k in inputs if k.startswith(MODALITY_PREFIXES) and inputs[k] is not None)


def _fail(reason: str) -> Exception:
    from ..errors import CpshimRuntimeError

    return CpshimRuntimeError(f"cpshim ring mode: {reason}")


def decoder_of(model: Any) -> Any:
    """The text decoder a vision-language model hands the merged sequence to, or None."""
    config = getattr(model, "config", None)
    if getattr(config, "vision_config", None) is None or not hasattr(model, "get_decoder"):
        return None
    decoder = model.get_decoder()
    if decoder is None or decoder is model or not any(n.endswith("self_attn") for n, _ in decoder.named_modules()):
        return None
    return decoder


def enters_at_decoder(trainer: Any, model: Any) -> bool:
    """A text-only batch of a vision-language model that takes no loss kwargs (Qwen2.5-VL, Qwen3-VL, GLM-4V,
    ...) is sharded at its decoder's entry too: only there can the batch carry the target count its loss needs
    (`shard_labels`), and the rope positions are whole-row ones (the entry hook builds 0..L-1 where the model
    passes none)."""
    return getattr(trainer, "model_accepts_loss_kwargs", True) is False and decoder_of(model) is not None


def check(model: Any, inputs: dict, strategy: str) -> Any:
    """Refuse a vision-language batch ring mode cannot shard at a decoder's entry; return the decoder."""
    from . import sharding

    found = modality_keys(inputs)
    carries = ", ".join(found) or "text only"
    decoder = decoder_of(model)
    if decoder is None:
        raise _fail(f"the batch carries {carries}, and {type(model).__name__} has no text decoder that "
                    "cpshim can shard at its entry (`get_decoder()` of a model with a vision_config): train it "
                    "on text-only batches with cpshim.enable(), or without CP")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if found and model_type not in IMAGE_BATCHES_EXACT:
        raise _fail(f"the batch carries {carries}, and image batches of {model_type} are not proven exact "
                    f"under ring CP (they are for {', '.join(IMAGE_BATCHES_EXACT)}); its decoder may attend otherwise "
                    "to image tokens than a causal ring does: train it on text-only batches with cpshim.enable(), "
                    "or without CP")
    if strategy == "varlen":
        raise _fail(f"vision-language batches ({carries}) run under strategy 'zigzag' or 'contiguous'; "
                    "'varlen' (packed rows) is not supported for them yet")
    position_ids = inputs.get("position_ids")
    if position_ids is not None and (found or sharding.packed_rows(position_ids)):
        raise _fail("a vision-language batch with position_ids: the model computes its rope positions from the "
                    "whole row, and packed rows are not supported for it yet; drop position_ids from the batch")
    return decoder


def shard_labels(trainer: Any, model: Any, inputs: dict, strategy: str, cp: int, rank: int, group: Any,
                 settings: dict) -> tuple:
    """A labelled vision-language batch: the labels (and their full-length shift) sharded, everything else whole.
    Returns (the step, whose decoder entry shards the rest; the inputs).

    Qwen2.5-VL and Qwen3-VL declare `accepts_loss_kwargs = False`: the Trainer passes them no target count, and
    their loss is the mean over the targets they see, which on a shard is not a share of the batch's mean. For
    those the batch carries `num_items_in_batch` = the batch's targets / cp: each rank's loss is then cp x its
    share of the sum over the batch's count, and the data-parallel mean over the cp ranks of the group is the
    batch's mean, as one process computes it (the Trainer scales neither)."""
    from . import layout, sharding

    decoder = check(model, inputs, strategy)
    inputs = dict(inputs)
    keys = {k: inputs[k] for k in ("labels", "shift_labels") if inputs.get(k) is not None}
    if "shift_labels" not in keys:  # full-length targets, built before sharding (as for a text batch)
        keys["shift_labels"] = sharding.build_shift_labels(keys["labels"])
    batch, length = keys["shift_labels"].shape[:2]
    if getattr(trainer, "model_accepts_loss_kwargs", True) is False and inputs.get("num_items_in_batch") is None:
        inputs["num_items_in_batch"] = (keys["shift_labels"] != sharding.IGNORE_INDEX).sum() / cp
    lay = layout.shard_keys(keys, list(keys), strategy, cp, rank, dict.fromkeys(keys, sharding.IGNORE_INDEX))
    inputs.update(keys)
    step = lay.step(group, settings, decoder)
    decoder_modules = {id(m) for m in decoder.modules()}
    step.outside = frozenset(id(m) for m in model.modules() if id(m) not in decoder_modules)
    step.root = model
    step.entry = (decoder, _entry_hook(step, batch, length))
    return step, inputs


def _entry_hook(step: Any, batch: int, length: int) -> Any:
    """The decoder's forward pre-hook: its arguments sharded to this rank's positions (see the module doc)."""
    from . import sharding

    def shard(t: Any, dim: int, value: Any) -> Any:
        return sharding.shard(sharding.pad_for_strategy(t, dim, step.cp, step.strategy, value), dim, step.rank,
                              step.cp, step.strategy)

    def hook(module: Any, args: tuple, kwargs: dict) -> Any:
        name = type(module).__name__
        if args:
            raise _fail(f"{name} was called with positional arguments; cpshim shards its keyword arguments only")
        kw = dict(kwargs)
        embeds = kw.get("inputs_embeds")
        if embeds is None or tuple(embeds.shape[:2]) != (batch, length):
            raise _fail(f"{name} did not receive the merged sequence as inputs_embeds of shape ({batch}, {length}, "
                        f"...): got {None if embeds is None else tuple(embeds.shape)}")
        if kw.get("past_key_values") is not None:
            raise _fail(f"{name} was called with a KV cache on a sharded step: pass use_cache=False")
        kw.pop("cache_position", None)  # the decoder builds it from the local length; the positions are sharded
        if kw.get("position_ids") is None:  # the model passed none: the decoder would count each shard from 0
            kw["position_ids"] = sharding.build_position_ids(batch, length, embeds.device)
        if "use_cache" in kw:
            kw["use_cache"] = False  # a cache would hold this rank's shard only
        for rows_key, mask_key in ROWS_AT.items():
            if kw.get(rows_key) is not None:
                kw[rows_key] = _local_rows(kw[rows_key], kw.get(mask_key), shard, name, rows_key, mask_key)
        for key, value in list(kw.items()):
            if key in ROWS_AT or key in _PASSING or not hasattr(value, "dim"):
                if isinstance(value, (list, tuple)) and any(hasattr(v, "dim") for v in value) and key not in ROWS_AT:
                    raise _fail(f"{name} received {key}, a list of tensors cpshim cannot place on the shards")
                continue
            if key == "position_ids" and value.shape[-1] == length:
                kw[key] = sharding.pad_position_ids(value, step.cp, step.strategy)
                kw[key] = sharding.shard(kw[key], value.dim() - 1, step.rank, step.cp, step.strategy)
            elif value.dim() >= 2 and tuple(value.shape[:2]) == (batch, length):
                kw[key] = shard(value, 1, False if value.dtype == _bool() else 0)
            elif value.dim() > 0:
                raise _fail(f"{name} received {key} of shape {tuple(value.shape)}, which does not run along the "
                            f"({batch}, {length}) sequence: cpshim cannot shard it")
        return (), kw

    return hook


def _bool() -> Any:
    import torch

    return torch.bool


def _local_rows(rows: Any, mask: Any, shard: Any, name: str, rows_key: str, mask_key: str) -> Any:
    """The rows of `rows` (each tensor: one row per True position of the (B, L) `mask`, row-major) at this rank's
    positions, in the order the sharded mask lists them."""
    if mask is None:
        raise _fail(f"{name} received {rows_key} without {mask_key}: cpshim cannot tell which positions they are at")
    index = (mask.reshape(-1).cumsum(0) - 1).reshape(mask.shape)  # row of each True position
    local = shard(mask, 1, False)
    picked = shard(index, 1, 0)[local]
    return type(rows)(r.index_select(0, picked) for r in rows)
