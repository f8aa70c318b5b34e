"""TRL's SFTTrainer with packing: ring CP (strategy varlen) against one process, same script.

Run by `tests/parity/test_trl_parity.py`, once in one process and once as cp=2 ranks. A case:

    {"id", "packing" ("bfd" | "wrapped" | None), "padding_free", "eval_packing", "steps", "batch",
     "negative"}

Rows are the copy task (attention across shards matters) cut to ragged lengths, their prompt masked
(-100, a completion-only loss), pre-tokenized; TRL itself packs them into bins of `MAX_LENGTH`. One
process runs the reference attention, which keeps documents apart by the packed position_ids exactly
as transformers does. Recorded: per-step losses, first-step per-tensor gradients (SGD), eval loss.
The negative control makes the ring treat each packed row as one document (documents attend across
their boundaries, what TRL's guard warns of): it must fail the same check. Each ring launch also
records what TRL's guard does under zigzag and in external mode (its own refusal must stay).
"""

from __future__ import annotations

import json
import os
from typing import Any

from cpshim.ring import parity

SEQ, MAX_LENGTH = 64, 128


def rows(n: int, seed: int) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        half = int(torch.randint(SEQ // 8, SEQ // 3, (1,), generator=g))  # 16-40 tokens: bins of several
        first = torch.randint(3, parity.VOCAB, (half,), generator=g)
        ids = torch.cat([first, first])
        labels = ids.clone()
        labels[: int(torch.randint(1, half, (1,), generator=g))] = -100
        out.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
    return out


#: User and assistant turns; only the assistant's (its tokens and the EOS that ends it) are trained on.
#: (Each generation span starts on a token: transformers < 5.24 maps a span's first character to its token.)
CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ ' ' }}{% generation %}{{ m['content'] + "
                 "' <eos>' }}{% endgeneration %}{% else %}{{ ' ' + m['content'] }}{% endif %}{% endfor %}")


def chats(n: int, seed: int) -> list[dict]:
    """The copy task as conversations: a user turn of random words, an assistant turn that repeats them."""
    out = []
    for row in rows(n, seed):
        words = [f"t{i}" for i in row["input_ids"][: len(row["input_ids"]) // 2]]
        out.append({"messages": [{"role": "user", "content": " ".join(words)},
                                 {"role": "assistant", "content": " ".join(words)}]})
    return out


def _chat_tokenizer() -> Any:
    from tests.parity._pref_worker import tokenizer

    tok = tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _config(case: dict, cp: int, out_dir: str) -> Any:
    from trl import SFTConfig

    extra: dict[str, Any] = {}
    if cp > 1:
        from accelerate import ParallelismConfig

        extra["parallelism_config"] = ParallelismConfig(cp_size=cp)
    packing = case.get("packing")
    if packing:
        extra.update(packing=True, packing_strategy=packing, eval_packing=case.get("eval_packing", False))
    extra["padding_free"] = case.get("padding_free", packing == "bfd")
    if case.get("assistant_only"):
        extra["assistant_only_loss"] = True
    return SFTConfig(
        output_dir=out_dir, per_device_train_batch_size=case["batch"], per_device_eval_batch_size=case["batch"],
        max_steps=case["steps"], learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=0.0, logging_steps=1, report_to=[], use_cpu=True, seed=0, data_seed=0,
        disable_tqdm=True, save_strategy="no", eval_strategy="no", max_length=MAX_LENGTH if packing else None,
        **extra)


def _trainer(case: dict, cp: int, out_dir: str, callbacks: list) -> Any:
    import torch
    from datasets import Dataset
    from transformers import LlamaForCausalLM
    from trl import SFTTrainer

    from tests.parity._eval_worker import _tokenizer

    torch.manual_seed(0)
    model = LlamaForCausalLM(parity._config())
    if cp == 1:
        from transformers import AttentionInterface

        forward, capture = parity._reference_attention()
        AttentionInterface.register(parity.REFERENCE_KEY, forward)
        model.config._attn_implementation = parity.REFERENCE_KEY
        model.register_forward_pre_hook(capture, with_kwargs=True)
    data, tokenizer = (chats, _chat_tokenizer()) if case.get("assistant_only") else (rows, _tokenizer())
    return SFTTrainer(model=model, args=_config(case, cp, out_dir), train_dataset=Dataset.from_list(data(24, 7)),
                      eval_dataset=Dataset.from_list(data(6, 99)), processing_class=tokenizer,
                      callbacks=callbacks)


def _one_document_per_row() -> None:
    """Negative control: varlen without the documents (each packed row attends across its boundaries)."""
    import torch

    from cpshim.ring import sharding

    def whole_rows(position_ids: Any) -> Any:
        pos = position_ids.reshape(-1, position_ids.shape[-1])
        return torch.arange(pos.shape[0] + 1, dtype=torch.int32) * pos.shape[-1]

    sharding.cu_seqlens_from_position_ids = whole_rows


def guard_outcomes(case: dict, out_dir: str) -> dict:
    """What constructing the packing SFTTrainer does under cpshim's other settings (ring ranks only)."""
    import cpshim

    outcomes = {}
    # external mode (apply() without ring: the user's trainer owns CP) keeps TRL's guard. Native mode cannot
    # reach it on CPU: accelerate's own validation refuses multi-CPU CP first.
    for name, setup in (("zigzag", lambda: cpshim.enable(strategy="zigzag")), ("external", cpshim.disable)):
        setup()
        try:
            _trainer(case, 2, os.path.join(out_dir, f"guard-{name}"), [])
            outcomes[name] = "constructed"
        except Exception as e:  # noqa: BLE001 - recorded for the test to judge
            cause = e.__cause__
            outcomes[name] = f"{type(e).__name__}: {e} | cause: {type(cause).__name__ if cause else None}"
    cpshim.enable(strategy="varlen")
    return outcomes


def run_case(case: dict, cp: int, out_dir: str) -> dict:
    import torch.distributed as dist

    import cpshim

    if cp > 1:
        cpshim.enable(strategy="varlen")
        if case.get("negative"):
            _one_document_per_row()
    recorder = parity._Recorder()
    trainer = _trainer(case, cp, out_dir, [recorder.callback])
    trainer.train()
    rank = dist.get_rank() if dist.is_initialized() else 0
    batch = next(iter(trainer.get_train_dataloader()))
    return {"rank": rank, "losses": parity._losses(trainer), "grads": recorder.grads if rank == 0 else None,
            "eval_loss": trainer.evaluate()["eval_loss"],
            "first_batch": {k: tuple(v.shape) for k, v in batch.items() if hasattr(v, "shape")}}


def main_worker(cases_json: str, out_dir: str, cp: int) -> None:
    import torch

    cases = json.loads(cases_json)
    for i, case in enumerate(cases):
        tag = "ring" if cp > 1 else "ref"
        result = run_case(case, cp, os.path.join(out_dir, f"{tag}-{i}-trainer"))
        if result["rank"] == 0:
            torch.save(result, os.path.join(out_dir, f"{tag}-{i}.pt"))
    if cp > 1:
        import torch.distributed as dist

        outcomes = guard_outcomes(cases[0], out_dir)
        if dist.get_rank() == 0:
            with open(os.path.join(out_dir, "guard.json"), "w") as fh:
                json.dump(outcomes, fh)
