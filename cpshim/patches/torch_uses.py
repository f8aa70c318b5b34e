"""What cpshim depends on in torch, as registry entries of kind `uses` (data only; nothing is patched).

Each is selected by the installed torch's version, fingerprinted like a patch (operator schemas,
call signatures) and reported, so a torch release cpshim was not tested with shows as `untested` and
one it cannot run ring CP on as `unsupported`, by name. Boundaries read from every torch wheel
2.2.0-2.15.0 (`compat_matrix/fingerprints.json`):

- aten flash-attention ops: 2.4 added `window_size_left/right`; 2.7 renamed the backward's
  `philox_seed, philox_offset` to `rng_state, unused` (and the forward's outputs) and returns the varlen
  lse packed (h, total_q) where 2.4-2.6 return it padded (batch, h, max_seqlen_q) (their meta kernels,
  run in the torch cells); 2.12 added `block_table, num_splits` (keyword-only, defaulted).
- DeviceMesh: `_flatten` (which accelerate's mesh calls) exists from 2.5; accelerate refuses
  `ParallelismConfig(cp_size>1)` below torch 2.6 (its TorchContextParallelConfig check), so ring CP
  starts at torch 2.6.
"""

from __future__ import annotations

from ..registry import USES, Patch, Variant

TORCH_CEILING = "2.15.0"
_CEILING = {"torch": TORCH_CEILING}

ATEN_FLASH = Patch(
    id="aten-flash-attention",
    target="torch:ops.aten._flash_attention_forward",
    dist="torch",
    floor="2.2.0",
    kind=USES,
    summary="the torch_cuda provider's calls to aten's flash-attention forward/backward, bound by name "
            "from the live schema (cpshim.ring.aten_calls)",
    variants=(
        Variant("philox-no-window", {"torch": ">=2.2,<2.4"}, {},
                None,
                info={"rng": "philox_seed, philox_offset", "window_sizes": False,
                      "varlen_lse": "read from the output (this torch's meta kernel has no varlen shapes)"}),
        Variant("philox", {"torch": ">=2.4,<2.7"}, {},
                None,
                info={"rng": "philox_seed, philox_offset", "window_sizes": True,
                      "varlen_lse": "padded (batch, h, max_seqlen_q): packed for ring-flash-attn"}),
        Variant("rng-state", {"torch": ">=2.7,<3"}, _CEILING,
                None,
                info={"rng": "rng_state, unused", "window_sizes": True, "varlen_lse": "packed (h, total_q)"}),
    ),
    watch=("aten::_flash_attention_forward", "aten::_flash_attention_backward"),
)

_C10D = "torch.distributed.distributed_c10d"
RING_COLLECTIVES = Patch(
    id="ring-collectives",
    target=f"{_C10D}:batch_isend_irecv",
    dist="torch",
    floor="2.2.0",
    kind=USES,
    summary="the torch.distributed calls ring-flash-attn 0.1.8 (p2p ring, all-gather, reduce-scatter) "
            "and cpshim (groups, gathers) make",
    variants=(Variant("c10d", {"torch": ">=2.2,<3"}, _CEILING, None,
                      info={"ring_flash_attn": "P2POp + batch_isend_irecv, all_gather_into_tensor, "
                                               "reduce_scatter_tensor, get_global_rank",
                            "cpshim": "all_gather, all_gather_object, all_reduce, new_group, barrier"}),),
    watch=tuple(f"{_C10D}:{name}()" for name in (
        "batch_isend_irecv", "P2POp.__init__", "isend", "irecv", "all_gather_into_tensor",
        "reduce_scatter_tensor", "get_global_rank", "get_rank", "get_world_size", "all_gather",
        "all_gather_object", "all_reduce", "new_group", "barrier")),
)

_MESH = "torch.distributed.device_mesh"
DEVICE_MESH = Patch(
    id="device-mesh",
    target=f"{_MESH}:DeviceMesh._flatten",
    dist="torch",
    floor="2.2.0",
    kind=USES,
    summary="accelerate's CP mesh (init_device_mesh, sub-meshes flattened into dp/dp_cp) and cpshim's "
            "groups from it; accelerate refuses cp_size>1 below torch 2.6",
    variants=(Variant("flatten", {"torch": ">=2.6,<3"}, _CEILING, None,
                      info={"needs": "DeviceMesh._flatten (torch>=2.5) and accelerate's CP config (torch>=2.6)"}),),
    watch=tuple(f"{_MESH}:{name}()" for name in (
        "init_device_mesh", "DeviceMesh.__getitem__", "DeviceMesh._flatten", "DeviceMesh.get_group",
        "DeviceMesh.get_local_rank", "DeviceMesh.size")),
)

TORCH_USES = (ATEN_FLASH, RING_COLLECTIVES, DEVICE_MESH)
