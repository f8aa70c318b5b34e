"""TRL's fused log-prob head (TRL >= 1.15) on the backbone path: the head on this rank's shard, its per-token
outputs all-gathered.

DPO, KTO, GRPO and RLOO call `model(..., labels=labels, fused_lm_head=True)` (`trl.trainer.utils.add_fused_lm_head`):
the backbone, then the LM head in tiles, returning per-token log-probs (and entropies, ...) instead of logits.
Gathered at the backbone's exit, the hidden states would make every rank run that head over the whole sequence,
and keep the hidden states and their gradient whole. So such a call is sharded at the model instead: the labels
shifted over the whole row first (`shift_labels`, which TRL's head scores unshifted, as it does under its own CP),
sharded with the inputs, the head run on the shard, and its per-token outputs all-gathered (`layout.gather`: one
value per token where the hidden states are hidden-size; its backward sums the gradient over the group). The mask
and the head's mean loss are computed again on the whole sequence, as TRL computes them.
"""

from __future__ import annotations

from typing import Any

from . import layout
from .trainer_hook import _fail


def fused_call(kwargs: dict) -> bool:
    return bool(kwargs.get("fused_lm_head"))


def shift(kw: dict) -> tuple[Any, bool]:
    """The call's next-token targets over the whole row (`kw` loses `labels`, gains `shift_labels`): TRL's head
    drops the last position of `labels`, so the shifted row ends with -100 and the outputs lose it again (True)."""
    import torch

    labels = kw.pop("labels", None)
    if kw.get("shift_labels") is not None:
        return kw["shift_labels"], False
    if labels is None:
        raise _fail("TRL's fused LM head was called without labels or shift_labels: it has nothing to score")
    kw["shift_labels"] = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    return kw["shift_labels"], True


def gathered(output: Any, step: Any, whole_targets: Any, trimmed: bool, lead: Any, num_items: Any) -> Any:
    """The fused head's output on the shard, made whole: per-token fields gathered and rolled back to the rows'
    padding (`lead`), `label_mask` and `loss` from the whole rows (TRL's mean over the scored tokens, or over
    `num_items_in_batch`)."""
    batch, length = whole_targets.shape[:2]
    local = (1 if step.varlen is not None else batch, step.local_len)
    if getattr(output, "aux_loss", None) is not None:
        raise _fail("TRL's fused LM head returned a router load-balancing loss (MoE output_router_logits): under "
                    "cpshim ring mode it would count this rank's shard only. Train without output_router_logits, "
                    "or without cpshim.enable()")
    import torch

    cut = (lambda t: t[:, :-1]) if trimmed else (lambda t: t)
    mask = cut(whole_targets != -100)
    for key in list(output.keys()):
        value = output[key]
        if key == "label_mask":
            output[key] = mask
        elif key != "loss" and hasattr(value, "shape") and tuple(value.shape[:2]) == local:
            flag = value.dtype == torch.bool  # TRL's is_top1: gathered as integers
            whole = layout.gather(value.to(torch.uint8) if flag else value, step, batch, length)
            whole = whole if lead is None else layout.roll(whole, -lead)
            output[key] = cut(whole.bool() if flag else whole)
        elif key != "loss":
            raise _fail(f"TRL's fused LM head returned {key} ({type(value).__name__}), which cpshim cannot gather "
                        "over the CP group (a TRL newer than cpshim knows?): train without cpshim.enable()")
    denominator = mask.sum().clamp(min=1) if num_items is None else num_items
    output["loss"] = -output["log_probs"].sum() / denominator
    return output
