"""Every patch cpshim knows, as data: read without importing torch, transformers or accelerate.

Version boundaries live here and nowhere else. Each `impl` names a function taking
`(original, self, *args, **kwargs)`; `original` is the bound upstream callable.
"""

from __future__ import annotations

from ..registry import Patch, Registry, Variant
from .ceilings import ACCELERATE_CEILING, TRANSFORMERS_CEILING, TRL_CEILING
from .mixer_catalog import MIXER_PATCHES
from .torch_uses import TORCH_USES
from .trl_catalog import TRL_PATCHES

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
            info={"adds_keys": ["position_ids", "shift_labels"],
                  "keeps": "position_ids, shift_labels, causal-mask check",
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
            requires={"accelerate": ">=1.10,<2"},
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

_ACC = {"accelerate": ">=1.10,<2"}  # 1.10.0 shares 1.10.1's code (fingerprints)
_ACC_CEILING = {"accelerate": ACCELERATE_CEILING}

PARALLELISM_VALIDATE = Patch(
    id="parallelism-config-validate",
    target="accelerate.parallelism_config:ParallelismConfig._validate_accelerator",
    dist="accelerate",
    floor="1.10.0",
    group="cp-setup",
    summary="accept multi-CPU (gloo) and DeepSpeed ZeRO when cpshim owns CP; every other check kept",
    variants=(Variant("multi-device-view", _ACC, _ACC_CEILING,
                      "cpshim.patches.accelerate_parallelism:relax_validation",
                      info={"keeps": "total-size, FSDP2-without-shard-dim and handler checks",
                            "turns_off": "refusal of MULTI_CPU and DEEPSPEED distributed types"}),),
    watch=(
        "accelerate.parallelism_config:ParallelismConfig._validate_accelerator",
        "accelerate.accelerator:Accelerator.__init__@_validate_accelerator",
        "accelerate.accelerator:Accelerator.multi_device",
    ),
)

PARALLELISM_MESH = Patch(
    id="parallelism-config-mesh",
    target="accelerate.parallelism_config:ParallelismConfig.build_device_mesh",
    dist="accelerate",
    floor="1.10.0",
    group="cp-setup",
    summary="fill dp_replicate = world / cp when only cp_size was given",
    variants=(Variant("fill-dp-replicate", _ACC, _ACC_CEILING,
                      "cpshim.patches.accelerate_parallelism:fill_data_parallel",
                      info={"keeps": "upstream's mesh layout", "adds": "dp_replicate = world / cp"}),),
    watch=(
        "accelerate.parallelism_config:ParallelismConfig.build_device_mesh",
        "accelerate.parallelism_config:ParallelismConfig._get_mesh",
        "accelerate.accelerator:Accelerator.__init__@get_device_mesh",
    ),
)

STATE_CP_FSDP = Patch(
    id="state-cp-without-fsdp",
    target="accelerate.state:AcceleratorState.__init__",
    dist="accelerate",
    floor="1.10.0",
    group="cp-multi-gpu",
    summary="multi-GPU CP without an FSDP2 plugin (DDP / DeepSpeed); GPU-only path",
    variants=(Variant("allow-standalone", _ACC, _ACC_CEILING,
                      "cpshim.patches.accelerate_state:allow_cp_without_fsdp",
                      info={"gpu_only": True, "keeps": "all of AcceleratorState's setup",
                            "turns_off": "cp-needs-FSDP2 refusal and forced FSDP type without a plugin"}),),
    watch=("accelerate.state:AcceleratorState.__init__",),
)

STATE_IS_FSDP2 = Patch(
    id="state-is-fsdp2",
    target="accelerate.state:AcceleratorState.is_fsdp2",
    dist="accelerate",
    floor="1.10.0",
    group="cp-multi-gpu",
    summary="is_fsdp2 is False (not AttributeError) without an FSDP plugin",
    variants=(Variant("none-plugin-safe", _ACC, _ACC_CEILING,
                      "cpshim.patches.accelerate_state:is_fsdp2_without_plugin",
                      info={"keeps": "upstream's answer whenever a plugin exists"}),),
    watch=("accelerate.state:AcceleratorState.is_fsdp2",),
)

ATTENTION_DISPATCH = Patch(
    id="attention-dispatch",
    target="transformers.utils.generic:GeneralInterface.__getitem__",
    dist="transformers",
    floor="4.53.0",
    summary="ring attention for every attention key while a sharded step is in flight; no mask for it",
    follows_mode=False,
    gate="cpshim.ring.runtime:ROUTING",
    variants=(Variant("route", {"transformers": ">=4.56,<6"}, {"transformers": TRANSFORMERS_CEILING},
                      "cpshim.ring.routing:route",
                      info={"keeps": "every registry lookup outside sharded steps",
                            "adds": "ring routing of AttentionInterface values, no mask from "
                                    "AttentionMaskInterface values during sharded steps"}),),
    watch=(
        "transformers.utils.generic:GeneralInterface.__getitem__",
        "transformers.modeling_utils:AttentionInterface.get_interface",
    ),  # model call sites and masking_utils are not imported with the Trainer: watching them costs ~0.2 s
)

TRAINER_TOTAL_BATCH = Patch(
    id="trainer-total-batch",
    target="transformers.trainer:Trainer.get_total_train_batch_size",
    dist="transformers",
    floor="4.56.0",
    fixed_in="5.0.0",
    summary="ring mode: the total batch counts data-parallel ranks only (4.x counts CP ranks too)",
    variants=(Variant("divide-by-cp", _T4, {"transformers": "4.57.6", "accelerate": ACCELERATE_CEILING},
                      "cpshim.patches.trainer_cp_inputs:total_batch_without_cp",
                      info={"keeps": "upstream's count", "turns_off": "counting the ranks of a CP group as "
                                                                      "data-parallel (throughput cp x too high)"}),),
    watch=("transformers.trainer:Trainer.get_total_train_batch_size",),
)

TRAINER_NUM_ITEMS = Patch(
    id="trainer-num-items",
    target="transformers.trainer:Trainer.get_batch_samples",
    dist="transformers",
    floor="4.56.0",
    fixed_in="5.23.0",
    summary="ring mode, average_tokens_across_devices=False: divide the target count by cp exactly",
    variants=(Variant("exact-cp-division", {"transformers": ">=4.56,<5.23"}, {"transformers": "5.22.2"},
                      "cpshim.patches.trainer_num_items:exact_count",
                      info={"keeps": "upstream's batches and target count",
                            "turns_off": "floor division of the count by the ranks sharing a batch"}),),
    watch=("transformers.trainer:Trainer.get_batch_samples",
           "transformers.trainer:Trainer._get_num_items_in_batch"),
)

TRAINER_EVAL_NUM_ITEMS = Patch(
    id="trainer-eval-num-items",
    target="transformers.trainer:Trainer._get_num_items_in_batch",
    dist="transformers",
    floor="4.57.0",
    needed_from="4.57.0",
    fixed_in="5.23.0",
    summary="ring mode: eval steps count targets as their sharding needs (undivided before 5.16, exact after)",
    variants=(Variant("undivided-when-unsharded", {"transformers": ">=4.57,<5.16"}, {"transformers": "5.15.1"},
                      "cpshim.patches.trainer_num_items:eval_count_unsharded",
                      info={"keeps": "upstream's count in training and outside ring mode",
                            "turns_off": "division by cp for eval steps that prediction_step never shards"}),
              Variant("exact-cp-division-in-eval", {"transformers": ">=5.16,<5.23"}, {"transformers": "5.22.2"},
                      "cpshim.patches.trainer_num_items:eval_count_exact",
                      info={"keeps": "upstream's count in training, with average_tokens_across_devices, and "
                                     "outside ring mode",
                            "turns_off": "floor division of the eval count by cp when tokens are not averaged"})),
    watch=("transformers.trainer:Trainer._get_num_items_in_batch",
           "transformers.trainer:Trainer.prediction_step@_get_num_items_in_batch"),
)

EVAL_GATHER = Patch(
    id="eval-gather-for-metrics",
    target="accelerate.accelerator:Accelerator.gather_for_metrics",
    dist="accelerate",
    floor="1.10.0",
    summary="ring mode, the Trainer's eval loop: gather once per data-parallel rank, not once per CP rank",
    variants=(Variant("gather-over-dp", _ACC, _ACC_CEILING, "cpshim.patches.eval_gather:gather_for_metrics",
                      info={"keeps": "upstream's function, tensor/object choice and last-batch truncation",
                            "turns_off": "gathering the cp identical copies of each eval value (predict() "
                                         "returned every row cp times)"}),),
    watch=("accelerate.accelerator:Accelerator.gather_for_metrics",
           "accelerate.data_loader:DataLoaderStateMixin.begin",
           "accelerate.data_loader:prepare_data_loader@torch_device_mesh"),
)

TRAINER_EVAL_LOOP = Patch(
    id="trainer-eval-loop",
    target="transformers.trainer:Trainer.evaluation_loop",
    dist="transformers",
    floor="4.56.0",
    summary="ring mode: the eval loop's gathers run over data-parallel ranks; its steps are counted per DP rank",
    variants=(Variant("dp-scope", {"transformers": ">=4.56,<6"}, {"transformers": TRANSFORMERS_CEILING},
                      "cpshim.patches.eval_gather:evaluation_loop",
                      info={"keeps": "the whole loop", "adds": "the scope in which gather_for_metrics gathers over "
                                                               "DP ranks; the step count for the speed metrics"}),),
    watch=("transformers.trainer:Trainer.evaluation_loop",),
)

EVAL_SPEED = Patch(
    id="trainer-eval-speed",
    target="transformers.trainer:speed_metrics",
    dist="transformers",
    floor="4.56.0",
    summary="ring mode: evaluate()/predict() step rates count data-parallel ranks only",
    variants=(Variant("dp-steps", {"transformers": ">=4.56,<6"}, {"transformers": TRANSFORMERS_CEILING},
                      "cpshim.patches.eval_gather:speed_metrics",
                      info={"keeps": "upstream's speed metrics", "turns_off": "dividing eval steps by CP ranks "
                                                                              "(eval_steps_per_second)"}),),
    watch=("transformers.trainer_utils:speed_metrics",
           "transformers.trainer:Trainer.evaluate@speed_metrics",
           "transformers.trainer:Trainer.predict@speed_metrics"),
)

TRAINER_TOKENS_SEEN = Patch(
    id="trainer-tokens-seen",
    target="transformers.trainer:Trainer._track_num_input_tokens",
    dist="transformers",
    floor="5.3.0",
    refused_before=("5.3.0", "the count is inline in the training loop; ring mode refuses "
                             "include_num_input_tokens_seen there (upgrade transformers to >=5.3)"),
    summary="ring mode: num_input_tokens_seen sums data-parallel ranks only (CP ranks counted it cp times)",
    variants=(Variant("dp-sum", {"transformers": ">=5.3,<6"}, {"transformers": TRANSFORMERS_CEILING},
                      "cpshim.patches.trainer_counters:tokens_over_data_parallel",
                      info={"keeps": "upstream's count per batch",
                            "turns_off": "summing it over the CP ranks that share the batch"}),),
    watch=("transformers.trainer:Trainer._track_num_input_tokens",),
)

TRAINER_FLOS = Patch(
    id="trainer-store-flos",
    target="transformers.trainer:Trainer.store_flos",
    dist="transformers",
    floor="4.56.0",
    summary="ring mode: total_flos counts each CP group's batch once",
    variants=(Variant("once-per-cp-group", {"transformers": ">=4.56,<6"}, {"transformers": TRANSFORMERS_CEILING},
                      "cpshim.patches.trainer_counters:flos_once_per_group",
                      info={"keeps": "upstream's sum over processes",
                            "turns_off": "the FLOPs of the cp-1 ranks whose batch their group's first rank "
                                         "already counted"}),),
    watch=("transformers.trainer:Trainer.store_flos",
           "transformers.trainer_pt_utils:distributed_broadcast_scalars"),
)

def _dp_view(pid: str, target: str, impl: str, what: str, watch: tuple[str, ...]) -> Patch:
    return Patch(
        id=pid, target=target, dist="accelerate", floor="1.10.0",
        summary=f"ring mode, label-less and generating steps: {what} over data-parallel "
                "ranks, not CP ranks",
        variants=(Variant("dp-view", _ACC, _ACC_CEILING, f"cpshim.patches.accelerate_dp_view:{impl}",
                          info={"keeps": "upstream's collective outside replicated scopes and in sharded steps "
                                         "whose values are per-shard partials",
                                "turns_off": f"{what} counting the CP peers that hold the same values"}),),
        watch=watch,
    )


_OPS = "accelerate.utils.operations"
DP_VIEW = (
    _dp_view("accelerate-gather-dp", f"{_OPS}:_gpu_gather", "gpu_gather", "gather (Accelerator.gather and "
             "accelerate.utils.gather)", (f"{_OPS}:_gpu_gather", f"{_OPS}:gather", "accelerate.accelerator:"
                                          "Accelerator.gather")),
    _dp_view("accelerate-gather-object-dp", f"{_OPS}:_gpu_gather_object", "gpu_gather_object", "gather_object",
             (f"{_OPS}:_gpu_gather_object", f"{_OPS}:gather_object")),
    _dp_view("accelerate-reduce-dp", "accelerate.accelerator:Accelerator.reduce", "reduce", "Accelerator.reduce",
             ("accelerate.accelerator:Accelerator.reduce", f"{_OPS}:reduce")),
    _dp_view("accelerate-num-processes-dp", "accelerate.accelerator:Accelerator.num_processes", "num_processes",
             "Accelerator.num_processes", ("accelerate.accelerator:Accelerator.num_processes",)),
    _dp_view("accelerate-process-index-dp", "accelerate.accelerator:Accelerator.process_index", "process_index",
             "Accelerator.process_index", ("accelerate.accelerator:Accelerator.process_index",)),
)

ARGS_WORLD_SIZE = Patch(
    id="trainer-args-world-size",
    target="transformers.training_args:TrainingArguments.world_size",
    dist="transformers",
    floor="4.56.0",
    follows_mode=False,
    summary="the data-parallel size to a relaxed TRL guard's own world_size read (GRPO/RLOO generation batch)",
    variants=(Variant("dp-for-relaxed-trl-guard", {"transformers": ">=4.56,<6"},
                      {"transformers": TRANSFORMERS_CEILING}, "cpshim.patches.trl_rl:world_size",
                      info={"keeps": "upstream's value for every read outside a relaxed guard's frame",
                            "turns_off": "CP ranks counted as data-parallel by GRPOConfig/RLOOConfig.__post_init__"}),),
    watch=("transformers.training_args:TrainingArguments.world_size",),
)

REGISTRY = Registry((TRAINER_CP_INPUTS, ACCELERATE_PREPARE_CP, PARALLELISM_VALIDATE, PARALLELISM_MESH,
                     STATE_CP_FSDP, STATE_IS_FSDP2, ATTENTION_DISPATCH, TRAINER_TOTAL_BATCH,
                     TRAINER_NUM_ITEMS, TRAINER_EVAL_NUM_ITEMS, EVAL_GATHER, TRAINER_EVAL_LOOP, EVAL_SPEED,
                     TRAINER_TOKENS_SEEN, TRAINER_FLOS, *DP_VIEW, ARGS_WORLD_SIZE, *MIXER_PATCHES, *TRL_PATCHES,
                     *TORCH_USES))

__all__ = ["ACCELERATE_CEILING", "REGISTRY", "TRANSFORMERS_CEILING", "TRL_CEILING"]
