"""What ring mode needs of a model's positions: that `position_ids` reach it and mean what it would count.

The Trainer hook computes position ids from the whole row (0..L-1 per row, or per document) before it
shards, and passes each rank its share. That is exact for a model whose positions come from
`position_ids` (rope, or learned/sinusoidal tables indexed by them). Two kinds of model number their own
positions from what they see, which under CP is one shard:
- a forward that takes no `position_ids` (the BART/Pegasus/Whisper decoders: positions from the input's
  own length), so every rank but the first would read positions 0.. again;
- the RoBERTa convention (`create_position_ids_from_input_ids`, copied into XLM-R, CamemBERT,
  Data2Vec-text, Kosmos-2.5, ...): positions start at `padding_idx + 1` when none are passed, while
  passed ids are used as they are, so the ring's 0..L-1 would be other positions than one process reads.
Both are refused by name (found by these features, not by model type). A model that reads no positions at
all takes none and needs none: no attention, no position table, only mixers whose patch carries the state along
the sequence (pure Mamba-2).
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Mapping


def _numbers_from_padding(module: Any) -> bool:
    """The convention's function is a method of the embeddings (5.x) or of their modeling file (4.x)."""
    if getattr(module, "padding_idx", None) is None:
        return False
    home = sys.modules.get(type(module).__module__)
    return hasattr(module, "create_position_ids_from_input_ids") or hasattr(home, "create_position_ids_from_input_ids")


def reads_no_positions(model: Any) -> bool:
    """Only patched mixers mix the sequence (a recurrence sees order through its carried state) and the only
    embedding is the token table: no attention module, no position table to index."""
    import torch

    from ..patches.mixer_catalog import PATCH_OF_MIXER

    tokens = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    mixers = 0
    for m in model.modules():
        if (type(m).__module__, type(m).__name__) in PATCH_OF_MIXER:
            mixers += 1
        elif "Attention" in type(m).__name__ or (isinstance(m, torch.nn.Embedding) and m is not tokens):
            return False
    return mixers > 0


def problems(model: Any) -> list[str]:
    if hasattr(model, "get_base_model"):  # a PEFT model's forward is (*args, **kwargs): ask the model it wraps
        model = model.get_base_model()
    name = type(model).__name__
    params: Mapping[str, inspect.Parameter]
    try:  # the class's forward: trainers and accelerate replace the instance's with (*args, **kwargs) wrappers
        params = inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):  # no signature to read: nothing to say
        params = {}
    named = [p for p in params.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][1:]  # past self
    takes = "position_ids" in params or not named or reads_no_positions(model)
    if not takes:
        return [f"{name}.forward takes no position_ids: its positions are numbered from each shard's own length, "
                "so every rank but the first would read the wrong positions; ring mode needs a model that takes "
                "position_ids (train this one without cpshim.enable())"]
    counting = next((n for n, m in model.named_modules() if _numbers_from_padding(m)), None)
    if counting is not None:
        return [f"{name}'s {counting} numbers positions from padding_idx + 1 when none are passed (the RoBERTa "
                "convention), and ring mode passes each shard its share of 0..L-1: positions would differ from "
                "one process; train it without cpshim.enable()"]
    return []
