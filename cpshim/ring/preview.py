"""What ring mode would choose in this environment, without importing torch or ring-flash-attn.

The CLI runs in another process than the training, so it can only say what *would* be bound; the
in-process report (after `enable()`) says what *is* bound.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Mapping

from ..specs import contains, parse, parse_range
from ..versions import VersionInfo

# ring-flash-attn 0.1.8's HF adapter imports this name from transformers.modeling_flash_attention_utils;
# it is there in 4.51-5.3.0 only (5.4.0 has it nowhere, 5.5.0+ only in transformers.utils).
GE_2_10_PRESENT = parse_range(">=4.51,<5.4")


def preview(versions: Mapping[str, VersionInfo]) -> dict[str, Any]:
    from .trl_trainers import trainers

    ring, t = versions.get("ring-flash-attn"), versions.get("transformers")
    out: dict[str, Any] = {"ring_flash_attn": ring.raw if ring else None, "strategy_default": "zigzag"}
    trl = trainers(versions)
    if trl is not None:
        out["trl"] = trl
    if ring is None or ring.raw is None:
        out["would_choose"] = "nothing: ring-flash-attn is not installed: pip install 'cpshim[ring]'"
        return out
    real = importlib.util.find_spec("flash_attn") is not None
    out["would_choose"] = ("flash_attn (installed)" if real else
                           "torch_cuda on CUDA devices, reference (pure torch) on CPU; flash_attn is not installed")
    parsed = parse(t.raw) if t is not None and t.raw is not None else None
    if parsed is not None:
        present = contains(GE_2_10_PRESENT, parsed[0])
        out["import_shim"] = ([] if present else ["transformers.modeling_flash_attention_utils."
                                                 "is_flash_attn_greater_or_equal_2_10 (during the import only)"])
        if not real:
            out["import_shim"].append("flash_attn, flash_attn.flash_attn_interface (during the import only)")
    return out
