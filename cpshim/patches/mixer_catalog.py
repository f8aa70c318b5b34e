"""Registry entries of the sequence mixers other than attention that ring mode computes exactly.

- Short causal convolutions (`conv` layers): LFM2's `*ShortConv` mixers, run by `cpshim.ring.short_conv`
  with a halo of kernel - 1 input rows. lfm2 is in every release in range, lfm2_moe from 5.0.0, lfm3 from
  5.23.0; 4.x dispatches the forward to `slow_forward` (torch's conv1d) or `cuda_kernels_forward`, 5.x to
  `causal_conv1d_fn`.
- Gated DeltaNet (`linear_attention` layers): Qwen3-Next, Qwen3.5, Qwen3.5-MoE, run by
  `cpshim.ring.delta_rule`, which hands upstream's forward a one-run cache. That needs the cache API of
  5.21.0 (get_conv_state / get_recurrent_state / is_recording_past; chunked prefill from the cached state):
  below it ring mode refuses these layers. OLMo-hybrid's DeltaNet (three convolutions, three conv states)
  and Kimi Linear are not covered.
Each fingerprint group of these patches has a `mixers` (or full) cell in the matrix running
tests/parity/test_mixer_parity.py.
"""

from __future__ import annotations

from ..registry import Patch, Variant
from .ceilings import TRANSFORMERS_CEILING

#: The gate of attention routing: open only while a sharded step is in flight, so that generation's
#: per-token forward of a mixer runs upstream's own method otherwise.
_ROUTING = "cpshim.ring.runtime:ROUTING"
CONV, LINEAR = "conv", "linear_attention"


def _mixer(layer_type: str, model_type: str, module_name: str, cls: str, floor: str, impl: str, summary: str,
           adds: str, watch: tuple[str, ...], refused_before: tuple[str, str] | None = None) -> Patch:
    module = f"transformers.models.{module_name}.modeling_{module_name}"
    kind = "short-conv" if layer_type == CONV else "gated-deltanet"
    return Patch(
        id=f"{module_name.replace('_', '-')}-{kind}",
        target=f"{module}:{cls}.forward",
        dist="transformers",
        floor=floor,
        needed_from=floor,  # below, transformers has no such family: nothing to patch, nothing refused
        refused_before=refused_before,
        follows_mode=False,
        gate=_ROUTING,
        summary=f"ring mode: {cls} ({model_type}'s {layer_type} layers) {summary}",
        variants=(Variant("halo" if layer_type == CONV else "carry-state",
                          {"transformers": f">={refused_before[0] if refused_before else floor},<6"},
                          {"transformers": TRANSFORMERS_CEILING}, impl,
                          info={"layer_type": layer_type, "model_type": model_type,
                                "keeps": "upstream's forward and kernels, outside sharded steps and on each run",
                                "adds": adds}),),
        watch=tuple(f"{module}:{w}" for w in watch),
    )


def _short_conv(model_type: str, cls: str, floor: str) -> Patch:
    # the padding mask is None during sharded steps: apply_mask_to_padding_states is not watched
    return _mixer(CONV, model_type, model_type, cls, floor, "cpshim.ring.short_conv:forward",
                  "runs on each run of its shard with the kernel - 1 input rows before it, exchanged with the rank "
                  "that holds them",
                  "a kernel - 1 row halo of the mixer's input (point-to-point, gradient returned); no cache and "
                  "no padding mask during sharded steps",
                  (f"{cls}.__init__", f"{cls}.forward", f"{cls}.slow_forward", f"{cls}.cuda_kernels_forward",
                   "causal_conv1d_fn"))


def _deltanet(model_type: str, module_name: str, cls: str, floor: str) -> Patch:
    return _mixer(LINEAR, model_type, module_name, cls, floor, "cpshim.ring.delta_rule:forward",
                  "runs each run of its shard from the conv rows and recurrent state the run before it left, "
                  "passed along the sequence",
                  "a one-run cache per run (conv rows and state in, out), sent point to point to the next run's "
                  "rank, gradients sent back",
                  (f"{cls}.__init__", f"{cls}.forward", "torch_chunk_gated_delta_rule", "causal_conv1d_fn"),
                  refused_before=("5.21.0", "ring mode refuses its linear-attention layers (no cached-state "
                                            "prefill to hand a run its state): upgrade transformers to >= 5.21"))


SHORT_CONV = (_short_conv("lfm2", "Lfm2ShortConv", "4.54.0"), _short_conv("lfm2_moe", "Lfm2MoeShortConv", "5.0.0"),
              _short_conv("lfm3", "Lfm3ShortConv", "5.23.0"))
DELTANET = (_deltanet("qwen3_next", "qwen3_next", "Qwen3NextGatedDeltaNet", "4.57.0"),
            _deltanet("qwen3_5_text", "qwen3_5", "Qwen3_5GatedDeltaNet", "5.2.0"),
            _deltanet("qwen3_5_moe_text", "qwen3_5_moe", "Qwen3_5MoeGatedDeltaNet", "5.2.0"))
MIXER_PATCHES = SHORT_CONV + DELTANET
#: (layer type, model_type of a text config) -> the id of the patch that computes those layers
MIXER_OF = {(p.variants[0].info["layer_type"], p.variants[0].info["model_type"]): p.id for p in MIXER_PATCHES}
#: (module, class name) of every patched mixer: a sharded step expects each of its instances to run its patch
MIXER_CLASSES = frozenset((p.target.partition(":")[0], p.target.partition(":")[2].split(".")[0]) for p in MIXER_PATCHES)
