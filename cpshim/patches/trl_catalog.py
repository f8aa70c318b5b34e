"""TRL's entries in the registry (TRL is a distribution cpshim patches, like transformers and accelerate).

Ranges come from the TRL wheels (`python compat_matrix/generate.py` reads every release; the packing
guard of `SFTTrainer.__init__` appeared in 1.11.0, the cp guards of GRPOConfig/RLOOConfig in 1.4.0; their
`_generate` is the same from 1.3.0).
Implementations: :mod:`cpshim.patches.trl_sft`, :mod:`cpshim.patches.trl_preference`, :mod:`cpshim.patches.trl_rl`.
"""

from __future__ import annotations

from ..registry import Patch, Variant
from .ceilings import ACCELERATE_CEILING, TRL_CEILING

TRL_SFT_PACKING_GUARD = Patch(
    id="trl-sft-packing-guard",
    target="trl.trainer.sft_trainer:SFTTrainer.__init__",
    dist="trl",
    floor="1.11.0",
    needed_from="1.11.0",
    group="trl-sft-packing",
    summary="ring mode, strategy='varlen': TRL's packing guard (right for torch's native CP) relaxed",
    variants=(Variant("relax-when-varlen", {"trl": ">=1.11,<2"}, {"trl": TRL_CEILING},
                      "cpshim.patches.trl_sft:packing_guard",
                      info={"keeps": "the guard in every other case (native mode, zigzag, contiguous), its error "
                                     "naming strategy='varlen' in ring mode",
                            "turns_off": "the packing / eval_packing refusal when cpshim's varlen ring keeps "
                                         "packed documents apart"}),),
    watch=("trl.trainer.sft_trainer:SFTTrainer.__init__@cp_enabled",),
)

ACCELERATE_CP_ENABLED = Patch(
    id="accelerate-cp-enabled",
    target="accelerate.parallelism_config:ParallelismConfig.cp_enabled",
    dist="accelerate",
    floor="1.10.0",
    group="trl-sft-packing",
    follows_mode=False,
    summary="False to the cp_enabled reads of a relaxed TRL guard's own frame; upstream's value to every other",
    variants=(Variant("false-for-relaxed-trl-guard", {"accelerate": ">=1.10,<2"}, {"accelerate": ACCELERATE_CEILING},
                      "cpshim.patches.trl_sft:cp_enabled",
                      info={"keeps": "upstream's value for every read outside trl-sft-packing-guard's scope",
                            "turns_off": "cp_enabled=True as seen by the relaxed SFTTrainer.__init__ frame"}),),
    watch=("accelerate.parallelism_config:ParallelismConfig.cp_enabled",),
)



def _precompute(trainer: str, module: str, floor: str) -> Patch:
    return Patch(
        id=f"trl-{trainer.lower()}-precompute-gather",
        target=f"trl.trainer.{module}:{trainer}Trainer._precompute_ref_logps",
        dist="trl",
        floor=floor,
        needed_from=floor,
        summary=f"ring mode: {trainer}Trainer's precomputed reference log-probs gathered over data-parallel ranks "
                "(not once per CP rank)",
        variants=(Variant("gather-over-dp", {"trl": f">={floor},<2"}, {"trl": TRL_CEILING},
                          "cpshim.patches.trl_preference:precompute_ref_logps",
                          info={"keeps": "the whole method",
                                "adds": "the scope in which gather_for_metrics gathers over data-parallel ranks"}),),
        watch=(f"trl.trainer.{module}:{trainer}Trainer._precompute_ref_logps",),
    )


def _rl(trainer: str) -> tuple[Patch, Patch]:
    low = trainer.lower()
    guard = Patch(
        id=f"trl-{low}-cp-guard",
        target=f"trl.trainer.{low}_config:{trainer}Config.__post_init__",
        dist="trl",
        floor="1.4.0",
        needed_from="1.4.0",
        summary=f"ring mode: {trainer}Config's cp_size > 1 refusal (right for transformers' own CP) relaxed; its "
                "generation batch sized by data-parallel ranks",
        variants=(Variant("relax-in-ring-mode", {"trl": ">=1.4,<2"}, {"trl": TRL_CEILING},
                          "cpshim.patches.trl_rl:config_guard",
                          info={"keeps": "every other check of __post_init__, and the guard outside ring mode",
                                "turns_off": "the cp_size > 1 refusal, and world_size counting CP ranks in "
                                             "generation_batch_size"}),),
        watch=(f"trl.trainer.{low}_config:{trainer}Config.__post_init__@cp_enabled",
               f"trl.trainer.{low}_config:{trainer}Config.__post_init__@world_size"),
    )
    split = Patch(
        id=f"trl-{low}-generate-split",
        target=f"trl.trainer.{low}_trainer:{trainer}Trainer._generate",
        dist="trl",
        floor="1.3.0",
        summary=f"ring mode: {trainer}Trainer's generation split over the CP group (each rank its share, "
                "completions exchanged)",
        variants=(Variant("split-over-cp", {"trl": ">=1.3,<2"}, {"trl": TRL_CEILING},
                          "cpshim.patches.trl_rl:generate_split",
                          info={"keeps": "the whole method, run on this rank's share of the prompts",
                                "turns_off": "every rank of a CP group generating its group's whole batch"}),),
        watch=(f"trl.trainer.{low}_trainer:{trainer}Trainer._generate",
               f"trl.trainer.{low}_trainer:{trainer}Trainer._generate_and_score_completions@_generate",
               f"trl.trainer.{low}_trainer:{trainer}Trainer._generate_and_score_completions@process_index",
               f"trl.trainer.{low}_trainer:{trainer}Trainer._prepare_inputs"),
    )
    return guard, split


TRL_PATCHES = (TRL_SFT_PACKING_GUARD, ACCELERATE_CP_ENABLED, _precompute("DPO", "dpo_trainer", "0.29.0"),
               _precompute("KTO", "kto_trainer", "1.8.0"), *_rl("GRPO"), *_rl("RLOO"))
