"""A tiny config of any model type the installed transformers ships, from its own default config (no hub).

The architecture table (`compat_matrix/architectures.py`) trains each type under ring CP and in one
process; it needs a model small enough for a CPU run that keeps what matters under CP: every layer type
the default config has (a compact cover of its `layer_types`), its window, its head layout (GQA or MQA
stays so), its experts (fewer), MLA's split head dims; dropout off (ring mode refuses attention dropout by
name, and the table asks about the layers). One generic rule over the size fields of the config
and of each sub-config (text, vision, audio); `OVERRIDES` holds what a type needs beyond it, by type.
"""

from __future__ import annotations

from typing import Any

from .parity_models import VOCAB

HIDDEN, FFN, HEADS, KV_HEADS, HEAD_DIM, POSITIONS, WINDOW = 64, 128, 4, 2, 16, 256, 16
_SET = {  # field -> the tiny value, where the default is larger
    **dict.fromkeys(("hidden_size", "d_model", "n_embd", "embed_dim", "dim", "model_dim"), HIDDEN),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "n_inner", "d_ff", "encoder_ffn_dim", "decoder_ffn_dim",
                     "ffn_hidden_size", "mlp_dim", "hidden_dim"), FFN),
    **dict.fromkeys(("moe_intermediate_size", "shared_expert_intermediate_size", "expert_intermediate_size",
                     "moe_ffn_hidden_size"), 32),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads",
                     "decoder_attention_heads", "n_heads"), HEADS),
    **dict.fromkeys(("head_dim", "kv_channels", "attention_head_dim", "d_kv", "d_head"), HEAD_DIM),
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length",
                     "max_sequence_length"), POSITIONS),
    **dict.fromkeys(("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"), 4),
    **dict.fromkeys(("num_experts_per_tok", "moe_topk", "moe_k", "top_k", "num_selected_experts"), 2),
    **dict.fromkeys(("n_group", "topk_group", "n_shared_experts", "num_shared_experts"), 1),
    "kv_lora_rank": 16, "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 16,
    "sliding_window": WINDOW, "vocab_size": VOCAB, "rotary_dim": HEAD_DIM,
}
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers", "encoder_layers")
_KV = ("num_key_value_heads", "num_kv_heads", "multi_query_group_num", "n_kv_heads")
_MAX_LAYERS = 4
_SPECIAL = {"pad": 0, "bos": 1, "eos": 2}  # ids 0-2 stay out of the parity data (tokens 3..VOCAB-1)
#: Sub-configs (a vision or audio tower) shrink further: they run whole, unsharded.
_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_heads": 2, "embed_dim": 32,
          "depth": 1, "num_hidden_layers": 1, "num_layers": 1}
#: What a type needs beyond the generic rule, or where its default config is not what its checkpoints are
#: (LFM2's default has attention in every layer; its checkpoints interleave short convolutions).
OVERRIDES: dict[str, dict[str, Any]] = {
    "lfm2": {"layer_types": ["conv", "full_attention"], "num_hidden_layers": 2, "full_attn_idxs": [1]},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_hidden_layers": 2},  # its default has none
    # multimodal rope: the modeling files' default t/h/w split ([16, 24, 24] of 64) is not in the config
    **dict.fromkeys(("qwen2_vl", "qwen2_5_vl", "qwen2_5_omni_thinker", "paddleocr_vl", "glm4v", "glm46v", "glm_ocr",
                     "glmga"), {"text_config": {"rope_parameters": {"mrope_section": [2, 3, 3]}}}),
    "glm4v_moe": {"text_config": {"rope_parameters": {"mrope_section": [2, 1, 1]}}},  # half the dims rotate
    # Mamba-2: heads x head dim = expand x hidden (4 x 32 = 2 x 64); the hybrids keep one attention layer after a
    # Mamba-2 one (their defaults have none, or one per 6-9 layers)
    "bamba": {"mamba_n_heads": 4, "mamba_d_head": 32, "mamba_n_groups": 1, "mamba_d_state": 16,
              "attn_layer_indices": [1], "num_hidden_layers": 2},
    "granitemoehybrid": {"mamba_n_heads": 4, "mamba_d_head": 32, "mamba_n_groups": 1, "mamba_d_state": 16,
                         "layer_types": ["mamba", "attention"], "num_hidden_layers": 2},
    "mamba2": {"num_heads": 4, "head_dim": 32, "expand": 2, "n_groups": 1, "state_size": 16},
    "zamba2": {"n_mamba_heads": 4, "mamba_headdim": 32, "attention_head_dim": 32, "mamba_d_state": 16,
               "num_hidden_layers": 2, "layers_block_type": ["linear_attention", "hybrid"], "hybrid_layer_ids": [1],
               "attention_hidden_size": 128},  # its shared attention reads [hidden; embeddings]
    "kimi_linear": {"num_experts_per_token": 2, "qk_head_dim": 24},  # of 4 experts; MLA: nope 16 + rope 8
    # Mamba-1 hybrids: Jamba one Mamba layer then one attention layer (with experts); Zamba's one shared
    # transformer block needs two hybrid layers to share it
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1,
              "num_hidden_layers": 2},
    "zamba": {"num_hidden_layers": 4, "layers_block_type": ["linear_attention", "hybrid", "linear_attention", "hybrid"],
              "attention_hidden_size": 128, "attention_head_dim": 32, "mamba_dt_rank": 4},  # derived at full size
    # RecurrentGemma: two recurrent blocks, then local attention with a window shorter than a shard's chunk
    "recurrent_gemma": {"num_hidden_layers": 3, "attention_window_size": 8, "lru_width": 64},
}


