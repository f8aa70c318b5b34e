"""parallelism-config-validate / -mesh with real gloo ranks: multi-CPU CP, and dp filled from cp."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_ranks

pytestmark = [pytest.mark.multiproc, pytest.mark.needs_cp]

SCRIPT = """
import json, os, warnings
import torch.distributed as dist
warnings.simplefilter("ignore")
import cpshim
if os.environ["CASE_APPLY"] == "1":
    cpshim.apply()
from accelerate import Accelerator, ParallelismConfig
out = {}
try:
    acc = Accelerator(cpu=True, parallelism_config=ParallelismConfig(cp_size=int(os.environ["CASE_CP"])))
    mesh = acc.torch_device_mesh
    out["mesh"] = dict(zip(mesh.mesh_dim_names, mesh.mesh.shape))
    out["cp_group"] = dist.get_world_size(mesh["cp"].get_group())
    out["type"] = str(acc.distributed_type)
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
print("RESULT " + json.dumps(out))
"""


def _results(world, cp, apply):
    outs = run_ranks(SCRIPT, world, env={"CASE_CP": str(cp), "CASE_APPLY": "1" if apply else "0"})
    return [json.loads(line.split("RESULT ", 1)[1]) for o in outs for line in o.splitlines() if line.startswith("RESULT ")]


def test_multi_cpu_cp_is_refused_upstream_and_accepted_patched():
    unpatched = _results(2, 2, apply=False)
    assert all("only compatible" in r.get("error", "") for r in unpatched), unpatched
    patched = _results(2, 2, apply=True)
    assert all(r.get("mesh") == {"cp": 2} and r["cp_group"] == 2 for r in patched), patched


def test_dp_replicate_filled_from_cp_size():
    unpatched = _results(4, 2, apply=False)
    assert all("error" in r for r in unpatched), unpatched
    patched = _results(4, 2, apply=True)
    assert all(r.get("mesh") == {"dp_replicate": 2, "cp": 2} and r["cp_group"] == 2 for r in patched), patched
    refused = _results(4, 3, apply=True)
    assert all("cp_size=3" in r.get("error", "") and "divide" in r["error"] for r in refused), refused
