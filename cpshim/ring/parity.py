"""Parity runs: a real HF Trainer on a tiny Llama, ring CP vs one process with the same kernels.

Used by `cpshim demo` and by the parity tests. One launch runs several cases in sequence so that
each process pays the Trainer import once. A case is a dict: strategy, batch, seq_len, steps,
grad_accum, packed (documents restart position_ids), negative (ring without the KV exchange, and a
model without attention without its state chain: the control that must fail the check), refused
(the CP run must stop with a tripwire; its message is the result), gradient_checkpointing (the Trainer's), eval
(evaluate() after training: the eval loss, accuracy and logit length).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

from . import parity_vlm
from .parity_models import VOCAB, masked_attention, register_masks, uses_upstream_masks
from .parity_models import config as _case_config
from .parity_models import model as _model

REFERENCE_KEY = "cpshim_reference"


def _config(case: dict | None = None) -> Any:
    """The parity model's config (default: the tiny Llama every trainer's parity run uses)."""
    return _case_config(case or {})


def dataset(case: dict) -> list[dict]:
    """A copy task: the second half repeats the first, so the loss needs attention across shards."""
    import torch

    if case.get("model") in parity_vlm.MODELS:
        return parity_vlm.rows(case, VOCAB)
    g = torch.Generator().manual_seed(case.get("seed", 1234))
    n = case["batch"] * case["steps"] * case.get("grad_accum", 1) * case.get("dp", 1)
    half = case["seq_len"] // 2
    rows = []
    for _ in range(n):
        first = torch.randint(3, VOCAB, (half,), generator=g)
        ids = torch.cat([first, first])
        row = {"input_ids": ids, "labels": ids.clone()}
        if case.get("odd_targets"):  # an odd number of targets: a count that cp does not divide
            row["labels"][0] = -100
        if case.get("packed"):  # two documents per row: positions restart where the second begins
            cut = half // 2 + 1
            row["position_ids"] = torch.cat([torch.arange(cut), torch.arange(ids.numel() - cut)])
            row["labels"][cut] = -100  # no target across the document boundary
        rows.append(row)
    return rows


def _reference_attention(ring_dtype: str = "bfloat16"):
    """Single-process attention through the same provider, in the ring's compute dtype."""
    import torch

    compute = getattr(torch, ring_dtype)

    from .providers import select_provider
    from .providers.autograd import attention, attention_varlen

    provider = select_provider("cpu")
    state: dict[str, Any] = {}

    def capture(module, args, kwargs):
        state["position_ids"] = kwargs.get("position_ids")
        mask = kwargs.get("attention_mask")
        state["lead"] = (mask.to(torch.int64).cumsum(1) == 0).sum(1) if mask is not None and mask.dim() == 2 \
            else None

    def forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, s_aux=None,
                **kwargs):
        dtype = query.dtype
        mods = dict(softcap=softcap, sinks=s_aux)
        q, k, v = (t.transpose(1, 2).to(compute) for t in (query, key, value))
        if getattr(attention_mask, "dtype", None) == torch.bool and attention_mask.dim() == 4:  # upstream's mask
            pos = state.get("position_ids")
            if pos is not None:  # documents apart, as for full attention (4.56 did not detect the packing here)
                doc = (pos.reshape(q.shape[:2]) == 0).cumsum(-1)
                attention_mask = attention_mask & (doc[:, None, :, None] == doc[:, None, None, :])
            return masked_attention(q, k, v, attention_mask, scaling, **mods).to(dtype).contiguous(), None
        window = int(kwargs["sliding_window"]) - 1 if kwargs.get("sliding_window") else -1  # the model's own
        pos, lead = state.get("position_ids"), state.get("lead")
        left_padded = lead is not None and bool(lead.any()) and q.shape[1] == k.shape[1]
        if left_padded or (pos is not None and bool((pos[:, 1:] == 0).any())):
            # documents: packed rows (position_ids restart), and each row's left padding apart from its tokens
            # (what a padding mask does for the real tokens: the ring's left-padding roll must match this)
            starts = torch.zeros(q.shape[:2], dtype=torch.bool)
            starts[:, 0] = True
            if pos is not None:
                starts |= pos.reshape(q.shape[:2]) == 0
            if left_padded:
                rows = torch.nonzero(lead < q.shape[1], as_tuple=True)[0]
                starts[rows, lead[rows]] = True
            cu = torch.cat([torch.nonzero(starts.reshape(-1), as_tuple=True)[0],
                            torch.tensor([starts.numel()])]).to(torch.int32)
            b, s = q.shape[:2]
            max_len = int((cu[1:] - cu[:-1]).max())
            out = attention_varlen(q.reshape(b * s, *q.shape[2:]), k.reshape(b * s, *k.shape[2:]),
                                   v.reshape(b * s, *v.shape[2:]), cu, cu, max_len, max_len, provider,
                                   softmax_scale=scaling, window_left=window, **mods).reshape(*q.shape[:3], v.shape[-1])
        else:
            out = attention(q, k, v, provider, softmax_scale=scaling, window_left=window, **mods)
        return out.to(dtype).contiguous(), None

    return forward, capture


