"""What ring mode does with each TRL trainer on the installed TRL (report data; TRL is never imported).

Read from the TRL wheels (`python compat_matrix/generate.py` keeps them): GRPO and RLOO refuse
`cp_size > 1` themselves from TRL 1.4.0 (their configs), Distillation (added in 1.10.0) too; the packing
guard of SFTTrainer appeared in 1.11.0 and is relaxed by `trl-sft-packing-guard` for strategy varlen.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..specs import parse, release_key

_NO_LABELS = ("refused by cpshim: its training batches carry no labels (a loss of per-sequence sums would "
              "see each rank's partial sum); train it without cpshim.enable()")
_TESTED = ("1.11.0", "1.16.0")  # the TRL releases the matrix's cells run (tests/parity/test_trl_parity.py)


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
    lo, hi = (release_key(v) for v in _TESTED)
    sft = "exact (token-level loss: its own shift_labels scored on each shard)"
    if key >= release_key("1.11.0"):
        sft += ("; packing, padding_free and eval_packing with strategy='varlen' (TRL's packing guard relaxed)"
                if packing_relaxed else "; packing refused by TRL's own guard (no variant of trl-sft-packing-guard "
                                        "fits this TRL)")
    else:
        sft += "; padding_free or packing with strategy='varlen' (this TRL has no packing guard)"
    if not lo <= key <= hi:
        sft += f"; untested on trl {raw} (tested: {_TESTED[0]}-{_TESTED[1]})"
    guarded = "refused by TRL itself (cp_size > 1 is rejected in its config)"
    out = {"SFTTrainer": sft, "DPOTrainer": _NO_LABELS, "RewardTrainer": _NO_LABELS, "KTOTrainer": _NO_LABELS,
           "GRPOTrainer": guarded if key >= release_key("1.4.0") else _NO_LABELS,
           "RLOOTrainer": guarded if key >= release_key("1.4.0") else _NO_LABELS}
    if key >= release_key("1.10.0"):
        out["DistillationTrainer"] = guarded
    return {"trl": raw, "trainers": out}
