"""Registry entries of the sequence mixers other than attention that ring mode computes exactly.

- Short causal convolutions (`conv` layers): LFM2's `*ShortConv` mixers, run by `cpshim.ring.short_conv`
  with a halo of kernel - 1 input rows. lfm2 is in every release in range, lfm2_moe from 5.0.0, lfm3 from
  5.23.0; 4.x dispatches the forward to `slow_forward` (torch's conv1d) or `cuda_kernels_forward`, 5.x to
  `causal_conv1d_fn`.
- Gated DeltaNet (`linear_attention` layers): Qwen3-Next, Qwen3.5, Qwen3.5-MoE, run by
  `cpshim.ring.carry_state`, which hands upstream's forward a one-run cache. That needs the cache API of
  5.21.0 (get_conv_state / get_recurrent_state / is_recording_past; chunked prefill from the cached state):
  below it ring mode refuses these layers. OLMo-hybrid's DeltaNet and Kimi Linear's delta attention (KDA) take
  the same path (one conv over q, k, v on 5.21+). The patch names its core and head counts
  (`info["head_shards"]`): where they divide by cp the core runs by head shards (`cpshim.ring.head_shards`),
  else along the state's chain.
- Mamba-2 (`linear_attention` layers, Falcon-H1's `hybrid` ones: attention and Mamba-2 side by side):
  Bamba, Granite 4 hybrid, Falcon-H1, NemotronH, Zamba2, Mamba-2, run by the same `cpshim.ring.carry_state`
  (the same cache API, same 5.21.0 floor; NemotronH's `mlp` / `moe` layers are position-wise); the patch names
  its scan (`info["scan"]`, `scan_form` "ssd"): run from zero, the carried state's part added after by
  `cpshim.ring.linear_scans`, so the group's scans run side by side.
- Mamba-1 (`linear_attention` layers, Zamba's `hybrid` ones): Jamba, Mamba, Falcon-Mamba, Zamba, by the same
  path (`scan_form` "mamba1"); their full-sequence scan takes no initial state at all.
- RecurrentGemma's recurrent block (`linear_attention` layers from 5.23.0, `recurrent` before, refused there):
  the same carry, handed to upstream through the block's own cache attributes (`cpshim.ring.rg_lru`).
Each fingerprint group of these patches has a `mixers` (or full) cell in the matrix running
tests/parity/test_mixer_parity.py.
"""

from __future__ import annotations

from ..registry import Patch, Variant
from .ceilings import TRANSFORMERS_CEILING

#: The gate of attention routing: open only while a sharded step is in flight, so that generation's
#: per-token forward of a mixer runs upstream's own method otherwise.
_ROUTING = "cpshim.ring.runtime:ROUTING"
CONV, LINEAR, HYBRID = "conv", "linear_attention", "hybrid"
_CARRY_FLOOR = ("5.21.0", "ring mode refuses its recurrent layers (no cached-state prefill to hand a run its "
                          "state): upgrade transformers to >= 5.21")


def _mixer(layer_types: tuple[str, ...], model_type: str, module_name: str, cls: str, floor: str, kind: str,
           impl: str, summary: str, adds: str, watch: tuple[str, ...], refused_before: tuple[str, str] | None = None,
           **info: object) -> Patch:
    """`layer_types`: the config's layer types this mixer makes computable (the first names the mixer's)."""
    module = f"transformers.models.{module_name}.modeling_{module_name}"
    return Patch(
        id=f"{module_name.replace('_', '-')}-{kind}",
        target=f"{module}:{cls}.forward",
        dist="transformers",
        floor=floor,
        needed_from=floor,  # below, transformers has no such family: nothing to patch, nothing refused
        refused_before=refused_before,
        follows_mode=False,
        gate=_ROUTING,
        summary=f"ring mode: {cls} ({model_type}'s {layer_types[0]} layers) {summary}",
        variants=(Variant("halo" if kind == "short-conv" else "carry-state",
                          {"transformers": f">={refused_before[0] if refused_before else floor},<6"},
                          {"transformers": TRANSFORMERS_CEILING}, impl,
                          info={"layer_type": layer_types[0], "layer_types": layer_types, "model_type": model_type,
                                "keeps": "upstream's forward and kernels, outside sharded steps and on each run",
                                "adds": adds, **info}),),
        watch=tuple(w if ":" in w else f"{module}:{w}" for w in watch),  # "module:qualname" elsewhere as it is
    )


