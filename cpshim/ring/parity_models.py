"""The tiny models of the parity runs, and the one-process attention that follows upstream's own masks.

Llama (full attention) is the default; the sliding-window families run the halo exchange under CP.
Gemma 2 (softcap) and gpt-oss (attention sinks) load eager attention, as their users on a CPU do (5.24
supports no sdpa for either): ring mode routes it (`cpshim.ring.eager`). For the sliding families, the
one-process side does not take the window from the model's `sliding_window` argument
(the value ring mode reads): it registers sdpa's mask function for its key and attends through the
4-D boolean mask transformers builds for each layer (causal, window, documents), so a window that
ring mode read wrongly would show as a parity failure.
"""

from __future__ import annotations

import math
from typing import Any

from . import parity_vlm

VOCAB = 96
AUTO = "auto:"
_SIZES: dict[str, Any] = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                              tie_word_embeddings=False, attn_implementation="sdpa")


def config(case: dict) -> Any:
    """The case's model config: `model` (llama, mistral, gemma3, qwen2, deepseek_v3, lfm2, lfm2_moe, lfm3, qwen3_5,
    qwen3_next, bamba, granitemoehybrid, or `auto:<model type>`), `window` for the sliding ones, `kernel` for
    LFM2's convolutions, `chunk` for Mamba-2's SSD, `layer_types` for gemma3, gemma2, gpt_oss and qwen2 (default
    sliding, full, sliding), lfm2 (default conv, full, conv) and the Mamba-2 ones; the vision-language models of
    `parity_vlm`."""
    import transformers

    name = case.get("model", "llama")
    if name.startswith(AUTO):  # a row of the architecture table: the type's own default config, shrunk
        from .shrink import shrink

        return shrink(name.removeprefix(AUTO))
    if name in parity_vlm.MODELS:
        return parity_vlm.config(case, _SIZES)
    if name == "llama":
        return transformers.LlamaConfig(**_SIZES)
    if name == "mistral":  # every layer sliding, the window from config.sliding_window
        return transformers.MistralConfig(**_SIZES, sliding_window=case["window"])
    mixed = case.get("layer_types", ["sliding_attention", "full_attention", "sliding_attention"])
    if name == "gemma3":  # the window per layer from layer_types
        return transformers.Gemma3TextConfig(**{**_SIZES, "num_hidden_layers": len(mixed)}, head_dim=16,
                                             query_pre_attn_scalar=16, sliding_window=case["window"],
                                             layer_types=mixed)
    if name == "gemma2":  # weights 5x the default scale: scores near 1, where a softcap of 1 bites
        return transformers.Gemma2Config(**{**_SIZES, "num_hidden_layers": len(mixed), "attn_implementation": "eager"},
                                         head_dim=16, query_pre_attn_scalar=16, sliding_window=case["window"],
                                         layer_types=mixed, attn_logit_softcapping=case.get("softcap", 1.0),
                                         initializer_range=case.get("init", 0.1))
    if name == "gpt_oss":  # sinks, sliding and full layers, 4 experts (2 per token)
        return transformers.GptOssConfig(**{**_SIZES, "num_hidden_layers": len(mixed), "attn_implementation": "eager"},
                                         head_dim=16, sliding_window=case["window"], layer_types=mixed,
                                         num_local_experts=4, num_experts_per_tok=2)
    if name == "qwen2":
        return transformers.Qwen2Config(**{**_SIZES, "num_hidden_layers": len(mixed)}, use_sliding_window=True,
                                        sliding_window=case["window"], layer_types=mixed)
    if name == "lfm2":  # short-convolution layers (kernel `kernel`, upstream's default 3) around a full layer
        types = case.get("layer_types", ["conv", "full_attention", "conv"])
        return transformers.Lfm2Config(**{**_SIZES, "num_hidden_layers": len(types)}, layer_types=types,
                                       conv_L_cache=case.get("kernel", 3))
    if name == "lfm2_moe":  # the same with 4 experts (2 per token) after one dense layer (transformers >= 5)
        return transformers.Lfm2MoeConfig(**{**_SIZES, "num_hidden_layers": 3}, layer_types=["conv", "full_attention",
                                          "conv"], conv_L_cache=case.get("kernel", 3), num_experts=4,
                                          num_experts_per_tok=2, moe_intermediate_size=32, num_dense_layers=1)
    if name == "lfm3":  # conv (upstream's kernel 7), sliding (window `window`) and full layers (transformers >= 5.23)
        return transformers.Lfm3Config(**{**_SIZES, "num_hidden_layers": 4}, head_dim=16, sliding_window=case["window"],
                                       pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                       layer_types=["conv", "sliding_attention", "full_attention", "conv"],
                                       conv_L_cache=case.get("kernel", 7))
    if name in ("qwen3_5", "qwen3_next"):  # Gated DeltaNet (linear_attention, conv kernel 4) and full layers
        types = case.get("layer_types", ["linear_attention", "full_attention", "linear_attention"])
        # key heads 2 (or the case's `linear_key_heads`: 1 does not divide by cp=2, so the core runs along the
        # state's chain instead of by head shards)
        deltanet = dict(layer_types=types, head_dim=16, linear_num_value_heads=4,
                        linear_num_key_heads=case.get("linear_key_heads", 2),
                        linear_key_head_dim=8, linear_value_head_dim=8, linear_conv_kernel_dim=4)
        sizes = {**_SIZES, "num_hidden_layers": len(types)}
        if name == "qwen3_5":
            return transformers.Qwen3_5TextConfig(**sizes, **deltanet)
        return transformers.Qwen3NextConfig(**sizes, **deltanet, num_experts=4, num_experts_per_tok=2,  # experts too
                                            moe_intermediate_size=32, shared_expert_intermediate_size=32)
    if name in MAMBA2:  # Mamba-2 (linear_attention; heads 4 x 32, state 16, chunks of `chunk` (6) so that a run spans
        # several and ends in a padded one) and attention layers (default mamba, full, mamba); Granite 4 with experts
        types = case.get("layer_types", ["linear_attention", "full_attention", "linear_attention"])
        return MAMBA2[name](transformers, {**_SIZES, "num_hidden_layers": len(types)},
                            [i for i, t in enumerate(types) if t == "full_attention"], case.get("chunk", 6))
    if name == "deepseek_v3":  # MLA: q/k head dim 24 (16 + 8 rope), v head dim 8; dense MLPs only (MoE apart)
        return transformers.DeepseekV3Config(**{**_SIZES, "num_key_value_heads": 4}, moe_intermediate_size=32,
                                             n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
                                             first_k_dense_replace=2, kv_lora_rank=16, q_lora_rank=32,
                                             qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=8)
    raise ValueError(f"unknown parity model {name!r}")


