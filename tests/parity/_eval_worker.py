"""Everything the Trainer reports and returns, recorded: train + evaluate + predict on a tiny Llama.

Run by `tests/parity/test_eval_parity.py` once in one process and once as ring CP ranks (cp=2, or
cp=2 x dp=2) over the same cases; each rank-0 result is saved with `torch.save`. A case:

    {"id", "strategy", "train_rows", "eval_rows", "train_batch", "eval_batch", "steps", "drop_last",
     "eval_accumulation_steps", "batch_eval_metrics", "include_for_metrics", "tokens_seen",
     "best_model", "negative"}

Rows are a copy task (attention across shards matters) whose labels mask a prefix of varying length,
so target counts differ per row. The recorder keeps every number a callback sees (on_log,
on_evaluate, on_predict, per-step state), what compute_metrics receives (counts, sums, an index-aligned
checksum), and the arrays predict() returns.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cpshim.ring import parity

SEQ = 64


def rows(n: int, seed: int) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        first = torch.randint(3, parity.VOCAB, (SEQ // 2,), generator=g)
        ids = torch.cat([first, first])
        labels = ids.clone()
        labels[: int(torch.randint(1, SEQ // 2, (1,), generator=g))] = -100  # a prompt of varying length
        out.append({"input_ids": ids, "labels": labels})
    return out


def ragged(rows_: list[dict], seed: int) -> list[dict]:
    """The same rows cut to lengths between SEQ/2 and SEQ: the collator pads (attention_mask marks it)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    cut = [int(torch.randint(SEQ // 2 + 1, SEQ + 1, (1,), generator=g)) for _ in rows_]
    return [{k: v[:n] for k, v in r.items()} for r, n in zip(rows_, cut)]


def _array(x: Any, ndim: int, dtype: Any = None) -> Any:
    """One array of `ndim` dims from what the eval loop returns: an array, or pieces in a list: batches
    (`eval_do_concat_batches=False`) or rows (`eval_use_gather_object=True`)."""
    import numpy as np

    if isinstance(x, list):
        pieces = [np.asarray(p.cpu() if hasattr(p, "cpu") else p) for p in x]
        x = np.concatenate([p if p.ndim == ndim else p[None] for p in pieces])
    return np.asarray(x.cpu() if hasattr(x, "cpu") else x, dtype=dtype)


class Metrics:
    """compute_metrics that returns numbers a duplicated, reordered or truncated input would change."""

    def __init__(self, batched: bool) -> None:
        self.batched = batched
        self.parts: list[dict] = []
        self.seen: list[dict] = []

    @staticmethod
    def _numbers(p: Any) -> dict:
        import numpy as np

        logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        logits, labels = _array(logits, 3, np.float64), _array(p.label_ids, 2)
        target, pred = labels[:, 1:], logits[:, :-1].argmax(-1)
        mask = target != -100
        rows_idx = np.arange(len(labels))[:, None] + 1
        out = {"rows": float(len(labels)), "targets": float(mask.sum()),
               "correct": float(((pred == target) & mask).sum()),
               "label_checksum": float((np.where(mask, target, 0) * rows_idx).sum()),
               "logit_sum": float(logits.sum())}
        if p.losses is not None:
            losses = _array(p.losses, 1, np.float64)
            out["loss_entries"], out["loss_sum"] = float(losses.size), float(losses.sum())
        if p.inputs is not None:
            raw = p.inputs["input_ids"] if hasattr(p.inputs, "keys") else p.inputs  # batched: the raw batch
            inputs = _array(raw, 2)
            out["input_checksum"] = float((np.where(inputs >= 0, inputs, 0) * (np.arange(len(inputs))[:, None] + 1))
                                          .sum())
        return out

    def __call__(self, p: Any, compute_result: bool = True) -> dict:
        numbers = self._numbers(p)
        if not self.batched:
            self.seen.append(numbers)
            return numbers
        self.parts.append(numbers)
        if not compute_result:
            return {}
        total = {k: sum(part.get(k, 0.0) for part in self.parts) for k in self.parts[0]}
        self.parts = []
        self.seen.append(total)
        return total


def _recorder():
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.events: list[dict] = []

        def _state(self, state: Any) -> dict:
            return {"global_step": state.global_step, "epoch": state.epoch,
                    "tokens_seen": state.num_input_tokens_seen, "total_flos": state.total_flos}

        def on_step_end(self, args, state, control, **kwargs):
            self.events.append({"event": "step_end", **self._state(state)})

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.events.append({"event": "log", "logs": dict(logs or {}), **self._state(state)})

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.events.append({"event": "evaluate", "metrics": dict(metrics or {}), **self._state(state)})

        def on_predict(self, args, state, control, metrics=None, **kwargs):
            self.events.append({"event": "predict", "metrics": dict(metrics or {})})

    return Recorder()


def _args(case: dict, cp: int, out_dir: str) -> Any:
    from transformers import TrainingArguments

    if case.get("sft"):  # TRL's SFTTrainer over the same pre-tokenized rows (labels given, no preparation)
        from trl import SFTConfig as TrainingArguments  # type: ignore[no-redef]

    extra: dict[str, Any] = {}
    if cp > 1:
        from accelerate import ParallelismConfig

        extra["parallelism_config"] = ParallelismConfig(cp_size=cp)
    if case.get("best_model"):
        extra.update(eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                     load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
                     save_total_limit=1)
    else:
        extra.update(eval_strategy="steps", eval_steps=case["steps"], save_strategy="no")
    if "include_tokens_per_second" in TrainingArguments.__dataclass_fields__:  # removed in 5.x
        extra["include_tokens_per_second"] = True
    if case.get("sft"):
        extra.update(max_length=SEQ, packing=False, dataset_kwargs={"skip_prepare_dataset": True})
    return TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=case["train_batch"],
        per_device_eval_batch_size=case["eval_batch"], max_steps=case["steps"], learning_rate=0.5, optim="sgd",
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0, logging_steps=1,
        report_to=[], use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
        dataloader_drop_last=case.get("drop_last", False),
        eval_accumulation_steps=case.get("eval_accumulation_steps"),
        batch_eval_metrics=case.get("batch_eval_metrics", False),
        include_for_metrics=list(case.get("include_for_metrics", [])),
        eval_use_gather_object=case.get("gather_object", False),
        eval_do_concat_batches=case.get("concat_batches", True),
        include_num_input_tokens_seen=case.get("tokens_seen", False),
        average_tokens_across_devices=case.get("average_tokens", True), **extra)


def _arrays(output: Any) -> dict:
    import numpy as np

    preds = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    return {"predictions": _array(preds, 3, np.float32), "label_ids": _array(output.label_ids, 2)}


def run_case(case: dict, cp: int, out_dir: str) -> dict:
    import torch
    import torch.distributed as dist
    from transformers import LlamaForCausalLM, Trainer

    import cpshim

    torch.manual_seed(0)
    model = LlamaForCausalLM(parity._config())
    if cp > 1:
        cpshim.enable(strategy=case.get("strategy", "zigzag"))
        if case.get("negative"):
            _gather_over_every_process()
    else:
        from transformers import AttentionInterface

        forward, capture = parity._reference_attention()
        AttentionInterface.register(parity.REFERENCE_KEY, forward)
        model.config._attn_implementation = parity.REFERENCE_KEY
        model.register_forward_pre_hook(capture, with_kwargs=True)
    metrics = Metrics(batched=case.get("batch_eval_metrics", False))
    recorder = _recorder()
    train_rows, eval_rows = rows(case["train_rows"], seed=7), rows(case["eval_rows"], seed=99)
    if case.get("ragged"):
        train_rows, eval_rows = ragged(train_rows, 5), ragged(eval_rows, 6)
    kwargs: dict[str, Any] = {}
    if case.get("sft"):
        from datasets import Dataset
        from trl import SFTTrainer as Trainer  # type: ignore[no-redef]

        def as_dataset(part: list[dict]) -> Any:
            return Dataset.from_list([{k: v.tolist() for k, v in r.items()} for r in part])

        train_rows, eval_rows = as_dataset(train_rows), as_dataset(eval_rows)
        kwargs["processing_class"] = _tokenizer()
    callbacks: list[Any] = [recorder]
    if case.get("best_model"):  # stops when eval_loss has not improved by 1e-4 for one evaluation
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=1e-4))
    trainer = Trainer(model=model, args=_args(case, cp, out_dir), train_dataset=train_rows, eval_dataset=eval_rows,
                      compute_metrics=metrics, callbacks=callbacks, **kwargs)
    train_out = trainer.train()
    evaluated = trainer.evaluate()
    predicted = trainer.predict(eval_rows)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return {"rank": rank, "train_metrics": dict(train_out.metrics), "evaluate": evaluated,
            "predict_metrics": dict(predicted.metrics), "predict": _arrays(predicted),
            "metrics_seen": metrics.seen, "events": recorder.events,
            "state": {"global_step": trainer.state.global_step, "epoch": trainer.state.epoch,
                      "tokens_seen": trainer.state.num_input_tokens_seen, "total_flos": trainer.state.total_flos,
                      "best_metric": trainer.state.best_metric,
                      "best_checkpoint": os.path.basename(trainer.state.best_model_checkpoint or "")}}


def _tokenizer() -> Any:
    """A word-level tokenizer over the copy task's ids, built here (no hub)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"t{i}": i for i in range(3, parity.VOCAB)}}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _gather_over_every_process() -> None:
    """Negative control: cpshim's eval and counter fixes off, upstream's gathers and counts over every process."""
    from cpshim.ring import data_parallel

    data_parallel.disabled = True


def main_worker(cases_json: str, out_dir: str, cp: int) -> None:
    """One rank under `launch.run_ranks`: run every case, save rank 0's results."""
    import torch

    for i, case in enumerate(json.loads(cases_json)):
        tag = "ring" if cp > 1 else "ref"
        if cp == 1 and case.get("dp"):  # one process over the same global batches, train and eval
            case = {**case, "train_batch": case["train_batch"] * case["dp"],
                    "eval_batch": case["eval_batch"] * case["dp"], "dp": 1}
        result = run_case(case, cp, os.path.join(out_dir, f"{tag}-{i}-trainer"))
        if result["rank"] == 0:
            torch.save(result, os.path.join(out_dir, f"{tag}-{i}.pt"))