def _short_conv(model_type: str, cls: str, floor: str) -> Patch:
    # the padding mask is None during sharded steps: apply_mask_to_padding_states is not watched
    return _mixer((CONV,), model_type, model_type, cls, floor, "short-conv", "cpshim.ring.short_conv:forward",
                  "runs on each run of its shard with the kernel - 1 input rows before it, exchanged with the rank "
                  "that holds them",
                  "a kernel - 1 row halo of the mixer's input (point-to-point, gradient returned); no cache and "
                  "no padding mask during sharded steps",
                  (f"{cls}.__init__", f"{cls}.forward", f"{cls}.slow_forward", f"{cls}.cuda_kernels_forward",
                   "causal_conv1d_fn"))


_CARRY_ADDS = ("a one-run cache per run (conv rows and state in, out): the conv rows from a halo of kernel - 1 "
               "input rows, the state sent point to point to the next run's rank, gradients sent back")


def _deltanet(model_type: str, module_name: str, cls: str, floor: str, kind: str = "gated-deltanet",
              core: str = "torch_chunk_gated_delta_rule",
              state: tuple[str, ...] = ("num_v_heads", "head_k_dim", "head_v_dim"),
              heads: tuple[str, ...] = ("num_k_heads", "num_v_heads"),
              config_heads: tuple[str, ...] = ("linear_num_key_heads", "linear_num_value_heads")) -> Patch:
    return _mixer((LINEAR,), model_type, module_name, cls, floor, kind, "cpshim.ring.carry_state:forward",
                  "runs its core over the whole sequence for heads / cp of its heads on each rank (an all-to-all "
                  "to head shards and back, `cpshim.ring.head_shards`) where every head count divides by cp, "
                  "else each run of its shard from the recurrent state the run before it left, passed along "
                  "the sequence; the conv rows from a halo either way",
                  "a one-run cache per run (conv rows in); the conv rows from a halo of kernel - 1 input rows; "
                  "the core's inputs all-to-all to head shards and its output back (heads divisible by cp), "
                  "else the state sent point to point to the next run's rank; gradients sent back",
                  (f"{cls}.__init__", f"{cls}.forward", core, "causal_conv1d_fn"),
                  refused_before=_CARRY_FLOOR, carry={"state": state},
                  head_shards={"core": core, "heads": heads, "config_heads": config_heads})


def _mamba2(model_type: str, cls: str, floor: str, layer_types: tuple[str, ...] = (LINEAR,)) -> Patch:
    return _mixer(layer_types, model_type, model_type, cls, floor, "mamba2", "cpshim.ring.carry_state:forward",
                  "runs each run of its shard from the conv rows the run before it left, adding the SSM state it "
                  "left to upstream's zero-started scan (`cpshim.ring.linear_scans`: the group's scans side by "
                  "side)", _CARRY_ADDS,
                  (f"{cls}.__init__", f"{cls}.forward", "mamba2_chunk_scan", "causal_conv1d_fn"),
                  refused_before=_CARRY_FLOOR, carry={"state": ("num_heads", "head_dim", "ssm_state_size")},
                  scan="mamba2_chunk_scan", scan_form="ssd")


def _mamba1(model_type: str, cls: str, floor: str, state: tuple[str, ...] = ("intermediate_size", "ssm_state_size"),
            layer_types: tuple[str, ...] = (LINEAR,)) -> Patch:
    return _mixer(layer_types, model_type, model_type, cls, floor, "mamba1", "cpshim.ring.carry_state:forward",
                  "runs each run of its shard from the conv rows the run before it left, adding the SSM state it "
                  "left to upstream's zero-started scan (`cpshim.ring.linear_scans`)", _CARRY_ADDS,
                  (f"{cls}.__init__", f"{cls}.forward", "mamba_selective_scan", "causal_conv1d_fn"),
                  refused_before=_CARRY_FLOOR, carry={"state": state},
                  scan="mamba_selective_scan", scan_form="mamba1")


