"""The eval-loop and counter patches in one process with the real Trainer and Accelerator: upstream's code
runs unchanged outside ring CP (no CP, CP off, no eval scope, native mode), and ring mode refuses the
token count where transformers keeps it inline. Multi-rank equality with one process: tests/parity."""

from __future__ import annotations

import importlib.util

import pytest

import cpshim
from tests.helpers import code_runs

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("ring_flash_attn") is None,
                                reason="needs ring-flash-attn (pip install 'cpshim[ring]')"), pytest.mark.needs_cp]


def _upstream(cls, name):
    from cpshim import patching

    raw = vars(cls)[name]
    return raw.__wrapped__ if patching.is_wrapper(raw) else raw


def _eval_rows(n):
    import torch

    g = torch.Generator().manual_seed(3)
    return [{"input_ids": (ids := torch.randint(0, 64, (8,), generator=g)), "labels": ids.clone()} for _ in range(n)]


def test_outside_ring_cp_the_eval_loop_and_counters_are_upstream(trainer):
    """Patched, but not in ring mode with CP: predict() on 5 rows returns 5 rows through upstream's code."""
    from accelerate import Accelerator
    from transformers import Trainer
    from transformers import trainer as trainer_module

    cpshim.enable()
    try:
        originals = (_upstream(Trainer, "evaluation_loop"), _upstream(Accelerator, "gather_for_metrics"),
                     _upstream(Trainer, "store_flos"), trainer_module.speed_metrics.__wrapped__)
        with code_runs(*originals) as ran:
            out = trainer.predict(_eval_rows(5))
            trainer.store_flos()
        assert out.label_ids.shape[0] == 5 and out.predictions.shape[:2] == (5, 8)
        assert set(ran) == set(originals)
    finally:
        cpshim.revert()


def test_gather_outside_the_eval_loop_is_upstream_even_in_ring_mode(trainer, cp):
    """Only the eval loop's own values are CP-replicated: any other gather (TRL's per-shard metric sums in
    a training step) keeps upstream's gather over every process."""
    import torch
    from accelerate import Accelerator

    cpshim.enable()
    upstream_gather = _upstream(Accelerator, "gather_for_metrics")
    with code_runs(upstream_gather, Accelerator.gather) as ran:
        out = trainer.accelerator.gather_for_metrics(torch.tensor([1.0, 2.0]))
    assert upstream_gather in ran and torch.equal(out, torch.tensor([1.0, 2.0]))


def test_tokens_seen_is_refused_where_upstream_counts_inline(trainer, cp, batch):
    """Below transformers 5.3 the count sits inside the training loop, summed over every process: ring mode
    refuses it by name; from 5.3 the `trainer-tokens-seen` patch counts once per CP group."""
    from transformers import __version__

    cpshim.enable()
    trainer.model.config._attn_implementation = "sdpa"
    saved = trainer.args.include_num_input_tokens_seen
    trainer.args.include_num_input_tokens_seen = "all"
    try:
        patched = cpshim.report()["trainer-tokens-seen"]
        inline = patched.state == "not-needed"
        assert inline == (tuple(int(x) for x in __version__.split(".")[:2]) < (5, 3)), patched
        expected = "include_num_input_tokens_seen" if inline else "processes per CP group"
        with pytest.raises(cpshim.CpshimRuntimeError, match=expected):
            trainer._prepare_context_parallel_inputs(trainer.model, dict(batch))
        if inline:
            assert "inline" in patched.reason and ">=5.3" in patched.reason
        # 4.56 reads the flag as a bool ("no" is True): tokens counted before the step give it away
        trainer.args.include_num_input_tokens_seen = "no"
        trainer.state.num_input_tokens_seen = 64
        with pytest.raises(cpshim.CpshimRuntimeError, match="read as True" if inline else "processes per CP group"):
            trainer._prepare_context_parallel_inputs(trainer.model, dict(batch))
        trainer.args.include_num_input_tokens_seen = False
        with pytest.raises(cpshim.CpshimRuntimeError, match="processes per CP group"):  # off: not refused
            trainer._prepare_context_parallel_inputs(trainer.model, dict(batch))
    finally:
        trainer.args.include_num_input_tokens_seen = saved
        trainer.state.num_input_tokens_seen = 0
