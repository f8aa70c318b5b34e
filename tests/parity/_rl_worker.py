"""TRL's GRPO and RLOO trainers: ring CP (generation split over the CP group, the backbone sharded, heads
and loss on the whole sequence) against one process, same script.

Run by `tests/parity/test_rl_parity.py`, once in one process and once as cp=2 ranks. A case:

    {"id", "trainer" ("grpo" | "rloo"), "loss_type", "beta", "level" (GSPO: "sequence"), "eval", "spg"
     (steps_per_generation), "iterations" (num_iterations), "generate" ("fixed" | "greedy"), "negative",
     "ring_dtype", "batch", "generations", "seq_len" (the benchmark's: prompts of seq_len/2 tokens, completions
     as long)}

Both runs must train on the same tokens, so completions are fixed: a deterministic function of the prompt
and of the completion's index among its prompt's copies in the generation call (GRPO: TRL's `rollout_func`;
RLOO, which has none: its generation backend `_generate_single_turn` overridden, the rest of `_generate` kept).
The split gives each rank whole prompt groups (8 prompts per generation batch, 4 generations each, cp=2), so
the index is the same in both runs. A completion copies its prompt with a k-dependent number of tokens
replaced and length (some end with EOS): attention from the completion into the prompt crosses shards, and
the copy reward varies within each group (non-zero advantages). `generate="greedy"` runs HF generate instead
(greedy, so both runs generate the same tokens): its completions are compared, not its (zero) advantages.
The negative control keeps each rank's share of the gathered hidden states' gradient without summing it
over the group.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cpshim.ring import parity

from ._pref_worker import _dataset, _model, tokenizer

METRICS = ("num_tokens", "reward", "completions/mean_length", "kl", "entropy")
BATCH, GENERATIONS = 8, 4  # completions per generation batch: 2 prompt groups of 4, one group per CP rank


def rows(n: int, seed: int, seq_len: int | None = None) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = seq_len // 2 if seq_len else int(torch.randint(10, 20, (1,), generator=g))
        out.append({"prompt": " ".join(f"t{int(i)}" for i in torch.randint(3, parity.VOCAB, (length,), generator=g))})
    return out


def completions(prompt_ids: list[list[int]]) -> list[list[int]]:
    """Completion k of a prompt (k: its index among that prompt's copies in this call)."""
    import torch

    seen: dict[tuple, int] = {}
    out = []
    for ids in prompt_ids:
        k = seen[tuple(ids)] = seen.get(tuple(ids), -1) + 1
        g = torch.Generator().manual_seed(sum(ids) * 31 + len(ids) * 7 + k)
        copy = list(ids[: max(4, len(ids) - 2 * k)])
        for j in torch.randperm(len(copy), generator=g)[: 2 * k].tolist():
            copy[j] = int(torch.randint(3, parity.VOCAB, (1,), generator=g))
        out.append(copy + [1] if k % 2 == 0 else copy)  # 1: <eos>; odd k: truncated
    return out


def copy_reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """Fraction of the prompt's words the completion repeats in place."""
    out = []
    for p, c in zip(prompts, completions):
        p, c = p.split(), c.split()
        out.append(sum(a == b for a, b in zip(p, c)) / len(p))
    return out


class _Seen:
    """Per generation call on this rank: how many prompts it generated for, and the group's completions."""

    def __init__(self) -> None:
        self.generated: list[int] = []
        self.completions: list[list[list[int]]] = []
        self.losses: list[float] = []  # per training step, unrounded (transformers 4.x logs 4 digits)

    def rollout(self, prompts: list, trainer: Any) -> dict:
        """GRPO's `rollout_func`: the fixed completions."""
        self.generated.append(len(prompts))
        ids = [trainer.processing_class(p, add_special_tokens=False)["input_ids"] for p in prompts]
        return {"prompt_ids": ids, "completion_ids": completions(ids), "logprobs": None}

    def reward(self, prompts: list, completions: list, completion_ids: list, **kwargs: Any) -> list[float]:
        self.completions.append([list(c) for c in completion_ids])
        return copy_reward(prompts, completions)


def _trainer_class(case: dict, seen: _Seen) -> Any:
    import trl

    base = trl.GRPOTrainer if case["trainer"] == "grpo" else trl.RLOOTrainer
    fixed = case.get("generate", "fixed") == "fixed" and case["trainer"] == "rloo"

    class Recorded(base):  # type: ignore[misc, valid-type]
        def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            loss = super().compute_loss(model, inputs, *args, **kwargs)
            if self.model.training:
                seen.losses.append(float(loss.detach()))
            return loss

        def _generate_single_turn(self, prompt_ids: Any, *args: Any, **kwargs: Any) -> Any:
            seen.generated.append(len(prompt_ids))
            return completions(prompt_ids) if fixed else super()._generate_single_turn(prompt_ids, *args, **kwargs)

    return Recorded


def _args(case: dict, cp: int, out_dir: str) -> Any:
    import trl

    extra: dict[str, Any] = {}
    if cp > 1:
        from accelerate import ParallelismConfig

        extra["parallelism_config"] = ParallelismConfig(cp_size=cp)
    if case["trainer"] == "grpo":
        config: Any = trl.GRPOConfig
        extra.update(loss_type=case.get("loss_type", "dapo"), beta=case.get("beta", 0.0),
                     importance_sampling_level=case.get("level", "token"))
    else:
        config = trl.RLOOConfig
        extra.update(beta=case.get("beta", 0.05))
    if case.get("generate") == "greedy":
        extra["generation_kwargs"] = {"do_sample": False}
    spg = case.get("spg", 1)
    return config(
        output_dir=out_dir, per_device_train_batch_size=case.get("batch", BATCH) // spg,
        per_device_eval_batch_size=case.get("batch", BATCH),
        steps_per_generation=spg, num_iterations=case.get("iterations", 1),
        num_generations=case.get("generations", GENERATIONS), max_completion_length=case.get("seq_len", 24),
        max_steps=case.get("steps", 2), learning_rate=0.05, optim="sgd",
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0, logging_steps=1,
        report_to=[], use_cpu=True, seed=0, data_seed=0, disable_tqdm=True, save_strategy="no", eval_strategy="no",
        **extra)


def run_case(case: dict, cp: int, out_dir: str) -> dict:
    import torch.distributed as dist

    import cpshim
    from cpshim.ring import layout

    layout.reduce_gradients = not case.get("negative")  # the negative control: no gradient sum over the group
    if cp > 1:
        cpshim.enable(strategy=case.get("strategy", "zigzag"), ring_dtype=case.get("ring_dtype", "bfloat16"))
    recorder, seen = parity._Recorder(), _Seen()
    greedy = case.get("generate") == "greedy"  # HF generate in both runs: sdpa in both (no reference attention)
    model = _model({"trainer": case["trainer"], "ring_dtype": case.get("ring_dtype", "bfloat16")}, 2 if greedy else cp)
    args = _args(case, cp, out_dir)  # starts torch.distributed on the ring ranks
    # TRL builds the reference model (beta != 0) from the policy's path: the initial weights, saved
    model.config._name_or_path = _saved(model, os.path.join(out_dir, "init"))
    kwargs: dict[str, Any] = {}
    if case["trainer"] == "grpo" and case.get("generate", "fixed") == "fixed":
        kwargs["rollout_func"] = seen.rollout
    trainer = _trainer_class(case, seen)(
        model=model, reward_funcs=seen.reward, args=args, processing_class=tokenizer(),
        train_dataset=_dataset(rows(16, 7, case.get("seq_len")), out_dir, "train"), callbacks=[recorder.callback],
        eval_dataset=_dataset(rows(4, 99), out_dir, "eval") if case.get("eval") else None, **kwargs)
    if cp == 1 and not greedy and trainer.ref_model is not None:
        _reference(trainer.ref_model, case.get("ring_dtype", "bfloat16"))
    trainer.train()
    rank = dist.get_rank() if dist.is_initialized() else 0
    metrics = [{k: h[k] for k in METRICS if k in h} for h in trainer.state.log_history if "loss" in h]
    result = {"rank": rank, "losses": seen.losses, "grads": recorder.grads if rank == 0 else None,
              "metrics": metrics, "generated": seen.generated, "completions": seen.completions,
              "logged": [list(trainer._logs[k]) for k in ("prompt", "completion")],  # TRL's completions log
              "generation_batch_size": args.generation_batch_size}
    if case.get("eval"):  # GRPO's prediction_step skips the hook: unsharded on every rank, gathers over DP
        result["eval_loss"] = trainer.evaluate()["eval_loss"]
    layout.reduce_gradients = True
    return result


def _saved(model: Any, path: str) -> str:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        model.save_pretrained(path)
    if dist.is_initialized():
        dist.barrier()
    return path


def _reference(model: Any, ring_dtype: str) -> None:
    """The one process's reference attention on the reference model too (its own key: its own captured state)."""
    from transformers import AttentionInterface

    forward, capture = parity._reference_attention(ring_dtype)
    AttentionInterface.register(parity.REFERENCE_KEY + "_ref", forward)
    model.config._attn_implementation = parity.REFERENCE_KEY + "_ref"
    model.model.register_forward_pre_hook(capture, with_kwargs=True)


def main_worker(cases_json: str, out_dir: str, cp: int) -> None:
    import torch

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    for i, case in enumerate(json.loads(cases_json)):
        tag = "ring" if cp > 1 else "ref"
        result = run_case(case, cp, os.path.join(out_dir, f"{tag}-{i}-trainer"))
        if result["rank"] == 0:
            torch.save(result, os.path.join(out_dir, f"{tag}-{i}.pt"))
