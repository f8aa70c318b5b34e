"""Shared test helpers: fresh interpreters, and observing whether upstream code ran."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, env: dict[str, str] | None = None, timeout: int = 300,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with the repo importable; fail with its output."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    full_env.pop("CPSHIM_POLICY", None)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=str(ROOT))
    if check and proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@contextlib.contextmanager
def code_runs(*funcs):
    """Yield a set filled with the functions (by code object) among `funcs` that executed inside."""
    codes = {f.__code__: f for f in funcs}
    seen: set = set()

    def profiler(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            seen.add(codes[frame.f_code])

    old = sys.getprofile()
    sys.setprofile(profiler)
    try:
        yield seen
    finally:
        sys.setprofile(old)



def run_ranks(code: str, world: int, env: dict[str, str] | None = None, timeout: int = 300) -> list[str]:
    """`world` gloo ranks of `code`; a failing rank fails the test with its output."""
    from cpshim.ring.launch import run_ranks as launch

    try:
        return launch(code, world, env=env, timeout=timeout, cwd=str(ROOT))
    except RuntimeError as e:
        raise AssertionError(str(e)) from e


def rank_json(tmp_path_factory, worker: str, worlds: tuple[int, ...] = (2, 4), timeout: int = 600) -> dict:
    """{world: [each rank's JSON]}: `worker`'s main(out_dir) launched on each world size over gloo."""
    import importlib.util
    import json

    import pytest

    if importlib.util.find_spec("ring_flash_attn") is None:
        pytest.skip("ring-flash-attn not installed")
    out = {}
    for world in worlds:
        path = tmp_path_factory.mktemp(f"{worker.rsplit('.', 1)[-1]}{world}")
        run_ranks(f"from {worker} import main; main({str(path)!r})", world, timeout=timeout)
        out[world] = [json.loads((path / f"rank{r}.json").read_text()) for r in range(world)]
    return out


def run_parity_pair(worker: str, cases: list[dict], out: str, timeout: int = 900, world: int = 2) -> dict:
    """`worker.main_worker(cases, out, cp)` once in one process and once as `world` ring ranks (cp=2; 4: two
    data-parallel groups of two); returns {case id: (the one-process result, rank 0's ring result)} from the
    files the worker saved."""
    import json

    code = f"from {worker} import main_worker; main_worker({json.dumps(cases)!r}, {out!r}, CP)"
    run_python(code.replace("CP", "1"), env={"OMP_NUM_THREADS": "1"}, timeout=timeout)
    run_ranks(code.replace("CP", "2"), world, timeout=timeout)
    return parity_results(out, cases)


def parity_results(out: str, cases: list[dict]) -> dict:
    """{case id: (the reference result, rank 0's ring result)}, from the files a parity worker saved in `out`."""
    import torch

    return {c["id"]: tuple(torch.load(os.path.join(out, f"{tag}-{i}.pt"), weights_only=False)
                           for tag in ("ref", "ring")) for i, c in enumerate(cases)}


def parity_verdict(ref: dict, ring: dict, loss_rtol: float, grad_rtol: float) -> dict:
    """`cpshim.ring.parity.compare`, plus the eval loss's relative error (within loss_rtol) when recorded."""
    from cpshim.ring import parity

    verdict = parity.compare(ref, ring, loss_rtol, grad_rtol)
    if "eval_loss" in ref:
        verdict["eval_rel_err"] = abs(ring["eval_loss"] - ref["eval_loss"]) / abs(ref["eval_loss"])
        verdict["ok"] = verdict["ok"] and verdict["eval_rel_err"] <= loss_rtol
    return verdict


def upstream_forward(module):
    """The module's upstream forward, bound, whether or not a cpshim patch wraps its class's."""
    from cpshim import patching

    method = type(module).forward
    return (method.__wrapped__ if patching.is_wrapper(method) else method).__get__(module)


def mixer_patch_info(module):
    """The info of the mixer patch for the module's class (its first variant's)."""
    from cpshim.patches.mixer_catalog import MIXER_PATCHES, PATCH_OF_MIXER

    pid = PATCH_OF_MIXER[(type(module).__module__, type(module).__name__)]
    return next(p for p in MIXER_PATCHES if p.id == pid).variants[0].info


def skip_below_carry_state() -> None:
    """Skip the calling test module where the recurrent mixers' patches do not apply: a run takes its conv rows
    and state from its cache from transformers 5.21 on (ring mode refuses Gated DeltaNet and Mamba-2 below)."""
    import pytest

    pytest.importorskip("torch")
    pytest.importorskip("transformers.models.qwen3_5")
    if not __import__("cpshim").report()["qwen3-5-gated-deltanet"].variant:
        pytest.skip("the forward takes a run's conv rows and state from its cache from transformers 5.21 on (ring "
                    "mode refuses Gated DeltaNet and Mamba-2 below)", allow_module_level=True)
