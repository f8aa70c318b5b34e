"""Label-less batches (TRL's DPO, KTO and reward trainers): the sequence sharded through the backbone only.

Their losses are non-linear in per-sequence values (log-prob sums through a sigmoid, a reward read at
the last token, a KL estimate), so a rank's partial sum is not enough. Here only the decoder backbone
(`model.base_model`: where attention mixes the sequence, and where the activations are) runs sharded.
Its entry shards the sequence keys; its exit all-gathers the hidden states over the CP group and
unshards them (`layout.gather`). Every head (the LM head, a score head) and the trainer's loss then run
on the whole sequence on each rank, as one process runs them: exact for any loss, at the price of the
head's work repeated on the cp ranks. Exchanges: one all-gather of the last hidden state per backbone
call, one all-reduce of its gradient in backward. TRL's fused log-prob head is the exception: its calls
are sharded at the model, the head runs on the shard and its per-token outputs are gathered instead
(`cpshim.ring.fused_head`).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Iterator

from . import fused_head, layout, runtime, sharding, tripwires
from .trainer_hook import _check_mask, _fail, _unwrap, check_documents, check_text_only

_signatures: dict[type, inspect.Signature] = {}


def backbone_of(model: Any) -> Any:
    """The module whose forward runs the decoder layers: PEFT's base model unwrapped, then its `base_model`."""
    hf = _unwrap(model)
    if hasattr(hf, "get_base_model"):
        hf = hf.get_base_model()
    return getattr(hf, "base_model", hf)


def called(trainer: Any, model: Any) -> tuple[list[Any], list[Any]]:
    """The models a trainer calls in a step (the policy and, if any, the reference model): their backbones,
    and the models as called (DDP unwrapped, a PEFT model kept: it calls the one inside by `forward`), where
    TRL's fused head is called."""
    backbones: list[Any] = []
    outer: list[Any] = []
    for candidate in (model, getattr(trainer, "model", None), getattr(trainer, "ref_model", None)):
        if candidate is None:
            continue
        b, m = backbone_of(candidate), _unwrap(candidate)
        if all(b is not other for other in backbones):
            backbones.append(b)
        if m is not b and all(m is not other for other in outer):
            outer.append(m)
    return backbones, outer


def _signature(module: Any) -> inspect.Signature:
    sig = _signatures.get(type(module))
    if sig is None:
        sig = _signatures[type(module)] = inspect.signature(module.forward)
    return sig


def check_trainer(trainer: Any) -> None:
    """Refused: a TRL trainer that precomputed its reference log-probs outside cpshim's replicated scope (a TRL
    without a variant of `trl-*-precompute-gather`, or cpshim enabled after the trainer was built): gathered
    over every process, CP peers among them, rows received other rows' values."""
    from ..patches.trl_preference import precomputed

    if getattr(getattr(trainer, "args", None), "precompute_ref_log_probs", False) and trainer not in precomputed:
        raise _fail(f"{type(trainer).__name__} precomputed its reference log-probs outside cpshim's scope, gathered "
                    "once per CP rank (rows got other rows' values). Call cpshim.enable() before building the "
                    "trainer, on a TRL that `cpshim report` lists trl-*-precompute-gather as active for, or set "
                    "precompute_ref_log_probs=False")


def _kwargs(module: Any, args: tuple, kwargs: dict) -> dict:
    """The call's arguments by name (a score head passes input_ids positionally)."""
    if not args:
        return dict(kwargs)
    sig = _signature(module)
    bound = sig.bind(*args, **kwargs).arguments
    out: dict = {}
    for name, value in bound.items():
        if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


@dataclass
class _Call:
    """A sharded call in flight: its step and layout, the step before it, whether under grad, the rows' shape and
    left padding (`layout.left_padding`); for a fused-head call its whole shifted labels and whether shifted here."""

    step: Any
    layout: Any
    before: Any
    grad: bool
    batch: int
    length: int
    lead: Any
    targets: Any = None
    trimmed: bool = False


