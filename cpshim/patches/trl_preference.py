"""TRL's DPO and KTO reference log-prob precompute under ring CP: gathered over data-parallel ranks.

`_precompute_ref_logps` (DPO 0.29-1.16, KTO 1.8-1.16) runs the reference model over the prepared
dataloader, gathers each batch's values with `gather_for_metrics` over every process and assigns them
to the dataset's rows in order. The ranks of a CP group hold the same batches, so upstream's gather
returned each row cp times and row i received another row's reference log-probs (measured: DPO's
first loss 3.05 for one process's 0.693). The values are the same on every rank of the group (the
precompute runs unsharded), so in ring mode the call runs in the replicated scope, where
`eval-gather-for-metrics` gathers over data-parallel ranks only.
"""

from __future__ import annotations

import weakref
from typing import Any

from ..modes import RING, cp_owned

#: Trainers whose reference log-probs were precomputed in the replicated scope (the backbone hook refuses
#: a precomputing trainer that is not among them: its values came from a gather over every process).
precomputed: "weakref.WeakSet[Any]" = weakref.WeakSet()


def precompute_ref_logps(call: Any, trainer: Any, *args: Any, **kwargs: Any) -> Any:
    """Impl of `trl-dpo-precompute-gather` and `trl-kto-precompute-gather`. Keeps: the whole method.
    Adds (ring mode): the scope in which its gathers are over data-parallel ranks."""
    if call.mode != RING or not cp_owned(getattr(trainer.accelerator, "parallelism_config", None)):
        return call.original(*args, **kwargs)
    from ..ring import runtime

    with runtime.replicated(trainer):
        out = call.original(*args, **kwargs)
    precomputed.add(trainer)
    return out
