"""TRL's DPO, KTO and reward trainers: ring CP (the backbone sharded, heads and loss on the whole sequence)
against one process, same script.

Run by `tests/parity/test_pref_parity.py`, once in one process and once as cp=2 ranks. A case:

    {"id", "trainer" ("dpo" | "reward" | "kto"), "steps", "batch", "loss_type", "precompute", "ref"
     ("copy" | "peft"), "eval", "negative", "bf16" (TRL's default True when absent), "ring_dtype"}

SGD at lr 0.05 with TRL's beta 0.1: at the SFT suite's lr 0.5 and beta 0.5, DPO jumps from 0.69 to 2.9
in one step, and the bf16 noise of the first gradient (1%) is amplified into later losses (one process
against itself, bf16 against fp16 attention, differs as much).

TRL's configs default to `bf16=True`: the whole model computes in bfloat16, which sets the noise of the
comparison (DPO's ~1.1e-2 per-tensor gradient error is the same with the ring in bf16 or in fp16,
and 3.7e-3 with bf16=False). A reward is read at one token per sequence, so its gradient carries that
token's rounding undiluted: 3.6% under TRL's default, above the suite's 2%, and 2.3% for one process
against itself (bf16 against fp16 attention). Its cases therefore run the model in fp32 (`bf16: False`),
as the HF Trainer suite does, with the ring in bf16 and in fp16: the error falls ~8x with 3 more
mantissa bits (rounding), the negative control's does not.

Rows: a prompt of random tokens; the chosen completion repeats it (its log-probs need attention from
one shard into the other), the rejected one is random. One process runs the reference attention;
the ring ranks run `cpshim.enable()` (zigzag). Recorded: per-step losses, first-step per-tensor
gradients (SGD), and with `eval` the eval loss, evaluate()'s reward metrics and predict()'s outputs.
The negative control keeps each rank's share of the gathered sequence's gradient without summing it
over the group, and gathers TRL's metrics over every process (upstream's): it must fail the same
check, and count the batch's tokens twice.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from typing import Any, Iterator

from cpshim.ring import parity

#: What TRL logs per step that the test compares: a count over the batch, and per-sequence means.
METRICS = ("num_tokens", "logps/chosen", "logps/rejected", "entropy")
#: What evaluate() reports that the test compares: RewardTrainer's reward statistics and accuracy.
EVAL_METRICS = ("eval_accuracy", "eval_mean_reward", "eval_margin", "eval_num_tokens")


def tokenizer() -> Any:
    """A word-level tokenizer over the parity vocabulary, splitting on whitespace (no hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{f"t{i}": i for i in range(3, parity.VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def rows(trainer: str, n: int, seed: int, seq_len: int | None = None) -> list[dict]:
    """`seq_len` (the benchmark's): every prompt + completion is seq_len tokens with the EOS."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def words(k: int) -> list[str]:
        return [f"t{int(i)}" for i in torch.randint(3, parity.VOCAB, (k,), generator=g)]

    def length(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (1,), generator=g))

    out = []
    for i in range(n):
        prompt = words(seq_len // 2 if seq_len else length(12, 25))
        chosen = prompt[: seq_len - len(prompt) - 1] if seq_len else prompt
        rejected = words(len(chosen) if seq_len else length(8, 25))
        if trainer == "kto":  # unpaired: a desirable copy or an undesirable random completion
            good = i % 2 == 0
            out.append({"prompt": " ".join(prompt), "completion": " " + " ".join(chosen if good else rejected),
                        "label": good})
        else:
            out.append({"prompt": " ".join(prompt), "chosen": " " + " ".join(chosen),
                        "rejected": " " + " ".join(rejected)})
    return out


def _args(case: dict, cp: int, out_dir: str) -> Any:
    import trl

    extra: dict[str, Any] = {}
    if cp > 1:
        from accelerate import ParallelismConfig

        extra["parallelism_config"] = ParallelismConfig(cp_size=cp)
    kind = case["trainer"]
    if kind == "dpo":
        config: Any = trl.DPOConfig
        extra.update(loss_type=case.get("loss_type", "sigmoid"), beta=0.1,
                     precompute_ref_log_probs=case.get("precompute", False))
    elif kind == "kto":
        config = trl.KTOConfig
        extra.update(beta=0.1)
    else:
        config = trl.RewardConfig
    return config(
        output_dir=out_dir, per_device_train_batch_size=case["batch"], per_device_eval_batch_size=case["batch"],
        max_steps=case["steps"], learning_rate=0.05, optim="sgd", lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=0.0, logging_steps=1, report_to=[], use_cpu=True, seed=0, data_seed=0,
        disable_tqdm=True, save_strategy="no", eval_strategy="no", max_length=None,
        **({"bf16": case["bf16"]} if "bf16" in case else {}), **extra)


def _model(case: dict, cp: int) -> Any:
    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = parity._config()
    if case["trainer"] == "reward":
        config.num_labels, config.pad_token_id = 1, 0
        model = LlamaForSequenceClassification(config)
    else:
        model = LlamaForCausalLM(config)
    if cp == 1:
        from transformers import AttentionInterface

        forward, capture = parity._reference_attention(case.get("ring_dtype", "bfloat16"))
        AttentionInterface.register(parity.REFERENCE_KEY, forward)
        model.config._attn_implementation = parity.REFERENCE_KEY
        model.model.register_forward_pre_hook(capture, with_kwargs=True)
    return model


def _trainer(case: dict, cp: int, out_dir: str, callbacks: list) -> Any:
    import trl

    model = _model(case, cp)
    kind = case["trainer"]
    kwargs: dict[str, Any] = {}
    if kind in ("dpo", "kto"):
        ref = case.get("ref", "copy")
        if ref == "copy":
            kwargs["ref_model"] = copy.deepcopy(model)
        elif ref == "peft":
            from peft import LoraConfig

            kwargs["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"],
                                               lora_dropout=0.0)
    cls = {"dpo": trl.DPOTrainer, "kto": trl.KTOTrainer, "reward": trl.RewardTrainer}[kind]
    args = _args(case, cp, out_dir)  # starts torch.distributed on the ring ranks
    n = case["batch"] * case["steps"] if case.get("seq_len") else 16
    return cls(model=model, args=args, train_dataset=_dataset(rows(kind, n, 7, case.get("seq_len")), out_dir, "train"),
               eval_dataset=_dataset(rows(kind, 4, 99), out_dir, "eval"), processing_class=tokenizer(),
               callbacks=callbacks, **kwargs)


def _dataset(data: list[dict], out_dir: str, name: str) -> Any:
    """An on-disk dataset that every rank opens: TRL's precomputed reference log-probs are cached beside
    it by the main process and read by the others (an in-memory dataset has a cache per process)."""
    import torch.distributed as dist
    from datasets import Dataset, load_from_disk

    path = os.path.join(out_dir, f"data-{name}")
    if not dist.is_initialized() or dist.get_rank() == 0:
        Dataset.from_list(data).save_to_disk(path)
    if dist.is_initialized():
        dist.barrier()
    return load_from_disk(path)


@contextlib.contextmanager
def _fused_head_calls() -> Iterator[list]:
    """(the per-token width TRL's fused head computed, the row's padded length) of each of its calls that
    cpshim gathered inside the block (`cpshim.ring.fused_head`): it ran on the shard if the first is 1/cp of
    the second."""
    from cpshim.ring import fused_head

    calls: list = []
    original = fused_head.gathered

    def recording(output: Any, step: Any, *args: Any) -> Any:
        calls.append((int(output["log_probs"].shape[1]), step.global_len))
        return original(output, step, *args)

    fused_head.gathered = recording  # looked up as a module attribute by the backbone path
    try:
        yield calls
    finally:
        fused_head.gathered = original


def run_case(case: dict, cp: int, out_dir: str) -> dict:
    import torch.distributed as dist

    import cpshim
    from cpshim.ring import data_parallel, layout

    layout.reduce_gradients = not case.get("negative")
    data_parallel.disabled = bool(case.get("negative"))  # and TRL's metric gathers over every process
    if cp > 1:
        cpshim.enable(strategy="zigzag", ring_dtype=case.get("ring_dtype", "bfloat16"))
    # transformers < 5 passes bf16 to accelerate through this variable and never clears it: an earlier case's
    # bf16 (TRL's default) would hold for a later case with bf16=False in the same process
    os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
    recorder = parity._Recorder()
    trainer = _trainer(case, cp, out_dir, [recorder.callback])
    with _fused_head_calls() as head_calls:
        trainer.train()
    rank = dist.get_rank() if dist.is_initialized() else 0
    batch = next(iter(trainer.get_train_dataloader()))
    metrics = [{k: h[k] for k in METRICS if k in h} for h in trainer.state.log_history if "loss" in h]
    result = {"rank": rank, "losses": parity._losses(trainer), "grads": recorder.grads if rank == 0 else None,
              "metrics": metrics, "fused_head_calls": head_calls,
              "first_batch": {k: tuple(v.shape) for k, v in batch.items() if hasattr(v, "shape")}}
    if case.get("eval"):
        evaluated = trainer.evaluate()
        result["eval_loss"] = evaluated["eval_loss"]
        result["eval_metrics"] = {k: v for k, v in evaluated.items() if k in EVAL_METRICS}
        predictions = trainer.predict(trainer.eval_dataset).predictions  # one row per eval row, not per CP rank
        result["predictions"] = [p.tolist() for p in (predictions if isinstance(predictions, tuple) else [predictions])]
    layout.reduce_gradients, data_parallel.disabled = True, False
    return result


def main_worker(cases_json: str, out_dir: str, cp: int) -> None:
    import torch

    for i, case in enumerate(json.loads(cases_json)):
        tag = "ring" if cp > 1 else "ref"
        result = run_case(case, cp, os.path.join(out_dir, f"{tag}-{i}-trainer"))
        if result["rank"] == 0:
            torch.save(result, os.path.join(out_dir, f"{tag}-{i}.pt"))