_SSD = dict(mamba_n_heads=4, mamba_d_head=32, mamba_n_groups=2, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2)
#: model -> (transformers, sizes, indices of the attention layers, SSD chunk size) -> config
MAMBA2 = {
    "bamba": lambda t, sizes, attn, chunk: t.BambaConfig(**sizes, **_SSD, mamba_chunk_size=chunk,
                                                         attn_layer_indices=attn),
    "granitemoehybrid": lambda t, sizes, attn, chunk: t.GraniteMoeHybridConfig(
        **sizes, **_SSD, mamba_chunk_size=chunk, num_local_experts=4, num_experts_per_tok=2,
        shared_intermediate_size=64,
        layer_types=["attention" if i in attn else "mamba" for i in range(sizes["num_hidden_layers"])]),
}


def model(case: dict) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    if case.get("model") in parity_vlm.MODELS:
        return parity_vlm.model(case, _SIZES)
    if case.get("model", "").startswith(AUTO):
        from .shrink import build

        return build(config(case))
    built = AutoModelForCausalLM.from_config(config(case))
    with torch.no_grad():  # gpt-oss initialises sinks near 0; sinks of ~2 weigh in every query's softmax
        for name, p in built.named_parameters():
            if name.endswith("self_attn.sinks"):
                p.normal_(2.0, 1.0)
            elif case.get("lasting_state") and name.endswith((".A_log", ".dt_bias", ".in_proj.weight")):
                # Mamba-2 decays exp(A * dt) per token: A = -0.05, dt = softplus(-2) ~ 0.13 keep ~80 % of the
                # state over a 32-token run, where upstream's init (A = -1 .. -heads) forgets most of it; in_proj
                # 30x upstream's std: B and x of ~1 or more, a state that weighs against the D skip
                if name.endswith(".in_proj.weight"):
                    p.mul_(30.0)
                else:
                    p.fill_(math.log(0.05) if name.endswith(".A_log") else -2.0)
    return built


def uses_upstream_masks(case: dict) -> bool:
    """Sliding families attend through upstream's masks, except where a case says not (`upstream_masks`: False,
    the benchmark, whose 16k-token masks would not fit: there the window is the model's `sliding_window`)."""
    return case.get("upstream_masks", case.get("model", "llama") != "llama")


def register_masks(key: str) -> None:
    """Give the one-process key transformers' sdpa masks (4-D boolean, or None where causal suffices)."""
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionMaskInterface.register(key, sdpa_mask)


def masked_attention(q: Any, k: Any, v: Any, mask: Any, scaling: float | None, softcap: float | None = None,
                     sinks: Any = None) -> Any:
    """q (b, s, h, d), k/v (b, s, hk, d*) in the compute dtype, mask (b or 1, 1, s, s) bool: scores and softmax
    in fp32 as the kernel providers compute them, output in the compute dtype. Softcap and sinks as the eager
    functions of Gemma 2 and gpt-oss write them (tanh of the scaled scores; the sink a last softmax column)."""
    import torch

    h, hk = q.shape[2], k.shape[2]
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))
    kf, vf = kf.repeat_interleave(h // hk, dim=1), vf.repeat_interleave(h // hk, dim=1)
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask, float("-inf"))
    if sinks is not None:
        sink = sinks.float().reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1].nan_to_num(0.0)
    else:
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row with no key (padding) gives 0
    return torch.matmul(probs, vf).transpose(1, 2).to(q.dtype)
