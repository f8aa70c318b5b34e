"""RecurrentGemma's recurrent block (Griffin's RG-LRU) under CP: one run of the shard from the carry before it.

The block is two per-token branches, a depthwise causal conv1d of k taps (`conv_1d`, torch's Conv1d with
k - 1 zero padding) on one of them, and the RG-LRU, a diagonal linear recurrence h_t = a_t * h_{t-1} + x_t
whose state (lru_width per row, float32) carries everything before a position; `a_t` is zeroed where
position_ids is 0 (a document's start), so packed rows restart by themselves. The run a rank holds needs the
k conv input rows before it and that state: the carry of `cpshim.ring.carry_state`, passed along the sequence
over the CP group point to point (the same exchange and chain as Mamba's, for the same reasons).

Upstream takes both, in its own way: with `use_cache=True` the block keeps `conv1d_state` and its RG-LRU's
`recurrent_states` as module attributes, and the RG-LRU's scan starts from that state; its prefill convolves
from zeros, so for the run's call the module's `conv_1d` convolves the carried rows prepended to the run's
rows and returns the outputs of the run's rows. After the call the state the scan left is read from the
module, and both attributes are cleared as `use_cache=False` leaves them. Upstream's code and math run
unchanged; cpshim only sets what they read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def run(call: Any, module: Any, hidden: Any, local: int, length: int, carry: tuple, kwargs: dict
        ) -> tuple[Any, tuple]:
    """One run: upstream's forward on rows local .. local + length with the carry's conv rows (batch, lru_width,
    k) and state (batch, lru_width); returns its output and the carry it leaves."""
    import torch

    rows, state = carry
    mine = hidden[:, local:local + length]
    positions = kwargs.get("position_ids")
    if positions is None:
        from .tripwires import TripwireError

        raise TripwireError(f"cpshim ring mode: {type(module).__name__} was called without position_ids, which "
                            "its recurrence reads (a document starts where they are 0): report this "
                            "transformers release to cpshim")
    b = mine.shape[0]
    lru = module.rg_lru
    module.conv1d_state = mine.new_zeros((b, module.lru_width, module.conv1d_width - 1))  # read only when decoding
    lru.recurrent_states = (mine.new_zeros((b, module.lru_width), dtype=torch.float32) if state is None
                            else state)
    left: dict = {}
    try:
        with _convolved_after(module.conv_1d, rows, module.conv1d_width, left):
            out = call.original(mine, **{**kwargs, "position_ids": positions[..., local:local + length],
                                         "use_cache": True})
        return out, (left["rows"], lru.recurrent_states)
    finally:
        module.conv1d_state = None
        lru.recurrent_states = None


def last_columns(full: Any, k: int) -> Any:
    """The k conv input columns a run leaves for the next (zeros in front when it holds fewer: upstream's
    padding at the sequence start)."""
    import torch.nn.functional as F

    tail = full[..., -k:]
    return F.pad(tail, (k - tail.shape[-1], 0)) if tail.shape[-1] < k else tail


@contextlib.contextmanager
def _convolved_after(conv: Any, rows: Any, k: int, left: dict) -> Iterator[None]:
    """Within: `conv(x)` convolves `rows` (k columns before x; None at the sequence start: upstream's zeros)
    then x, returning what upstream's conv returns for x alone; `left["rows"]` gets the k columns it ends with."""
    import torch

    def forward(x: Any) -> Any:
        full = x if rows is None else torch.cat([rows.to(x.dtype), x], dim=-1)
        left["rows"] = last_columns(full, k)
        return type(conv).forward(conv, full)[..., full.shape[-1] - x.shape[-1]:]

    conv.forward = forward
    try:
        yield
    finally:
        del conv.forward