class _Recorder:
    def __init__(self) -> None:
        from transformers import TrainerCallback

        rec = self

        class Callback(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                if state.global_step == 0 and model is not None:
                    rec.grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters()
                                 if p.grad is not None}

        self.callback = Callback()
        self.grads: dict[str, Any] = {}


def run_case(case: dict, cp: int) -> dict:
    """Train one case in this process (cp > 1: one rank of a ring CP group). Returns losses (and first-step
    gradients on global rank 0)."""
    import torch
    import torch.distributed as dist
    from transformers import Trainer, TrainingArguments

    import cpshim

    torch.manual_seed(0)
    model = _model(case)
    extra: dict[str, Any] = {}
    from . import parity_controls

    saved = parity_controls.snapshot()
    if cp > 1:
        from accelerate import ParallelismConfig

        cpshim.enable(strategy=case["strategy"], ring_dtype=case.get("ring_dtype", "bfloat16"))
        extra["parallelism_config"] = ParallelismConfig(cp_size=cp)
        if case.get("negative"):
            parity_controls.apply(case["negative"], model)
    else:
        from transformers import AttentionInterface

        forward, capture = _reference_attention(case.get("reference_dtype", case.get("ring_dtype", "bfloat16")))
        AttentionInterface.register(REFERENCE_KEY, forward)
        if uses_upstream_masks(case):
            register_masks(REFERENCE_KEY)
        model.config.get_text_config()._attn_implementation = REFERENCE_KEY  # a VLM's tower keeps sdpa
        model.register_forward_pre_hook(capture, with_kwargs=True)
    recorder = _Recorder()
    args = TrainingArguments(
        output_dir=case.get("output_dir") or tempfile.mkdtemp(prefix="cpshim-parity-"),
        per_device_train_batch_size=case["batch"], per_device_eval_batch_size=case["batch"],
        gradient_accumulation_steps=case.get("grad_accum", 1), max_steps=case["steps"],
        learning_rate=case.get("lr", 0.5),
        optim="sgd", lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
        logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", seed=0, data_seed=0,
        dataloader_drop_last=True, disable_tqdm=True,
        average_tokens_across_devices=case.get("average_tokens", True),
        gradient_checkpointing=case.get("gradient_checkpointing", False), **extra)
    if case.get("resume"):
        args.save_strategy, args.save_steps = "steps", 2
    rank = dist.get_rank() if dist.is_initialized() else 0
    data_case = case
    if case.get("rank_seeded"):  # a broken dataloader: each rank of the CP group gets other rows
        data_case = {**case, "seed": 1234 + rank}
    extra_trainer = {"data_collator": parity_vlm.collator(model)} if case.get("model") in parity_vlm.MODELS else {}
    trainer = Trainer(model=model, args=args, train_dataset=dataset(data_case), callbacks=[recorder.callback],
                      **extra_trainer,
                      compute_metrics=_token_accuracy if case.get("eval") else None)
    try:
        if case.get("rank_seeded") or case.get("refused") and cp > 1:  # the run must stop with a tripwire
            from .tripwires import TripwireError

            try:
                trainer.train()
            except TripwireError as e:
                return {"error": str(e), "rank": rank, "losses": [], "grads": None}
            return {"error": None, "rank": rank, "losses": [], "grads": None}
        trainer.train()
        result = {"losses": _losses(trainer), "grads": recorder.grads if rank == 0 else None, "rank": rank,
                  "total_batch": trainer.get_total_train_batch_size(args)}
        if case.get("eval"):
            rows: Any = dataset({**case, "steps": 1, "seed": 99})  # a list of dicts: a map-style dataset to the Trainer
            metrics = trainer.evaluate(rows)
            result["eval"] = {k: metrics.get(f"eval_{k}") for k in ("loss", "accuracy", "logit_tokens")}
        if case.get("resume"):  # a fresh Trainer resumes from step 2 and must reproduce steps 3..
            torch.manual_seed(123)  # a different init: everything must come from the checkpoint
            fresh = _model(case)
            if cp == 1:
                fresh.config.get_text_config()._attn_implementation = REFERENCE_KEY
            again = Trainer(model=fresh, args=args, train_dataset=dataset(case))
            again.train(resume_from_checkpoint=os.path.join(str(args.output_dir), "checkpoint-2"))
            result["resumed_losses"] = _losses(again)
    finally:
        parity_controls.restore(saved)
    return result