def _rg_lru(model_type: str, cls: str, floor: str, since: str) -> Patch:
    return _mixer((LINEAR,), model_type, model_type, cls, floor, "rg-lru", "cpshim.ring.carry_state:forward",
                  "runs each run of its shard from the conv rows and RG-LRU state the run before it left, set as "
                  "the block's own cache attributes (`cpshim.ring.rg_lru`)", _CARRY_ADDS,
                  (f"{cls}.__init__", f"{cls}.forward", "RecurrentGemmaRglru.forward", "RecurrentGemmaRglru._rnn_scan",
                   # the names its config gives the layers (`linear_attention` from 5.23.0)
                   f"transformers.models.{model_type}.configuration_{model_type}:RecurrentGemmaConfig.layers_block_type"),
                  refused_before=(since, f"ring mode refuses its recurrent layers (before {since} its config names "
                                         "them `recurrent` and its local attention `attention`, which cpshim does not "
                                         f"classify): upgrade transformers to >= {since}"),
                  carry={"kernel": "conv1d_width",
                         "state": ("lru_width",)}, run="rg-lru",
                  varlen_why="is a recurrent block whose convolution transformers runs across packed document "
                             "boundaries (even in one process; its RG-LRU does restart there)")


SHORT_CONV = (_short_conv("lfm2", "Lfm2ShortConv", "4.54.0"), _short_conv("lfm2_moe", "Lfm2MoeShortConv", "5.0.0"),
              _short_conv("lfm3", "Lfm3ShortConv", "5.23.0"))
DELTANET = (_deltanet("qwen3_next", "qwen3_next", "Qwen3NextGatedDeltaNet", "4.57.0"),
            _deltanet("qwen3_5_text", "qwen3_5", "Qwen3_5GatedDeltaNet", "5.2.0"),
            _deltanet("qwen3_5_moe_text", "qwen3_5_moe", "Qwen3_5MoeGatedDeltaNet", "5.2.0"),
            _deltanet("olmo_hybrid", "olmo_hybrid", "OlmoHybridGatedDeltaNet", "5.3.0"),
            # Kimi Delta Attention: per-channel gates, one head_dim x head_dim state per head
            _deltanet("kimi_linear", "kimi_linear", "KimiLinearDeltaAttention", "5.17.0", kind="kda",
                      core="chunk_kimi_delta_attention", state=("num_heads", "head_dim", "head_dim"),
                      heads=("num_heads",), config_heads=("linear_num_heads",)))
MAMBA2 = (_mamba2("bamba", "BambaMixer", "4.48.0"), _mamba2("granitemoehybrid", "GraniteMoeHybridMambaLayer", "4.52.0"),
          _mamba2("falcon_h1", "FalconH1Mixer", "4.53.0", (HYBRID,)),
          _mamba2("nemotron_h", "NemotronHMamba2Mixer", "5.3.0", (LINEAR, "mlp", "moe")),
          _mamba2("zamba2", "Zamba2MambaMixer", "4.49.0", (LINEAR, HYBRID)),
          _mamba2("mamba2", "Mamba2Mixer", "4.44.0"))
MAMBA1 = (_mamba1("jamba", "JambaMambaMixer", "4.40.0"), _mamba1("mamba", "MambaMixer", "4.39.0"),
          _mamba1("falcon_mamba", "FalconMambaMixer", "4.45.0"),
          # one scan per Mamba head: the state is (batch, heads, head channels, d_state)
          _mamba1("zamba", "ZambaMambaMixer", "4.46.0", ("n_mamba_heads", "mamba_head_dim", "ssm_state_size"),
                  (LINEAR, HYBRID)))
# Griffin's RG-LRU and conv beside sliding-window attention layers (`linear_attention` from 5.23.0)
RG_LRU = (_rg_lru("recurrent_gemma", "RecurrentGemmaRecurrentBlock", "4.40.0", "5.23.0"),)
MIXER_PATCHES = SHORT_CONV + DELTANET + MAMBA2 + MAMBA1 + RG_LRU
#: (layer type, model_type of a text config) -> the id of the patch that computes those layers
MIXER_OF = {(t, p.variants[0].info["model_type"]): p.id for p in MIXER_PATCHES
            for t in p.variants[0].info["layer_types"]}
#: model_type of a text config -> the id of the patch that computes its mixer layers
PATCH_OF_FAMILY = {m: pid for (_, m), pid in MIXER_OF.items()}
#: Layer types other than attention that some family's mixer patch makes computable
MIXER_LAYER_TYPES = tuple(sorted({t for t, _ in MIXER_OF}))
#: (module, class name) of every patched mixer -> its patch id: a sharded step expects each instance to run it
PATCH_OF_MIXER = {(p.target.partition(":")[0], p.target.partition(":")[2].split(".")[0]): p.id for p in MIXER_PATCHES}
MIXER_CLASSES = frozenset(PATCH_OF_MIXER)
