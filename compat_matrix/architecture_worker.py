"""The architecture table's work inside fresh interpreters (`compat_matrix/architectures.py` runs them).

`classify`: per model type, the shrunk config, `cpshim check --model`'s verdict on it (the Trainer hook's
own refusal rules), and the tiny model built; one JSON line each. `parity`: the parity run of
`cpshim.ring.parity` per type, the error saved in place of the result; a cpshim refusal goes on to the
next case, any other error ends the launch (the next one starts clean from the case after it).
"""

from __future__ import annotations

import json
import os
import sys
import traceback

_EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def features(config, model=None) -> list[str]:
    """What the type brings to CP beyond full attention (the table's column)."""
    from cpshim.patches.accelerate_prepare_cp import non_full_attention_layers

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    out = list(non_full_attention_layers(config))
    if getattr(text, "attn_logit_softcapping", None):
        out.append("softcap")
    if model is not None and any(n.endswith(".sinks") for n, _ in model.named_parameters()):
        out.append("sinks")
    if getattr(text, "kv_lora_rank", None):
        out.append("MLA")
    if any((getattr(text, k, 0) or 0) > 1 for k in _EXPERTS if isinstance(getattr(text, k, 0), int)):
        out.append("MoE")
    if getattr(config, "vision_config", None) is not None:
        out.append("vision")
    if getattr(config, "audio_config", None) is not None:
        out.append("audio")
    return out


def _one(model_type: str) -> dict:
    from transformers import AutoConfig

    from cpshim.ring import model_check
    from cpshim.ring.shrink import build, shrink

    row: dict = {"type": model_type}
    try:
        config = shrink(model_type)
        shrink_error = None
    except Exception as e:  # the default config still answers the refusal rules
        config, shrink_error = AutoConfig.for_model(model_type), f"{type(e).__name__}: {e}"
    code, lines = model_check.verdict(config, table=False)
    row["features"] = features(config)
    if code:
        return {**row, "verdict": "refused", "reason": " ".join(line.strip() for line in lines[1:])}
    if shrink_error:
        return {**row, "verdict": "not built", "reason": f"no tiny config: {shrink_error}"}
    try:
        model = build(config)
    except Exception as e:
        return {**row, "verdict": "not built", "reason": f"the tiny model does not build: {type(e).__name__}: {e}"}
    row["features"] = features(config, model)
    return {**row, "verdict": "runs", "params": sum(p.numel() for p in model.parameters()),
            "attn_implementation": config.get_text_config()._attn_implementation}


def classify(types: list[str]) -> None:
    import resource

    limit = int(os.environ.get("CPSHIM_TABLE_MEMORY_GB", "6")) << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for model_type in types:
        try:
            row = _one(model_type)
        except Exception as e:
            row = {"type": model_type, "verdict": "not built", "reason": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()[-2000:]}
        print(json.dumps(row), flush=True)


def parity(cases_json: str, out_dir: str, cp: int) -> None:
    """`cpshim.ring.parity.main_worker`, except that a case that raises saves its error and ends the launch."""
    import torch
    import torch.distributed as dist

    from cpshim.errors import CpshimError
    from cpshim.ring.parity import run_case

    tag = "ring" if cp > 1 else "ref"
    for i, case in enumerate(json.loads(cases_json)):
        case = {**case, "output_dir": os.path.join(out_dir, f"{tag}-{i}-trainer")}
        try:
            result = run_case(case, cp)
        except Exception as e:
            result = {"error": f"{type(e).__name__}: {e}", "cpshim": isinstance(e, CpshimError),
                      "rank": dist.get_rank() if dist.is_initialized() else 0}
            print(traceback.format_exc(), file=sys.stderr, flush=True)
        if result["rank"] == 0:
            torch.save(result, os.path.join(out_dir, f"{tag}-{i}.pt"))
        if "error" in result and not result["cpshim"]:
            return  # a refusal leaves the process clean (raised before, or after, a step's state is restored)