def _losses(trainer: Any) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _token_accuracy(prediction: Any) -> dict[str, float]:
    """Next-token accuracy from full-length logits; fails loudly if logits and labels disagree in length."""

    logits, labels = prediction.predictions, prediction.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    if logits.shape[:2] != labels.shape[:2]:
        raise ValueError(f"logits {logits.shape} do not match labels {labels.shape}")
    pred, target = logits[:, :-1].argmax(-1), labels[:, 1:]
    mask = target != -100
    return {"accuracy": float((pred == target)[mask].mean()), "logit_tokens": float(logits.shape[1])}


def compare(reference: dict, ring: dict, loss_rtol: float, grad_rtol: float, floor: float = 0.0) -> dict:
    """Per-step loss relative error and per-tensor gradient relative error (Frobenius). `floor`: a tensor whose
    one-process gradient is smaller than `floor` x the largest tensor's (an expert no token chose, a bias of
    ~0 update) is judged against that scale instead of its own norm."""
    loss_err = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(reference["losses"], ring["losses"]))
    grad_err = {}
    scale = floor * max((float(g.norm()) for g in reference["grads"].values()), default=0.0)
    for name, ref in reference["grads"].items():
        got = ring["grads"].get(name)  # absent: the ring run gave the tensor no gradient at all
        grad_err[name] = 1.0 if got is None else float((got - ref).norm() / max(float(ref.norm()), scale, 1e-12))
    worst = max(grad_err, key=lambda name: grad_err[name])
    ok = (len(reference["losses"]) == len(ring["losses"]) and loss_err <= loss_rtol
          and grad_err[worst] <= grad_rtol and all(math.isfinite(x) for x in ring["losses"]))
    return {"ok": ok, "loss_rel_err": loss_err, "grad_rel_err_max": grad_err[worst], "worst_tensor": worst,
            "loss_rtol": loss_rtol, "grad_rtol": grad_rtol}


def main_worker(cases_json: str, out_dir: str, cp: int) -> None:
    """One rank under `launch.run_ranks` (which ends the process group): run every case, save rank 0's results."""
    import torch

    cases = json.loads(cases_json)
    for i, case in enumerate(cases):
        if cp == 1 and case.get("dp"):  # one process over the same global batches
            case = {**case, "batch": case["batch"] * case["dp"], "dp": 1}
        case = {**case, "output_dir": os.path.join(out_dir, f"{'ring' if cp > 1 else 'ref'}-{i}-trainer")}
        result = run_case(case, cp)
        if result["rank"] == 0:
            torch.save(result, os.path.join(out_dir, f"{'ring' if cp > 1 else 'ref'}-{i}.pt"))
