"""The facts of one sharded step, shared by the Trainer hook, attention routing and tripwires."""

from __future__ import annotations

from typing import Any

from ..patches.mixer_catalog import MIXER_CLASSES
from . import eager, vlm


class Step:
    def __init__(self, *, cp: int, rank: int, group: Any, strategy: str, local_len: int, global_len: int,
                 padding: int, heads_k_stride: int, ring_dtype: str, model: Any, varlen: Any = None,
                 cu: tuple[int, ...] | None = None) -> None:
        self.cp, self.rank, self.group, self.strategy = cp, rank, group, strategy
        self.local_len, self.global_len, self.padding = local_len, global_len, padding
        self.heads_k_stride, self.ring_dtype, self.varlen = heads_k_stride, ring_dtype, varlen
        self.cu = cu  # varlen: the packed stream's document boundaries (global positions)
        self.windows: dict[int, Any] = {}  # id(attention module) -> its sliding window from the config, or None
        # Modules that must run the ring this step (accelerate's rule: names ending in "self_attn"), in the text
        # decoder of a vision-language model: its towers' `self_attn` never see the sharded sequence (not run on
        # a text batch; whole images, upstream's attention, on an image batch).
        decoder = vlm.decoder_of(model)
        inside = None if decoder is None else {id(m) for m in decoder.modules()}
        self.expected = {name: m for name, m in model.named_modules()
                         if name.endswith("self_attn") and (inside is None or id(m) in inside)}
        # Mixers other than attention that must run their CP path (their registry patch): LFM2's conv layers.
        self.mixers = {name: m for name, m in model.named_modules() if (type(m).__module__, type(m).__name__)
                       in MIXER_CLASSES and (inside is None or id(m) in inside)}
        self.eager = eager.configs(self.expected.values())  # routed to the ring while this step is current
        self.ran: set[int] = set()
        self.called: set[int] = set()  # attention-like modules that ran (`tripwires.watch`), and its hooks
        self.watching: list[Any] = []
        self.model = model
        self.evaluating = False  # an eval step (prediction_step, under no_grad): outputs made CP-replicated
        self.unshard_shape: tuple[int, int] | None = None  # eval: (batch, length) to restore logits to
        self.replicated = False  # a backbone step: what the trainer computes after it is the same on every rank
        # A vision-language step (`cpshim.ring.vlm`): the model the Trainer calls, the ids of its modules outside
        # the text decoder (their attention is upstream's), and (decoder, pre-hook sharding its arguments).
        self.root: Any = model
        self.outside: frozenset[int] = frozenset()
        self.entry: Any = None
