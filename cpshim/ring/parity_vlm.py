"""The tiny vision-language models of the parity runs (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA), their image
batches, and their collator. No hub: configs from transformers' own classes, random pixels.

Each row is a copy task (the second half of the text repeats the first, so the loss needs attention across
shards) with one image (16 tokens between a start and an end token) after the first 8 text tokens: at 64
tokens and cp=2 it straddles both ranks' shards under every strategy, so each rank places some of its
features (Qwen3-VL: some of its deepstack rows). Qwen's images are an 8 x 8 patch grid, 2 x 2 merged, with
their mrope positions; LLaVA's a 16 x 16 picture of 4 x 4 patches through CLIP (its CLS feature dropped, the
"default" strategy) and a projector into a Llama decoder with plain positions; InternVL's a 32 x 32 picture
of 4 x 4 patches, pixel-shuffled to 16 features, into a Qwen2 decoder.
"""

from __future__ import annotations

import inspect
from typing import Any

MODELS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "internvl")
#: One picture (channels, height, width) of the models that take (B, 3, H, W) pixels, 16 features after the tower:
#: LLaVA (16 / 4) ** 2 patches; InternVL (32 / 4) ** 2 patches, pixel-shuffled by 1/2 per side
PICTURES = {"llava": (3, 16, 16), "internvl": (3, 32, 32)}
IMAGE, VIDEO, START, END = 90, 91, 92, 93
GRID = (1, 8, 8)  # temporal, height, width patches of each image
PATCH = 3 * 2 * 2 * 2  # channels x temporal patch x patch x patch
_TOKENS = GRID[0] * GRID[1] * GRID[2] // 4  # image tokens after the 2 x 2 merge


def config(case: dict, sizes: dict) -> Any:
    import transformers

    name = case["model"]
    text = {**{k: v for k, v in sizes.items() if k != "attn_implementation"}, "head_dim": 16}
    cfg: Any
    ids: dict[str, Any] = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START,
                               vision_end_token_id=END)
    vision = dict(depth=2, num_heads=2, patch_size=2, temporal_patch_size=2, in_channels=3, spatial_merge_size=2)
    if name == "qwen2_vl":
        cfg = transformers.Qwen2VLConfig(
            text_config={**text, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
            vision_config={**vision, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2}, **ids)
    elif name == "qwen2_5_vl":  # window attention in the tower: windows of 2 x 2 merged patches, block 1 full
        cfg = transformers.Qwen2_5_VLConfig(
            text_config={**text, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
            vision_config={**vision, "hidden_size": 32, "out_hidden_size": 64, "intermediate_size": 64,
                           "window_size": 8, "fullatt_block_indexes": [1]}, **ids)
    elif name == "qwen3_vl":  # interleaved mrope; deepstack features of tower block 0 added in decoder layer 0
        cfg = transformers.Qwen3VLConfig(
            text_config={**text, "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3],
                                                  "mrope_interleaved": True}},
            vision_config={**vision, "hidden_size": 32, "out_hidden_size": 64, "intermediate_size": 64,
                           "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}, **ids)
    elif name == "llava":  # CLIP's features of the chosen layer, projected, at the image tokens; a Llama decoder
        cfg = transformers.LlavaConfig(
            text_config={**text, "model_type": "llama"}, image_token_index=IMAGE, vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=2, image_size=PICTURES[name][1], patch_size=4,
                               projection_dim=32))
    elif name == "internvl":  # InternViT features, pixel shuffle (downsample 0.5), an MLP, a Qwen2 decoder
        side = PICTURES[name][1]
        cfg = transformers.InternVLConfig(
            text_config={**text, "model_type": "qwen2"}, image_token_id=IMAGE, downsample_ratio=0.5,
            vision_feature_layer=-1, vision_feature_select_strategy="default",
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=[side, side], patch_size=[4, 4]))
    else:
        raise ValueError(f"unknown parity VLM {name!r}")
    cfg._attn_implementation = sizes["attn_implementation"]
    return cfg


def model(case: dict, sizes: dict) -> Any:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_config(config(case, sizes))


def rows(case: dict, vocab: int) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(case.get("seed", 1234))
    n = case["batch"] * case["steps"] * case.get("grad_accum", 1)
    image = [START] + [IMAGE] * _TOKENS + [END]
    half = (case["seq_len"] - len(image)) // 2
    out = []
    for _ in range(n):
        first = torch.randint(3, vocab - 10, (half,), generator=g)  # below the special tokens
        ids = torch.cat([first[:8], torch.tensor(image), first[8:], first])
        ids = torch.cat([ids, ids.new_full((case["seq_len"] - ids.numel(),), 3)])
        labels = ids.clone()
        labels[8: 8 + len(image)] = -100
        if case["model"] in PICTURES:
            out.append({"input_ids": ids, "labels": labels,
                        "pixel_values": torch.randn(PICTURES[case["model"]], generator=g)})
            continue
        out.append({"input_ids": ids, "labels": labels, "mm_token_type_ids": (ids == IMAGE).long(),
                    "pixel_values": torch.randn(GRID[0] * GRID[1] * GRID[2], PATCH, generator=g),
                    "image_grid_thw": torch.tensor([GRID])})
    return out


def collator(model_: Any) -> Any:
    """Rows stacked, the images' patches and grids concatenated (one image per row), as the processors do;
    `mm_token_type_ids` only for the releases whose forward takes it (5.x computes mrope from it)."""
    import torch

    keep_types = "mm_token_type_ids" in inspect.signature(model_.forward).parameters

    def collate(batch: list[dict]) -> dict:
        out = {k: torch.stack([r[k] for r in batch]) for k in ("input_ids", "labels")}
        if "image_grid_thw" not in batch[0]:  # LLaVA, InternVL: (B, 3, H, W)
            out["pixel_values"] = torch.stack([r["pixel_values"] for r in batch])
            return out
        if keep_types:
            out["mm_token_type_ids"] = torch.stack([r["mm_token_type_ids"] for r in batch])
        for k in ("pixel_values", "image_grid_thw"):
            out[k] = torch.cat([r[k] for r in batch])
        return out

    return collate


def positions_per_shard() -> None:
    """Negative control: the decoder gets no position ids, so each rank counts its own 0..L_local-1 (what a CP
    that shards before the model computes its rope positions would do)."""
    from . import vlm

    exact = vlm._entry_hook

    def local_positions(*args: Any) -> Any:
        hook = exact(*args)

        def without(module: Any, a: tuple, kwargs: dict) -> Any:
            out = hook(module, a, kwargs)
            out[1]["position_ids"] = None
            return out

        return without

    vlm._entry_hook = local_positions  # type: ignore[assignment]
