"""Registry entries of the sequence mixers other than attention that ring mode computes exactly.

Short causal convolutions: LFM2's `*ShortConv` mixers (in_proj, gate, depthwise causal conv1d of
`conv_L_cache` taps, gate, out_proj), run by `cpshim.ring.short_conv` with a halo of kernel - 1 input
rows. Ranges from the wheels (`python compat_matrix/generate.py`): lfm2 is in every release in range,
lfm2_moe from 5.0.0, lfm3 from 5.23.0; 4.x dispatches the forward to `slow_forward` (torch's conv1d)
or `cuda_kernels_forward` (the causal_conv1d kernel), 5.x to `causal_conv1d_fn`. Each fingerprint group
of these patches has a `mixers` (or full) cell in the matrix running tests/parity/test_mixer_parity.py.
"""

from __future__ import annotations

from ..registry import Patch, Variant
from .ceilings import TRANSFORMERS_CEILING

#: The gate of attention routing: open only while a sharded step is in flight, so that generation's
#: per-token forward of a mixer runs upstream's own method otherwise.
_ROUTING = "cpshim.ring.runtime:ROUTING"


def _short_conv(model_type: str, cls: str, floor: str) -> Patch:
    module = f"transformers.models.{model_type}.modeling_{model_type}"
    return Patch(
        id=f"{model_type.replace('_', '-')}-short-conv",
        target=f"{module}:{cls}.forward",
        dist="transformers",
        floor=floor,
        needed_from=floor,  # below, transformers has no such family: nothing to patch, nothing refused
        follows_mode=False,
        gate=_ROUTING,
        summary=f"ring mode: {cls} (a {model_type} conv layer) runs on each run of its shard with the kernel - 1 "
                "input rows before it, exchanged with the rank that holds them",
        variants=(Variant("halo", {"transformers": f">={floor},<6"}, {"transformers": TRANSFORMERS_CEILING},
                          "cpshim.ring.short_conv:forward",
                          info={"model_type": model_type,
                                "keeps": "upstream's forward and kernel, outside sharded steps and on each run",
                                "adds": "a kernel - 1 row halo of the mixer's input (point-to-point, gradient "
                                        "returned); no cache and no padding mask during sharded steps"}),),
        # the padding mask is None during sharded steps: apply_mask_to_padding_states is not watched
        watch=(f"{module}:{cls}.__init__", f"{module}:{cls}.forward", f"{module}:{cls}.slow_forward",
               f"{module}:{cls}.cuda_kernels_forward", f"{module}:causal_conv1d_fn"),
    )


SHORT_CONV = (_short_conv("lfm2", "Lfm2ShortConv", "4.54.0"), _short_conv("lfm2_moe", "Lfm2MoeShortConv", "5.0.0"),
              _short_conv("lfm3", "Lfm3ShortConv", "5.23.0"))
#: model_type of a text config -> the id of the patch that computes its conv layers
SHORT_CONV_OF = {p.variants[0].info["model_type"]: p.id for p in SHORT_CONV}
MIXER_PATCHES = SHORT_CONV
#: (module, class name) of every patched mixer: a sharded step expects each of its instances to run its patch
MIXER_CLASSES = frozenset((p.target.partition(":")[0], p.target.partition(":")[2].split(".")[0]) for p in MIXER_PATCHES)
