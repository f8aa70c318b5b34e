"""Loader: ring-flash-attn imports with our kernels bound and leaves sys.modules and transformers'
modules exactly as they were. Each scenario runs in its own interpreter (imports are global);
they run concurrently to keep the wall time near one transformers import."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from cpshim.ring.errors import INSTALL_HINT

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROBE = pathlib.Path(__file__).with_name("_loader_probe.py")
# not_installed runs first in the process that then loads with a pre-existing flash_attn entry:
# a failed load must leave a state in which the next load works.
PROCESSES = ("load", "not_installed,preexisting_flash_attn", "no_transformers")
KERNELS = {"_flash_attn_forward", "_flash_attn_backward", "_flash_attn_varlen_forward", "_flash_attn_varlen_backward"}


@pytest.fixture(scope="module")
def probes():
    pytest.importorskip("transformers")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    procs = {s: subprocess.Popen([sys.executable, str(PROBE), s], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for s in PROCESSES}
    results = {}
    for s, p in procs.items():
        out, err = p.communicate(timeout=300)
        line = [ln for ln in out.splitlines() if ln.startswith("CPSHIM_JSON=")]
        assert p.returncode == 0 and line, f"{s} probe failed:\n{err[-3000:]}"
        results.update(json.loads(line[-1].split("=", 1)[1]))
    return results


def test_load_binds_provider_kernels_and_leaves_no_trace(probes):
    r = probes["load"]
    assert "error" not in r, r.get("error")
    res = r["result"]
    assert res["ring_version"] == "0.1.8" and res["provider"] == "reference" and not res["already_imported"]
    # every ring module that imports kernels got ours, and the report reads the real globals
    assert set(res["bound"]) >= {"ring_flash_attn.ring_flash_attn", "ring_flash_attn.zigzag_ring_flash_attn",
                                 "ring_flash_attn.llama3_flash_attn_varlen"}
    assert all(r["bound_identity"].values())
    assert set().union(*(b.keys() for b in res["bound"].values())) == KERNELS
    assert all(q.startswith("cpshim.ring.providers.reference.") for b in res["bound"].values() for q in b.values())
    assert not r["flash_attn_in_sys_modules"] and not r["flash_attn_iface_in_sys_modules"]
    assert r["fa_utils_unchanged"] and r["transformers_modules_unchanged"]
    ge = "transformers.modeling_flash_attention_utils.is_flash_attn_greater_or_equal_2_10"
    assert (ge in res["shimmed"]) == (not r["had_ge_2_10"])  # shimmed only where transformers lacks it
    assert "sys.modules['flash_attn']" in res["shimmed"]
    assert r["second"] == {"already_imported": True, "bound_same": True, "module_same": True}


def test_llama3_params_match_ring_flash_attn(probes):
    par = probes["load"]["llama3_parity"]
    assert par["cases"] > 1000 and par["mismatches"] == []


def test_not_installed_error(probes):
    r = probes["not_installed"]
    assert r["error"]["type"] == "RingNotInstalledError" and "ImportError" in r["error"]["bases"]
    assert r["error"]["msg"] == INSTALL_HINT == "ring-flash-attn is not installed: pip install 'cpshim[ring]'"
    assert r["error"]["cause"] == "ModuleNotFoundError"
    assert not r["flash_attn_in_sys_modules"] and r["fa_utils_unchanged"] and r["transformers_modules_unchanged"]


def test_other_import_failure_names_cause_and_cleans_up(probes):
    r = probes["no_transformers"]
    err = r["error"]
    assert err["type"] == "RingImportError" and "transformers" in err["msg"] and err["cause"] == "ModuleNotFoundError"
    assert r["left_modules"] == []  # no half-imported ring_flash_attn, no shim


def test_preexisting_flash_attn_entry_is_restored(probes):
    r = probes["preexisting_flash_attn"]
    assert "error" not in r, r.get("error")
    assert r["flash_attn_is_preexisting"] and r["result"]["provider"] == "reference"
    assert r["fa_utils_unchanged"] and r["transformers_modules_unchanged"]


def test_package_import_pulls_in_neither_torch_nor_transformers():
    code = ("import sys, cpshim.ring as r; r.RingNotInstalledError; "
            "print(sorted(m for m in ('torch', 'transformers', 'ring_flash_attn') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
