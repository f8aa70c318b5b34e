"""The Trainer's eval loop under ring CP: gathers over data-parallel ranks, eval steps counted per DP rank.

Upstream's `evaluation_loop` gathers losses, logits, labels and inputs with accelerate's
`gather_for_metrics` over every process, and truncates the last batch to the dataset's remainder,
sized for data-parallel ranks. With CP peers counted as ranks, `predict()` returned every row cp times
(34 rows for 18) and the eval loss weighted the last batch wrongly. In ring mode the loop's values are
identical on the ranks of a CP group (see `cpshim.ring.trainer_hook`), so inside the loop, outside a
sharded step, `gather_for_metrics` gathers over the DP group and keeps upstream's truncation;
`evaluate()`/`predict()` count their steps per DP rank too (`eval_steps_per_second`).
"""

from __future__ import annotations

import math
from typing import Any

from ..modes import RING, cp_owned
from .views import AttributeView


def gather_for_metrics(call: Any, accelerator: Any, input_data: Any, use_gather_object: bool = False) -> Any:
    """`Accelerator.gather_for_metrics` (1.10-1.15). Keeps: upstream's function, its tensor/object choice
    and last-batch truncation. Turns off: gathering the cp copies of each value (ring eval loop only)."""
    from ..ring import data_parallel, runtime

    g = data_parallel.replicated_groups(call.mode, accelerator)
    if g is None:
        return call.original(input_data, use_gather_object)
    from accelerate.utils import recursively_apply

    try:
        recursively_apply(lambda x: x, input_data, error_on_other_type=True)
        tensors = not use_gather_object
    except TypeError:
        tensors = False
    if not tensors:
        return _truncated(accelerator, data_parallel.gather_object(input_data, g))
    if runtime.settings["check_batches"]:
        data_parallel.check_replicated(input_data, g, "a value the eval loop gathers")
    view = AttributeView(accelerator, gather=lambda data: data_parallel.gather(data, g))
    return call.original.__func__(view, input_data, False)


def _truncated(accelerator: Any, data: Any) -> Any:
    """Upstream's end-of-dataloader rule for gathered objects: keep the dataset's remainder."""
    state = accelerator.gradient_state
    if state.end_of_dataloader and state.remainder > 0:
        return data[: state.remainder]
    return data


def evaluation_loop(call: Any, trainer: Any, dataloader: Any, description: str, prediction_loss_only: Any = None,
                    ignore_keys: Any = None, metric_key_prefix: str = "eval") -> Any:
    """`Trainer.evaluation_loop` (4.56-5.24). Keeps: all of it. Adds (ring mode): the scope in which its
    gathers run over DP ranks, and its step count per DP rank for the speed metrics that follow."""
    from ..ring import data_parallel, runtime

    pc = getattr(trainer.accelerator, "parallelism_config", None)
    if call.mode != RING or not cp_owned(pc):
        return call.original(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
    # a labelled eval step counts its targets with transformers' CP-aware gathers: only gather_for_metrics is over
    # DP ranks; GRPO's and RLOO's eval steps generate and score whole on each rank: every collective is
    from .trl_rl import generating_trainer

    with runtime.replicated(trainer, collectives=generating_trainer(trainer) is not None):
        output = call.original(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
    g = data_parallel.groups(trainer.accelerator)
    if g is not None and output.num_samples and not data_parallel.disabled:
        steps = math.ceil(output.num_samples / (trainer.args.eval_batch_size * g.dp_size))
        runtime.note_eval_steps(metric_key_prefix, output.num_samples, steps)
    return output


def speed_metrics(call: Any, _module: Any, split: str, start_time: float, num_samples: Any = None,
                  num_steps: Any = None, num_tokens: Any = None) -> Any:
    """`transformers.trainer.speed_metrics` as `evaluate()`/`predict()` call it right after a ring eval loop:
    upstream divides the samples by `eval_batch_size * world_size`, counting CP ranks as data-parallel."""
    from ..ring import runtime

    steps = runtime.take_eval_steps(split, num_samples)
    return call.original(split, start_time, num_samples, steps if steps is not None else num_steps, num_tokens)
