"""Trainer counters under ring CP: tokens seen and FLOPs counted once per CP group.

Every rank of a CP group counts the whole (unsharded) batch, and upstream sums the counts over every
process: `num_input_tokens_seen` and `total_flos` came out cp times one process's. In ring mode the
tokens are summed over the DP group, and only the first rank of each CP group adds its FLOPs.
"""

from __future__ import annotations

from typing import Any

from ..ring import data_parallel
from .views import AttributeView


def tokens_over_data_parallel(call: Any, trainer: Any, inputs: Any) -> Any:
    """`Trainer._track_num_input_tokens` (5.x). Keeps: upstream's count of the batch. Turns off: summing it
    over the cp ranks that share the batch (the sum runs over data-parallel ranks)."""
    g = data_parallel.owned_groups(call.mode, trainer.accelerator)
    if g is None:
        return call.original(inputs)
    accelerator = AttributeView(trainer.accelerator, gather=lambda data: data_parallel.gather(data, g))
    return call.original.__func__(AttributeView(trainer, accelerator=accelerator), inputs)


def flos_once_per_group(call: Any, trainer: Any) -> Any:
    """`Trainer.store_flos` (4.56-5.24). Keeps: upstream's sum over processes. Turns off: the FLOPs of the
    cp-1 ranks that computed shards of a batch their group's first rank already counted in full."""
    g = data_parallel.owned_groups(call.mode, trainer.accelerator)
    if g is not None and g.cp_rank != 0:  # same type as its peers' (a float after a step): one tensor dtype
        trainer.current_flos = type(trainer.current_flos)()
    return call.original()