class _Calls:
    """The backbone calls of one training (or eval) step. A call under grad keeps its step current after it
    returns: gradient checkpointing recomputes the layers during backward, where the ring must run again
    over the same shards. A call under no_grad (the reference model) restores the step before it."""

    def __init__(self, group: Any, rank: int, cp: int) -> None:
        self.group, self.rank, self.cp = group, rank, cp
        self.stack: list[_Call | None] = []  # per call in flight; None: a call passed through (nested, generation)
        self.kept: Any = None  # (step, layout) of the last call under grad

    def _passing(self) -> bool:
        if runtime.is_generating() or any(entry is not None for entry in self.stack):
            self.stack.append(None)  # generation (unsharded), or a backbone called inside one already sharded
            return True
        return False

    def enter(self, module: Any, args: tuple, kwargs: dict) -> Any:
        return None if self._passing() else self._shard(module, _kwargs(module, args, kwargs), {}, None, False)

    def enter_head(self, module: Any, args: tuple, kwargs: dict) -> Any:
        """A model's call through TRL's fused head: sharded here, with its shifted labels (its backbone's call
        inside it then passes through)."""
        if not fused_head.fused_call(kwargs) or self._passing():
            return None
        kw = _kwargs(module, args, kwargs)
        targets, trimmed = fused_head.shift(kw)
        return self._shard(backbone_of(module), kw, {"shift_labels": -100}, targets, trimmed)

    def _shard(self, module: Any, kw: dict, pad: dict, targets: Any, trimmed: bool) -> Any:
        import torch

        settings = runtime.settings
        strategy = settings["strategy"]
        check_text_only(kw)
        ref = kw.get("input_ids") if kw.get("input_ids") is not None else kw.get("inputs_embeds")
        if ref is None:
            raise _fail(f"{type(module).__name__} was called without input_ids or inputs_embeds")
        if kw.get("past_key_values") is not None or kw.get("output_attentions"):
            raise _fail("a KV cache or attention weights from a sharded backbone call are not supported "
                        "(the ring computes no attention weights): pass use_cache=False, output_attentions=False")
        batch, length = ref.shape[:2]
        mask = kw.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise _fail(f"a {mask.dim()}-D attention_mask reached {type(module).__name__}: pass a 2-D padding "
                        "mask (or none); the ring is causal over the whole row")
        if kw.get("position_ids") is None:  # what one process uses: 0..L-1 per row
            kw["position_ids"] = sharding.build_position_ids(batch, length, ref.device)
        lead = layout.left_padding(mask)
        if lead is not None:  # GRPO's left-padded prompts: each row rolled to right padding (see layout.roll)
            for k in layout.seq_keys(kw, batch, length):
                kw[k] = layout.roll(kw[k], lead)
            mask = kw["attention_mask"]
        _check_mask(mask)
        check_documents(kw, strategy)
        if length < sharding.multiple_for(strategy, self.cp):
            raise _fail(f"sequence length {length} is shorter than {sharding.multiple_for(strategy, self.cp)} "
                        f"({strategy} with cp={self.cp}): use longer sequences or a smaller cp_size")
        kw.pop("cache_position", None)  # no cache (below): the backbone builds it from the local length
        if "use_cache" in kw or "use_cache" in _signature(module).parameters:
            kw["use_cache"] = False  # a cache would hold this rank's shard only
        if settings["check_batches"] and kw.get("input_ids") is not None:
            tripwires.check_same_batch(kw["input_ids"], self.group, self.rank)
        lay = layout.shard_keys(kw, layout.seq_keys(kw, batch, length), strategy, self.cp, self.rank, pad)
        step = lay.step(self.group, settings, module)
        step.replicated = True
        step.watching = tripwires.watch(step)
        grad = torch.is_grad_enabled()
        if grad and self.kept is not None and getattr(module, "gradient_checkpointing", False) \
                and not _same_shards(self.kept[1], lay):
            raise _fail("two backbone calls under grad with different sequence layouts in one step, with gradient "
                        "checkpointing on: its recompute in backward could not tell their shards apart. Turn "
                        "gradient checkpointing off, or pad both calls to one length")
        self.stack.append(_Call(step, lay, runtime.current_step(), grad, batch, length, lead, targets, trimmed))
        runtime.set_step(step)
        return (), kw

    def _close(self) -> "_Call | None":
        entry = self.stack.pop()
        if entry is None:
            return None
        for handle in entry.step.watching:
            handle.remove()
        tripwires.check_all_ran(entry.step)
        if entry.grad:
            self.kept = (entry.step, entry.layout)
        else:
            runtime.set_step(entry.before)
        return entry

    def exit(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        entry = self._close()
        if entry is None:
            return None
        return _gathered(output, entry.step, entry.batch, entry.length, entry.lead, type(module).__name__)

    def exit_head(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        if not fused_head.fused_call(kwargs):
            return None
        entry = self._close()
        if entry is None:
            return None
        return fused_head.gathered(output, entry.step, entry.targets, entry.trimmed, entry.lead,
                                   kwargs.get("num_items_in_batch"))


def _same_shards(a: Any, b: Any) -> bool:
    import torch

    return (a.batch, a.length, a.padded) == (b.batch, b.length, b.padded) and \
        ((a.cu is None and b.cu is None) or (a.cu is not None and b.cu is not None and torch.equal(a.cu, b.cu)))


def _gathered(output: Any, step: Any, batch: int, length: int, lead: Any, name: str) -> Any:
    """The backbone's output with every per-position tensor made whole (hidden states, each layer's too) and
    rolled back to the rows' own padding."""
    local = (1 if step.varlen is not None else batch, step.local_len)

    def whole(key: Any, value: Any) -> Any:
        if value is None or key == "past_key_values":  # a cache would hold this rank's shard only
            return None
        if isinstance(value, (tuple, list)):
            return type(value)(whole(key, v) for v in value)
        if hasattr(value, "dim") and value.dim() >= 2 and tuple(value.shape[:2]) == local:
            whole_rows = layout.gather(value, step, batch, length)
            return whole_rows if lead is None else layout.roll(whole_rows, -lead)
        raise _fail(f"{name} returned {key} ({type(value).__name__}{tuple(getattr(value, 'shape', ()))}), which "
                    "does not run along the sequence in a form cpshim can gather (MoE router logits?): train "
                    "without output_router_logits, or without cpshim.enable()")

    if isinstance(output, tuple):
        return tuple(whole(i, v) for i, v in enumerate(output))
    for key in list(output.keys()):
        output[key] = whole(key, output[key])
    return output


@contextlib.contextmanager
def sharded(trainer: Any, models: tuple[list[Any], list[Any]], group: Any, rank: int, cp: int,
            training: bool) -> Iterator[None]:
    """The step context of a label-less batch: each backbone's calls sharded, and each model's calls through
    TRL's fused head (hooks removed at exit), the trainer's gathers (TRL's metrics, KTO's KL estimate) over
    data-parallel ranks: its values are the same on every rank of the group."""
    calls = _Calls(group, rank, cp)
    before = runtime.current_step()
    handles = []
    backbones, outer = models
    for m in backbones:
        if training:
            tripwires.arm(m)  # a training forward of the backbone outside a step is unsharded: refused
        handles.append(m.register_forward_pre_hook(calls.enter, with_kwargs=True, prepend=True))
        handles.append(m.register_forward_hook(calls.exit, with_kwargs=True))
    for m in outer:
        handles.append(m.register_forward_pre_hook(calls.enter_head, with_kwargs=True, prepend=True))
        handles.append(m.register_forward_hook(calls.exit_head, with_kwargs=True))
    try:
        with runtime.replicated(trainer):
            yield
    finally:
        for h in handles:
            h.remove()
        runtime.set_step(before)
