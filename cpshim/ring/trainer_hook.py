"""Mode `ring` inside `Trainer._prepare_context_parallel_inputs`: check, pad and shard the batch.

A batch with labels comes with upstream's full-length `position_ids` and `shift_labels` already built
(no target is lost at shard boundaries); a label-less one goes on unsharded to `cpshim.ring.backbone`.
Returns the step context that the Trainer wraps forward and backward in.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from ..errors import CpshimRuntimeError
from ..patches.accelerate_prepare_cp import ring_layers_problem, text_config
from . import layout, positions, runtime, sharding, tripwires, vlm
from .step import Step

_REFUSED_ATTENTION = ("flex_attention",)


def _fail(reason: str) -> CpshimRuntimeError:
    return CpshimRuntimeError(f"cpshim ring mode: {reason}")


def _unwrap(model: Any) -> Any:
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return model


def config_problems(config: Any, heads_k_stride: int = 1, provider: str | None = None,
                    applied: bool = True) -> list[str]:
    """What ring attention over the whole sequence would compute wrongly for a model of this config (the
    refusals of `check_model`, also answered by `cpshim check --model` without building the model). `provider`:
    the kernel provider ring-flash-attn is bound to (None: not known yet); `applied`: the mixer patches a conv
    layer needs must run (False: be selected, as `cpshim check --model` asks before anything is applied)."""
    out = []
    impl = getattr(config, "_attn_implementation", None)
    if impl in _REFUSED_ATTENTION:
        out.append(f"attn_implementation={impl!r} is not routed through transformers' attention registry; "
                   "load the model with attn_implementation='sdpa', 'eager' or 'flash_attention_2'")
    layers = ring_layers_problem(config, type(config).__name__.removesuffix("Config"), applied)
    if layers:
        out.append(layers)
    text = text_config(config)
    if getattr(text, "attention_dropout", None):
        out.append(f"config.attention_dropout={text.attention_dropout!r} is not supported by the ring kernels "
                   "(ring-flash-attn cannot replay dropout across ring steps): set it to 0")
    cap = getattr(text, "attn_logit_softcapping", None)
    if cap and provider is not None and provider != _reference():
        out.append(f"config.attn_logit_softcapping={cap!r} is computed only by cpshim's reference kernels, and ring "
                   f"mode runs the {provider} kernels here (ring-flash-attn 0.1.8 passes softcap=0 to flash_attn; "
                   "aten's flash kernels have no softcap)")
    if getattr(config, "output_attentions", False):
        out.append("config.output_attentions=True: the ring forms no attention weights; set it to False")
    kv_heads = getattr(text, "num_key_value_heads", None) or getattr(text, "num_attention_heads", None)
    if kv_heads and kv_heads % heads_k_stride:
        out.append(f"heads_k_stride={heads_k_stride} does not divide the model's {kv_heads} kv heads: "
                   "pass cpshim.enable(heads_k_stride=...) with a divisor")
    return out


def _reference() -> str:
    from .providers import REFERENCE  # the providers import torch: only once a model is there

    return REFERENCE


def check_model(model: Any, heads_k_stride: int) -> None:
    """Refuse what ring attention over the whole sequence would compute wrongly."""
    config = getattr(model, "config", None)
    if config is None or isinstance(config, dict):
        raise _fail(f"cannot read the model's config from {type(model).__name__}: pass the HF model")
    problems = config_problems(config, heads_k_stride, runtime.loaded.provider if runtime.loaded else None)
    problems += positions.problems(model)
    from .mixers import conv_problem

    conv = conv_problem(model)
    if conv:
        problems.append(conv)
    if problems:
        raise _fail(problems[0])


def check_loss_path(trainer: Any, vision: bool = False) -> None:
    """Loss paths that shift labels inside a shard would drop or misalign targets."""
    if getattr(trainer, "label_smoother", None) is not None:
        raise _fail("label_smoothing_factor > 0 shifts labels inside each shard: set it to 0")
    if getattr(trainer, "compute_loss_func", None) is not None:
        raise _fail("a custom compute_loss_func receives sharded labels without shift_labels: remove it, or "
                    "compute the loss from inputs['shift_labels']")
    if getattr(trainer, "model_accepts_loss_kwargs", True) is False and not vision:  # vlm passes the count
        raise _fail("the model takes no loss kwargs, so it cannot use the full-length shift_labels "
                    "(it would shift labels inside each shard)")


def check_counters(trainer: Any) -> None:
    """Counters a ring-mode Trainer reports must be counted once per CP group (their patches do that)."""
    from .. import lifecycle

    if lifecycle.is_active("trainer-tokens-seen"):
        return
    import transformers

    from ..patches.trl_rl import generating_trainer

    seen = getattr(trainer.args, "include_num_input_tokens_seen", "no")
    why = f"include_num_input_tokens_seen={seen!r}"
    # TRL's GRPO/RLOO count their tokens themselves, in `_generate` (split: each completion once)
    counts_itself = generating_trainer(trainer) is not None
    if seen == "no" and getattr(trainer.state, "num_input_tokens_seen", 0) and not counts_itself:  # read as a bool
        why += " (read as True by this release, which counted tokens before this step: pass False)"
    elif seen in ("no", False, None):
        return
    raise _fail(f"{why}: transformers {transformers.__version__} counts tokens inline in its training loop over "
                "every process, so each CP rank would add the same batch (cp times one process's count). Set "
                "include_num_input_tokens_seen=False, or upgrade transformers to >=5.3 where cpshim counts once "
                "per CP group")


def check_tensor_batch(trainer: Any, inputs: Any) -> None:
    """The Trainer hook runs before `_prepare_inputs`: a trainer that generates there (TRL's GRPO and RLOO)
    hands it the raw generation batch, prompts not tensors (TRL issue #4016). Those whose generation cpshim
    splits (`cpshim.patches.trl_rl`) pass; any other is refused by name."""
    if isinstance(inputs, dict):
        return
    from ..patches.trl_rl import GENERATING, generating_trainer

    if generating_trainer(trainer) is None:
        raise _fail(f"{type(trainer).__name__} sent a {type(inputs).__name__} batch, not a dict of tensors (a "
                    "generation batch: its trainer builds the model inputs after generating). Ring CP runs the "
                    f"generation batches of {', '.join(sorted(GENERATING))} only, on a TRL that `cpshim report` "
                    "lists their trl-*-generate-split patch as active for: train it without cpshim.enable()")


def check_compile(trainer: Any) -> None:
    if getattr(trainer.args, "torch_compile", False):
        raise _fail("torch_compile=True is not supported with ring attention yet (graph breaks at the ring's "
                    "collectives); set torch_compile=False")


def _is_eval_step() -> bool:
    """The Trainer's prediction_step shards under `torch.no_grad()`, training_step with grad. (The model's
    `training` flag is no guide: training_step calls `model.train()` inside the step context, so the first
    training step after an evaluation starts with the model still in eval mode.)"""
    import torch

    return not torch.is_grad_enabled()


def check_text_only(inputs: dict) -> None:
    """A label-less vision-language (or audio) batch (a preference or reward trainer's): its backbone path
    shards the whole model's input, so an image's placeholder tokens would be split over the ranks while each
    rank holds the tower's output for the whole image. Refused by name (labelled batches: `cpshim.ring.vlm`)."""
    from .vlm import modality_keys

    found = modality_keys(inputs)
    if found:
        raise _fail(f"the batch carries {', '.join(found)} and no labels: vision-language and audio batches of "
                    "label-less trainers (preference, reward) are not supported by ring CP yet. Train on text-only "
                    "batches with cpshim.enable(), or without CP")


def check_documents(inputs: dict, strategy: str) -> None:
    """Several documents in a row (position_ids restarting, no attention_mask: transformers' packed-sequence
    rule) are kept apart by one process; only the varlen strategy keeps them apart under the ring. With a
    mask, restarts are padding (TRL pads position_ids with 0) and one process ignores them, as the ring does."""
    pos: Any = inputs.get("position_ids")
    if strategy != "varlen" and inputs.get("attention_mask") is None and hasattr(pos, "dim") \
            and sharding.packed_rows(pos):
        raise _fail(f"the batch packs several documents per row (position_ids restart inside a row: TRL's "
                    f"padding_free or packing, or a packing collator), which one process keeps apart; strategy "
                    f"{strategy!r} would let them attend across their boundaries. Use "
                    "cpshim.enable(strategy='varlen')")


def _cp_group(trainer: Any) -> tuple[Any, int, int]:
    import torch.distributed as dist

    pc = trainer.accelerator.parallelism_config
    mesh = getattr(trainer.accelerator, "torch_device_mesh", None)
    if mesh is None or not dist.is_initialized() or "cp" not in (mesh.mesh_dim_names or ()):
        raise _fail(f"cp_size={pc.cp_size} needs {pc.cp_size} processes per CP group under torch.distributed "
                    "(launch with torchrun / accelerate launch); this process has no cp mesh dimension")
    group = mesh["cp"].get_group()
    return group, dist.get_rank(group), dist.get_world_size(group)


def _check_mask(mask: Any) -> None:
    """Ring attention is causal over the whole row: a 2-D mask may only mark right padding."""
    if mask is None or mask.dim() != 2:
        return  # None, or a 3-D/4-D mask that upstream's check already found causal
    m = mask.bool()
    right_padded = (m[:, :-1] | ~m[:, 1:]).all() if m.shape[1] > 1 else True
    if not bool(right_padded):
        raise _fail("the attention_mask has padding before real tokens (left padding or holes); use right "
                    "padding (tokenizer.padding_side='right') or packed rows with position_ids")


_PAD = {"labels": sharding.IGNORE_INDEX, "shift_labels": sharding.IGNORE_INDEX}


def prepare(call: Any, trainer: Any, model: Any, inputs: dict) -> tuple[Any, dict]:
    """A batch with labels comes with upstream's full-length keys (position_ids, shift_labels) and is sharded
    here; a label-less one comes as the trainer built it and goes on unsharded (`cpshim.ring.backbone`)."""
    generation = not isinstance(inputs, dict)  # the raw batch of a trainer that generates in the step
    if not generation and (inputs.get("past_key_values") is not None or inputs.get("use_cache")):
        raise _fail("KV cache / generate on sharded inputs is not supported: pass use_cache=False")
    if not generation and inputs.get("output_attentions"):
        raise _fail("output_attentions=True on a sharded step: the ring forms no attention weights; drop it")
    settings = runtime.settings
    runtime.ensure_loaded()
    hf_model = _unwrap(model)
    evaluating = _is_eval_step()
    check_model(hf_model, settings["heads_k_stride"])
    check_counters(trainer)
    strategy = settings["strategy"]
    labelless = generation or (inputs.get("labels") is None and inputs.get("shift_labels") is None)
    vision = not generation and not labelless and (bool(vlm.modality_keys(inputs)) or vlm.enters_at_decoder(
        trainer, hf_model))
    if not generation:
        if labelless:
            check_text_only(inputs)
        elif vision:
            vlm.check(hf_model, inputs, strategy)
        check_documents(inputs, strategy)
    check_compile(trainer)
    if labelless:
        from . import backbone

        backbone.check_trainer(trainer)
    else:
        check_loss_path(trainer, vision)
    group, rank, cp = _cp_group(trainer)
    runtime.note_group(cp)
    if labelless:
        models = backbone.called(trainer, model)
        return (lambda: backbone.sharded(trainer, models, group, rank, cp, not evaluating)), inputs
    if vision:
        _check_mask(inputs.get("attention_mask"))
        if settings["check_batches"] and inputs.get("input_ids") is not None:
            tripwires.check_same_batch(inputs["input_ids"], group, rank)
        shape = next(inputs[k] for k in ("labels", "shift_labels") if inputs.get(k) is not None).shape[:2]
        step, inputs = vlm.shard_labels(trainer, hf_model, inputs, strategy, cp, rank, group, settings)
        return _finish(step, trainer, hf_model, evaluating, inputs, tuple(shape))
    inputs = dict(inputs)
    mask = inputs.get("attention_mask")
    _check_mask(mask)
    if mask is not None and mask.dim() != 2:
        del inputs["attention_mask"]  # a causal 3-D/4-D mask: the ring is causal by construction
    # A 2-D (right-padding) mask is sharded with the other sequence keys, padded with 0: the ring ignores it
    # and no mask is built during sharded steps, but trainer code counts tokens from it (TRL's num_tokens).
    ids = inputs.get("input_ids")
    if ids is None:
        raise _fail("the batch has no input_ids; cpshim shards input_ids, labels, shift_labels and position_ids")
    batch, length = ids.shape[:2]
    if length < sharding.multiple_for(strategy, cp):
        raise _fail(f"sequence length {length} is shorter than {sharding.multiple_for(strategy, cp)} "
                    f"({strategy} with cp={cp}): use longer sequences or a smaller cp_size")
    if settings["check_batches"]:
        tripwires.check_same_batch(ids, group, rank)
    step = layout.shard_keys(inputs, layout.seq_keys(inputs, batch, length), strategy, cp, rank, _PAD).step(
        group, settings, hf_model)
    return _finish(step, trainer, hf_model, evaluating, inputs, (batch, length))


def _finish(step: Step, trainer: Any, hf_model: Any, evaluating: bool, inputs: dict,
            shape: tuple[int, int]) -> tuple[Any, dict]:
    """Arm the tripwires, say what an eval step returns ((batch, length) rows), and hand over the step context."""
    if not evaluating:
        tripwires.arm(hf_model)
    step.evaluating = evaluating
    needs_logits = evaluating and (
        getattr(trainer, "compute_metrics", None) is not None
        or getattr(trainer, "preprocess_logits_for_metrics", None) is not None
        or not getattr(trainer.args, "prediction_loss_only", False))
    step.unshard_shape = shape if needs_logits else None
    return (lambda: step_context(step)), inputs


def _eval_outputs(step: Step):
    """Eval: make the outputs the same on every rank of the CP group, as the eval loop gathers them once per
    data-parallel rank. Logits: gathered from every rank and unsharded into the full sequence (matching the
    full-length labels). Loss: each rank's partial (its shard's targets over the whole count, upstream's
    scale) averaged over the group; upstream averages over every process, so the mean is unchanged."""
    import torch
    import torch.distributed as dist

    def hook(module: Any, args: Any, output: Any) -> Any:
        loss = output.get("loss") if hasattr(output, "get") else None
        if loss is not None:
            parts = [torch.empty_like(loss) for _ in range(step.cp)]
            dist.all_gather(parts, loss.detach().contiguous(), group=step.group)
            output["loss"] = torch.stack(parts).mean(0)
        logits = output.get("logits") if hasattr(output, "get") else None
        if step.unshard_shape is None or logits is None or logits.shape[1] != step.local_len:
            return output
        output["logits"] = layout.gather(logits, step, *step.unshard_shape)
        return output

    return hook


@contextlib.contextmanager
def step_context(step: Step) -> Iterator[Step]:
    """Forward and backward of one sharded step; the tripwires run when it ends cleanly."""
    previous = runtime.current_step()
    runtime.set_step(step)
    handles = [step.root.register_forward_hook(_eval_outputs(step))] if step.evaluating else []
    if step.entry is not None:
        handles.append(step.entry[0].register_forward_pre_hook(step.entry[1], with_kwargs=True))
    handles += tripwires.watch(step)
    try:
        yield step
    finally:
        runtime.set_step(previous)
        for handle in handles:
            handle.remove()
    tripwires.check_all_ran(step)
