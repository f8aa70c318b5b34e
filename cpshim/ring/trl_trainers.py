"""What ring mode does with each TRL trainer on the installed TRL (report data; TRL is never imported).

Read from the TRL wheels (`python compat_matrix/generate.py` keeps them): GRPO and RLOO refuse
`cp_size > 1` themselves from TRL 1.4.0 (their configs; relaxed by `trl-grpo-cp-guard`/`trl-rloo-cp-guard`;
their generation split by `trl-*-generate-split` from 1.3.0), Distillation (added in 1.10.0) too; the packing guard of
SFTTrainer appeared in 1.11.0 and is relaxed by `trl-sft-packing-guard` for strategy varlen. DPO, KTO and
reward run the backbone path (`cpshim.ring.backbone`), their precompute patched where a variant fits.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..specs import parse, release_key

_BACKBONE = ("exact (label-less: the backbone runs sharded, its hidden states are all-gathered, heads and loss see "
             "the whole sequence; TRL's fused log-prob head, TRL >= 1.15, runs on the shard and its per-token "
             "log-probs are all-gathered)")
#: The oldest and newest TRL the matrix's cells run each trainer's parity test on (test_trl_parity.py for SFT
#: packing, test_pref_parity.py for DPO, KTO and reward, test_rl_parity.py for GRPO and RLOO).
_TESTED = {"SFT": ("1.11.0", "1.16.0"), "DPO": ("1.5.1", "1.16.0"), "KTO": ("1.5.1", "1.16.0"),
           "Reward": ("1.5.1", "1.16.0"), "GRPO": ("1.5.1", "1.16.0"), "RLOO": ("1.5.1", "1.16.0")}
_GENERATING = ("exact (generation batch: each CP rank generates its share of the group's prompts, completions "
               "exchanged; the backbone sharded, heads and loss on the whole sequence (TRL's fused log-prob head "
               "on the shard, its per-token log-probs all-gathered); accelerate's collectives over data-parallel "
               "ranks; TRL's cp guard relaxed); HF generate only: use_vllm, tools and environments refused")


def _untested(name: str, key: Any, raw: Any) -> str:
    lo, hi = _TESTED[name]
    return "" if release_key(lo) <= key <= release_key(hi) else f"; untested on trl {raw} (tested: {lo}-{hi})"


def trainers(versions: Mapping[str, Any]) -> dict[str, Any] | None:
    """Per TRL trainer: what `cpshim.enable()` does with it (None when TRL is not installed)."""
    from ..patches.catalog import REGISTRY
    from ..registry import select

    info = versions.get("trl")
    raw = info.raw if info is not None else None
    parsed = parse(raw) if raw is not None else None
    if parsed is None:
        return None
    key = parsed[0]
    packing_relaxed = select(REGISTRY["trl-sft-packing-guard"], versions).variant is not None
    sft = "exact (token-level loss: its own shift_labels scored on each shard)"
    if key >= release_key("1.11.0"):
        sft += ("; packing, padding_free and eval_packing with strategy='varlen' (TRL's packing guard relaxed)"
                if packing_relaxed else "; packing refused by TRL's own guard (no variant of trl-sft-packing-guard "
                                        "fits this TRL)")
    else:
        sft += "; padding_free or packing with strategy='varlen' (this TRL has no packing guard)"
    sft += _untested("SFT", key, raw)
    guarded = "refused by TRL itself (cp_size > 1 is rejected in its config)"
    precompute = {name: select(REGISTRY[f"trl-{name.lower()}-precompute-gather"], versions).variant is not None
                  for name in ("DPO", "KTO")}
    out = {"SFTTrainer": sft, "RewardTrainer": _BACKBONE + _untested("Reward", key, raw)}
    for name in ("DPO", "KTO"):
        gathered = ("; precompute_ref_log_probs gathered over data-parallel ranks" if precompute[name] else
                    f"; precompute_ref_log_probs refused (no variant of trl-{name.lower()}-precompute-gather fits "
                    "this TRL)")
        out[f"{name}Trainer"] = _BACKBONE + gathered + _untested(name, key, raw)
    for name in ("GRPO", "RLOO"):
        low = name.lower()
        guard, split = (select(REGISTRY[f"trl-{low}-{pid}"], versions) for pid in ("cp-guard", "generate-split"))
        ready = split.variant is not None and (guard.variant is not None or not guard.needed)  # no guard below 1.4
        out[f"{name}Trainer"] = _GENERATING + _untested(name, key, raw) if ready else (
            f"refused by cpshim: no variant of trl-{low}-generate-split fits this TRL, so its generation batches "
            "are not split over the CP group (train it without cpshim.enable())")
    if key >= release_key("1.10.0"):
        out["DistillationTrainer"] = guarded
    return {"trl": raw, "trainers": out}