def shrink(model_type: str) -> Any:
    """The installed transformers' default config of `model_type`, shrunk (ValueError if it does not rebuild)."""
    from transformers import AutoConfig

    from ..patches.accelerate_prepare_cp import non_full_attention_layers, text_config

    default = AutoConfig.for_model(model_type)
    d = _shrunk(default.to_dict(), tower=False)
    d["is_decoder"] = True  # the causal-LM heads of encoder families (BERT, RoBERTa, ...) want it
    d = _merged(d, OVERRIDES.get(model_type, {}))
    d.pop("model_type", None)
    small = type(default).from_dict(d)
    kept, had = (set(non_full_attention_layers(c)) | set(getattr(text_config(c), "layer_types", None) or ())
                 for c in (small, default))
    # layer types derived from a pattern the generic rule does not know (Jamba's attention period)
    if kept != had and model_type not in OVERRIDES:
        raise ValueError(f"the tiny config has layer types {sorted(kept)}, the default {sorted(had)}: add an "
                         f"OVERRIDES entry for {model_type}")
    return small


def build(config: Any) -> Any:
    """The causal-LM model of a shrunk config (image-text-to-text for the VLM types that have no causal LM)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto import modeling_auto

    if config.model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModelForCausalLM.from_config(config)
    return AutoModelForImageTextToText.from_config(config)


def _shrunk(d: dict, tower: bool) -> dict:
    out = dict(d)
    for key, value in d.items():
        if isinstance(value, dict) and ("model_type" in value or key.endswith("_config")):
            out[key] = _shrunk(value, tower=tower or not key.startswith(("text", "language", "llm", "decoder")))
        elif key.endswith("token_id") and isinstance(value, int) and value >= VOCAB:
            out[key] = _SPECIAL.get(key.split("_")[0], 2)
        elif key.endswith("token_id") and isinstance(value, list):
            out[key] = [v if isinstance(v, int) and v < VOCAB else 2 for v in value]
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and isinstance(rope.get("original_max_position_embeddings"), int):
        out["rope_parameters"] = {**rope, "original_max_position_embeddings": POSITIONS // 4}
    small = {**_SET, **(_TOWER if tower else {}), **{k: VOCAB for k in d if k.endswith("vocab_size")}}
    for key, tiny in small.items():
        if isinstance(d.get(key), int) and not isinstance(d.get(key), bool) and d[key] > tiny:
            out[key] = tiny
    for key, value in d.items():  # ring mode refuses attention dropout by name; the table asks about the layers
        if ("dropout" in key or key.endswith("pdrop")) and isinstance(value, float) and value:
            out[key] = 0.0
    if d.get("head_dim") is not None and d.get("head_dim") == d.get("qk_rope_head_dim"):  # MLA: rope dims
        out["head_dim"] = out["qk_rope_head_dim"]
    unset: dict[str, Any] = {"head_dim": HEAD_DIM, "num_key_value_heads": out.get("num_attention_heads")}
    for key, tiny in unset.items():
        if key in d and d[key] is None and not tower and "num_attention_heads" in d:  # the modeling file reads it
            out[key] = tiny
    _mrope(out)
    heads = out.get("num_attention_heads")
    for key in _KV:  # MQA stays MQA, GQA stays GQA, MHA stays MHA
        kv = d.get(key)
        if isinstance(kv, int) and isinstance(heads, int) and kv > 1:
            out[key] = heads if kv == d.get("num_attention_heads") else min(KV_HEADS, heads)
    _layers(d, out, tower)
    return out


def _merged(d: dict, override: dict) -> dict:
    out = dict(d)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _mrope(out: dict) -> None:
    """Multimodal rope sections (Qwen2-VL's t/h/w split of half the head dim), scaled to the tiny head dim."""
    for key in ("rope_parameters", "rope_scaling"):
        rope = out.get(key)
        if not isinstance(rope, dict):
            continue
        sections = rope.get("mrope_section")
        if not (isinstance(sections, list) and sections and all(isinstance(x, int) for x in sections)):
            continue
        half, total = (out.get("head_dim") or HEAD_DIM) // 2, sum(sections)
        if total > half:
            scaled = [max(1, x * half // total) for x in sections]
            scaled[0] += half - sum(scaled)
            out[key] = {**rope, "mrope_section": scaled}


def _layers(d: dict, out: dict, tower: bool) -> None:
    """Fewest layers that keep every kind of layer: the first layer of each distinct combination of the
    per-layer fields (`layer_types`, `mlp_layer_types`, per-layer sizes, `per_layer_config`), in order, at
    most _MAX_LAYERS; every per-layer field cut to those layers."""
    n = next((d[k] for k in _LAYERS if isinstance(d.get(k), int) and not isinstance(d.get(k), bool)), None)
    if not n:
        return
    lists = [k for k, v in d.items() if isinstance(v, list) and len(v) == n and n > 1]
    per: dict = d["per_layer_config"] if isinstance(d.get("per_layer_config"), dict) else {}
    signature = [tuple(repr(d[k][i]) for k in lists) + (repr(per.get(str(i), per.get(i))),) for i in range(n)]
    keep = list(dict.fromkeys(signature[i] for i in range(n)))[:_MAX_LAYERS]
    picked = [signature.index(sig) for sig in keep]
    if len(picked) == 1:
        picked = list(range(min(n, 1 if tower else 2)))
    for k in lists:
        out[k] = [d[k][i] for i in picked]
    if per:
        out["per_layer_config"] = {str(j): per[key] for j, i in enumerate(picked) for key in (str(i), i) if key in per}
    for key in _LAYERS:
        if isinstance(d.get(key), int) and d[key] > len(picked):
            out[key] = len(picked)
