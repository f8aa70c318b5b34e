"""Every patch cpshim knows, as data: read without importing torch, transformers or accelerate.

Version boundaries live here and nowhere else. Each `impl` names a function taking
`(original, self, *args, **kwargs)`; `original` is the bound upstream callable.
"""

from __future__ import annotations

from ..registry import Patch, Registry, Variant

TRANSFORMERS_CEILING = "5.24.0"
ACCELERATE_CEILING = "1.15.0"
_T4 = {"transformers": ">=4.56,<5", "accelerate": ">=1.10.1,<2"}
_T5 = {"transformers": ">=5,<6", "accelerate": ">=1.12,<2"}

TRAINER_CP_INPUTS = Patch(
    id="trainer-cp-inputs",
    target="transformers.trainer:Trainer._prepare_context_parallel_inputs",
    dist="transformers",
    floor="4.56.0",
    group="cp-core",
    summary="Trainer's CP input preparation without torch's native partition",
    variants=(
        Variant(
            name="guard-relax",
            requires=_T4,
            ceiling={"transformers": "4.57.6", "accelerate": ACCELERATE_CEILING},
            impl="cpshim.patches.trainer_cp_inputs:relax_guard",
            info={"adds_keys": ["position_ids", "shift_labels"], "keeps": "position_ids, shift_labels, causal-mask check",
                  "turns_off": "SDPA-only guard, torch context_parallel partition"},
        ),
        Variant(
            name="no-op",
            requires=_T5,
            ceiling={"transformers": TRANSFORMERS_CEILING, "accelerate": ACCELERATE_CEILING},
            impl="cpshim.patches.trainer_cp_inputs:no_op",
            info={"adds_keys": [], "keeps": "nothing (full_length_keys=True keeps what guard-relax keeps)",
                  "turns_off": "SDPA-only guard, position_ids, shift_labels, causal-mask check, partition"},
        ),
    ),
    watch=(
        "transformers.trainer:Trainer._prepare_context_parallel_inputs",
        "transformers.trainer:Trainer.training_step@_prepare_context_parallel_inputs",
        "transformers.trainer:Trainer.prediction_step@_prepare_context_parallel_inputs",
        "transformers.trainer:Trainer._is_attention_mask_causal",
        "transformers.trainer_pt_utils:is_attention_mask_causal",
    ),
)

ACCELERATE_PREPARE_CP = Patch(
    id="accelerate-prepare-cp",
    target="accelerate.accelerator:Accelerator._prepare_cp",
    dist="accelerate",
    floor="1.10.0",
    group="cp-core",
    summary="a no-op `_cp_context`: no torch context_parallel, no self_attn hooks",
    variants=(
        Variant(
            name="no-op-context",
            requires={"accelerate": ">=1.10.1,<2"},
            ceiling={"accelerate": ACCELERATE_CEILING},
            impl="cpshim.patches.accelerate_prepare_cp:no_op_context",
            info={"keeps": "its arguments, returned unchanged",
                  "turns_off": "set_rotate_method, torch context_parallel, self_attn mask hooks "
                               "(and 1.15's sliding-window refusal, which cpshim reports itself)"},
        ),
    ),
    watch=(
        "accelerate.accelerator:Accelerator._prepare_cp",
        "accelerate.accelerator:Accelerator.maybe_context_parallel",
        "accelerate.accelerator:Accelerator.prepare@_prepare_cp",
        "accelerate.big_modeling:_attach_context_parallel_hooks",
    ),
)

REGISTRY = Registry((TRAINER_CP_INPUTS, ACCELERATE_PREPARE_CP))
