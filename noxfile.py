"""cpshim's sessions. The version matrix lives in compat_matrix/matrix.toml; nothing here is a version list.

    nox -s ci                              # what .ci/run runs: unit + every matrix cell + COMPAT.md
    nox -s 'tests(t4.56.2-a1.10.1)'        # one cell (`nox -l` lists them)
    nox -s tests                           # every cell, one after the other
    nox -s unit | lint | compat | latest | gpu

Environments live OUTSIDE the repository: $CPSHIM_NOX_ENVDIR (default ~/.cache/cpshim-nox); uv keeps
its own cache (~/.cache/uv). torch is pinned in every CPU session and, when $PIP_FIND_LINKS is set,
passed to uv as --find-links (uv ignores pip's configuration), so a CPU runner never resolves a CUDA
torch. Each cell writes compat_matrix/results/<cell>.json through cpshim's pytest plugin
(--cpshim-result); `nox -s compat` merges them into compat_matrix/COMPAT.md and cpshim/_data/matrix.json.

Environment knobs: CPSHIM_NOX_ENVDIR, CPSHIM_RESULTS_DIR, CPSHIM_CI_JOBS (parallel cells in `ci`,
default 2), CPSHIM_CI_CELLS (comma-separated cell ids: `ci` runs only those), CPSHIM_TORCH (override
the torch requirement, e.g. "torch==2.13.0"), CPSHIM_GPU_PYTHON (interpreter with the runner's CUDA
torch, for `gpu`).
"""

from __future__ import annotations

import glob
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "compat_matrix"))
import render  # noqa: E402 - compat_matrix/render.py: matrix loading and judging, stdlib only

MATRIX = render.load_matrix()
CELLS = MATRIX["cells"]
PYTHON = MATRIX["python"]
TORCH = MATRIX["torch"]
RING = MATRIX.get("ring_flash_attn", "0.1.8")
RESULTS = Path(os.environ.get("CPSHIM_RESULTS_DIR") or ROOT / "compat_matrix" / "results")
ENVDIR = os.environ.get("CPSHIM_NOX_ENVDIR") or os.path.expanduser("~/.cache/cpshim-nox")

nox.options.default_venv_backend = "uv"
nox.options.envdir = ENVDIR
nox.options.sessions = ["unit", "lint"]
nox.needs_version = ">=2024.3"

# Suites (matrix.toml's `suite`). A multi-rank test spawns its ranks itself; OMP_NUM_THREADS=1 keeps
# 2-4 gloo ranks from oversubscribing the cores.
SUITES = {
    # tests/architectures (model families under ring CP, one per feature): only in the cells whose `also` names it
    "full": ["tests", "--ignore=tests/architectures", "-m", "not gpu"],
    "smoke": ["tests/upstream", "tests/test_compat.py", "-m", "not multiproc and not gpu"],
    # another torch: what depends on it (c10d ring exchange, accelerate's mesh, the aten op binding)
    "torch": ["tests/upstream", "tests/test_compat.py", "tests/ring", "tests/parity/test_ring_parity.py",
              "-m", "not gpu"],
    # a cell whose purpose is a TRL fingerprint group: smoke plus TRL's parity suites (multi-rank)
    "trl": ["tests/upstream", "tests/test_compat.py", "tests/test_trl_support.py", "tests/parity/test_rl_parity.py",
            "tests/parity/test_pref_parity.py", "tests/parity/test_trl_parity.py", "-m", "not gpu"],
    # a cell whose purpose is a fingerprint group of a mixer patch (LFM2's conv layers): smoke plus their parity
    "mixers": ["tests/upstream", "tests/test_compat.py", "tests/parity/test_mixer_parity.py", "-m", "not gpu"],
}
UNIT = ["tests", "--ignore=tests/upstream", "--ignore=tests/ring", "-m", "not upstream and not multiproc and not gpu"]
TEST_DEPS = ["pytest>=8", "hypothesis>=6.100"]
# nox >= 2026.10 runs sessions side by side (`--parallel`); older nox runs `ci`'s cells one at a time.
HAS_PARALLEL = "allow_parallel" in inspect.signature(nox.session).parameters
PARALLEL_OK: dict = {"allow_parallel": True} if HAS_PARALLEL else {}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _run_identity() -> None:
    """One run id and commit for every session of this nox invocation (and nested ones)."""
    if not os.environ.get("CPSHIM_RUN_ID"):
        os.environ["CPSHIM_RUN_ID"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if not os.environ.get("CPSHIM_RUN_COMMIT"):
        sha = _git("rev-parse", "--short=10", "HEAD") or "unknown"
        # the run's own outputs do not make the tree dirty
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!compat_matrix/results",
                     ":!compat_matrix/COMPAT.md", ":!cpshim/_data/matrix.json")
        os.environ["CPSHIM_RUN_COMMIT"] = sha + ("+dirty" if dirty else "")


_run_identity()


def _find_links() -> list[str]:
    out: list[str] = []
    for entry in (os.environ.get("PIP_FIND_LINKS") or "").split():
        out += ["--find-links", entry]
    return out


def _torch_requirement(version: str = TORCH) -> str:
    """torch==version; the local CPU build when $PIP_FIND_LINKS holds it (never a CUDA build by accident).

    A cell on another torch than the matrix's default gets the index's build of exactly that release
    (a CUDA build, which runs on the CPU: about 3 GB with its nvidia packages, kept in uv's cache)."""
    if os.environ.get("CPSHIM_TORCH") and version == TORCH:
        return os.environ["CPSHIM_TORCH"]
    for entry in (os.environ.get("PIP_FIND_LINKS") or "").split():
        path = entry.removeprefix("file://")
        if os.path.isdir(path) and glob.glob(os.path.join(path, f"torch-{version}+cpu-*.whl")):
            return f"torch=={version}+cpu"
    return f"torch=={version}"


TORCH_CHECK = """
import importlib.metadata as md, sys
want = sys.argv[1]
have = md.version("torch")
names = {(d.metadata["Name"] or "") for d in md.distributions()}
cuda = sorted(n for n in names if n.lower().startswith("nvidia"))
cuda_ok = sys.argv[2] == "cuda-ok"
assert want == "torch" or have.split("+")[0] == want.split("==")[1].split("+")[0], \
    f"torch {have} installed, {want} required"
assert cuda_ok or not cuda, f"CUDA packages installed in a CPU session: {cuda}"
print(f"torch {have}, " + (f"{len(cuda)} CUDA packages (a CUDA build, run on the CPU)" if cuda else "no CUDA packages"))
"""


LATEST = "latest"  # `latest`: the newest torch on the index (a CUDA build on a CPU runner)


def _install_cpu(session: nox.Session, *requirements: str, torch_version: str = TORCH) -> None:
    """cpshim (editable) + test deps + `requirements`, torch pinned, in one resolution.

    --compile-bytecode: uv writes no .pyc by default, and with PYTHONDONTWRITEBYTECODE set (as on this
    machine) every fresh interpreter compiled transformers again: 10.6 s per `import transformers.trainer`
    instead of 4.5 s, paid by each of the many processes a full cell starts."""
    torch = "torch" if torch_version == LATEST else _torch_requirement(torch_version)
    session.install(*_find_links(), "--compile-bytecode", "-e", ".", *TEST_DEPS, torch, *requirements)
    cuda_ok = "cuda-ok" if torch_version != TORCH else "cpu-only"  # only a torch cell takes a CUDA build
    session.run("python", "-c", TORCH_CHECK, torch, cuda_ok, silent=False)


def _env(session: nox.Session) -> dict[str, str]:
    # pytest's numbered temp dirs per session: sessions run side by side, and each pytest deletes all but the 3
    # newest `pytest-N` of its root, so a shared root lets a short cell delete a long cell's worker directories
    temproot = os.path.join(session.virtualenv.location or ENVDIR, "pytest-tmp")
    os.makedirs(temproot, exist_ok=True)
    return {
        "PYTEST_DEBUG_TEMPROOT": temproot,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HYPOTHESIS_STORAGE_DIRECTORY": os.path.join(session.virtualenv.location or ENVDIR, ".hypothesis"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "CPSHIM_IN_NOX": "1",
    }


def _annotate(path: Path, **extra: object) -> dict:
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    data.update(extra)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return data


def _write_failure(path: Path, kind: str, cell: str | None, error: str, **extra: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"schema": 1, "kind": kind, "cell": cell, "install": {"ok": False, "error": error},
            "run": {"id": os.environ["CPSHIM_RUN_ID"], "commit": os.environ["CPSHIM_RUN_COMMIT"]}, **extra}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _pytest(session: nox.Session, path: Path, kind: str, cell: str | None, suite: str, args: list[str]) -> int:
    """Run pytest writing `path`; returns pytest's exit code (the caller decides what fails)."""
    env = {**_env(session), "CPSHIM_RESULT": str(path), "CPSHIM_CELL": cell or "", "CPSHIM_SUITE": suite,
           "CPSHIM_KIND": kind}
    session.run("pytest", "-rfE", "--durations=12", *args, *session.posargs, env=env,
                success_codes=range(256))
    if not path.exists():
        session.error(f"pytest wrote no result file {path}: did the cpshim pytest plugin load?")
    return int(json.loads(path.read_text(encoding="utf-8")).get("pytest", {}).get("exit", -1))


# ---------------------------------------------------------------------------------------- sessions

@nox.session(python=PYTHON, **PARALLEL_OK)
def unit(session: nox.Session) -> None:
    """Tests that need no upstream library (no torch, transformers, accelerate)."""
    session.install("-e", ".", *TEST_DEPS)
    path = Path(session.create_tmp()) / "unit-result.json"
    path.unlink(missing_ok=True)
    env = {**_env(session), "CPSHIM_RESULT": str(path), "CPSHIM_KIND": "unit", "CPSHIM_SUITE": "unit",
           "CPSHIM_RESULT_FINGERPRINTS": "0"}
    session.run("pytest", *UNIT, *session.posargs, env=env, success_codes=range(256))
    code = json.loads(path.read_text(encoding="utf-8")).get("pytest", {}).get("exit") if path.exists() else None
    if code == 5:
        session.error("unit: pytest collected no tests (exit 5): check the test paths and markers")
    if code != 0:
        session.error(f"unit: pytest exited {code}")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff and mypy on cpshim/."""
    session.install("-e", ".", "ruff>=0.5", "mypy>=1.10", "packaging")
    failures = []
    for cmd in (["ruff", "check", "cpshim"], ["mypy", "cpshim"]):
        try:
            session.run(*cmd)
        except nox.command.CommandFailed:
            failures.append(cmd[0])
    if failures:
        session.error(f"{' and '.join(failures)} failed")


@nox.session(python=PYTHON, tags=["matrix"], **PARALLEL_OK)
@nox.parametrize("cell", [nox.param(c, id=c["id"]) for c in CELLS])
def tests(session: nox.Session, cell: dict) -> None:
    """One matrix cell: pinned transformers/accelerate, the cell's suite, a result JSON."""
    started = time.monotonic()
    path = RESULTS / f"{cell['id']}.json"
    path.unlink(missing_ok=True)  # never leave a previous run's result behind a failed install
    try:
        _install_cpu(session, f"transformers=={cell['transformers']}", f"accelerate=={cell['accelerate']}",
                     f"ring-flash-attn=={RING}", *cell["pins"],  # ring-flash-attn 0.1.8 declares no dependencies
                     *[f"{d}=={cell[d]}" for d in render.OPTIONAL_DISTS if cell.get(d)],
                     torch_version=cell["torch"])
    except nox.command.CommandFailed as exc:
        _write_failure(path, "cell", cell["id"], str(exc), suite=cell["suite"],
                       timing={"install_s": round(time.monotonic() - started, 1),
                               "total_s": round(time.monotonic() - started, 1)})
        raise
    installed = time.monotonic()
    args = SUITES[cell["suite"]]
    if cell.get("also"):
        paths = [a for a in args if a.startswith("tests")]
        rest = [a for a in args[len(paths):] if a.removeprefix("--ignore=") not in cell["also"]]
        args = [*paths, *cell["also"], *rest]
    _pytest(session, path, "cell", cell["id"], cell["suite"], args)
    done = time.monotonic()
    data = _annotate(path, kind="cell", timing={"install_s": round(installed - started, 1),
                                                "pytest_s": round(done - installed, 1),
                                                "total_s": round(done - started, 1)})
    status, notes = render.judge(data, cell)
    session.log(f"cell {cell['id']}: {status} in {done - started:.0f}s")
    if status != "passed":
        session.error(f"cell {cell['id']} {status}:\n  " + "\n  ".join(notes))


@nox.session(python=PYTHON)
def latest(session: nox.Session) -> None:
    """Newest transformers + accelerate + torch from PyPI (non-blocking): a new release becomes an `untested` row."""
    started = time.monotonic()
    path = RESULTS / "latest.json"
    path.unlink(missing_ok=True)
    try:
        _install_cpu(session, "--upgrade", "transformers", "accelerate", f"ring-flash-attn=={RING}",
                     torch_version=LATEST)
    except nox.command.CommandFailed as exc:
        _write_failure(path, "latest", None, f"the newest transformers, accelerate and torch do not install "
                                             f"together: {exc}")
        session.warn("latest: install failed; recorded as a failed `latest` row")
        return
    installed = time.monotonic()
    _pytest(session, path, "latest", None, "smoke", SUITES["smoke"])
    done = time.monotonic()
    data = _annotate(path, kind="latest", timing={"install_s": round(installed - started, 1),
                                                  "pytest_s": round(done - installed, 1),
                                                  "total_s": round(done - started, 1)})
    versions = data.get("versions") or {}
    cell = render.cell_of(MATRIX, versions)
    status, notes = render.judge(data, cell)
    pair = (f"transformers {versions.get('transformers')} + accelerate {versions.get('accelerate')} + torch "
            f"{versions.get('torch')}")
    verdict = f"tested cell {cell['id']}" if cell else "not a matrix cell: untested"
    session.log(f"latest: {pair}: {verdict}; result {status}" + "".join(f"\n  {n}" for n in notes))


@nox.session(python=PYTHON)
def architectures(session: nox.Session) -> None:
    """The architecture table on the newest cell: every model type of its transformers trained under ring CP=2
    beside one process (long: not in `ci`). `-- --types a,b` reclassifies some types into the table."""
    cell = max((c for c in CELLS if c["torch"] == TORCH and c["suite"] == "full"),
               key=lambda c: [tuple(int(x) for x in c[d].split(".")) for d in ("transformers", "accelerate")])
    _install_cpu(session, f"transformers=={cell['transformers']}", f"accelerate=={cell['accelerate']}",
                 f"ring-flash-attn=={RING}", *cell["pins"])
    session.run("python", "compat_matrix/architectures.py", *session.posargs, env=_env(session))


GPU_PROBE = """
import json, os, sys
out = {"python": sys.executable, "version": "%d.%d" % sys.version_info[:2]}
try:
    import torch
except Exception as e:
    out.update(torch=None, cuda=False, why=f"torch does not import: {type(e).__name__}: {e}")
else:
    ok = torch.cuda.is_available()
    out.update(torch=torch.__version__, cuda=ok, cuda_version=torch.version.cuda,
               site=os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__))),
               devices=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if ok else [],
               why=None if ok else "torch.cuda.is_available() is False")
print("CPSHIM_GPU_PROBE=" + json.dumps(out))
"""
GPU_PYTHON = os.environ.get("CPSHIM_GPU_PYTHON") or sys.executable


def _gpu_probe() -> dict:
    proc = subprocess.run([GPU_PYTHON, "-c", GPU_PROBE], capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CPSHIM_GPU_PROBE=")]
    if not lines:
        return {"cuda": False, "why": f"{GPU_PYTHON} did not run the probe: {proc.stderr.strip()[-500:]}"}
    return json.loads(lines[-1].split("=", 1)[1])


@nox.session(python=GPU_PYTHON, venv_backend="venv")
def gpu(session: nox.Session) -> None:
    """GPU-marked tests with the runner's own CUDA torch (never pinned, installed or replaced here).

    The torch of $CPSHIM_GPU_PYTHON (default: the interpreter running nox) is made visible to the
    session's venv through a .pth file naming its site-packages, and pip gets the constraint
    `torch==<that version>`, so nothing can swap it. Cell pins: the newest matrix cell, or
    `nox -s gpu -- t4.56.2-a1.10.1`; other arguments go to pytest. Skips cleanly without CUDA
    (CPSHIM_GPU_ALLOW_CPU=1 runs the plumbing anyway, for a dry run on a CPU machine).
    """
    probe = _gpu_probe()
    if not probe.get("cuda") and os.environ.get("CPSHIM_GPU_ALLOW_CPU") != "1":
        session.skip(f"gpu: no CUDA here ({probe['why']}); run on a CUDA runner, with CPSHIM_GPU_PYTHON "
                     "pointing at an interpreter whose torch has CUDA")
    if not probe.get("torch"):
        session.skip(f"gpu: {probe['why']}")
    ids = {c["id"]: c for c in CELLS}
    chosen = [a for a in session.posargs if a in ids]
    cell = ids[chosen[0]] if chosen else CELLS[-1]
    rest = [a for a in session.posargs if a not in ids]
    purelib = session.run("python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                          silent=True).strip().splitlines()[-1]
    Path(purelib, "cpshim-runner-torch.pth").write_text(probe["site"] + "\n", encoding="utf-8")
    constraints = Path(session.create_tmp()) / "torch-constraint.txt"
    constraints.write_text(f"torch=={probe['torch']}\n", encoding="utf-8")
    session.install("-c", str(constraints), "-e", ".", *TEST_DEPS, f"transformers=={cell['transformers']}",
                    f"accelerate=={cell['accelerate']}", f"ring-flash-attn=={RING}")
    session.run("python", "-c", "import torch, sys; assert torch.__version__ == sys.argv[1], torch.__version__; "
                "print('gpu: torch', torch.__version__, 'from', torch.__file__)", probe["torch"])
    path = RESULTS / f"gpu-{cell['id']}.json"
    path.unlink(missing_ok=True)
    env = {**_env(session), "CPSHIM_RESULT": str(path), "CPSHIM_CELL": f"gpu-{cell['id']}",
           "CPSHIM_SUITE": "gpu", "CPSHIM_KIND": "gpu"}
    session.log(f"gpu: {probe.get('devices')} torch {probe['torch']} (CUDA {probe.get('cuda_version')}), "
                f"cell {cell['id']}")
    try:
        # `python -m`: packages the runner already has are not reinstalled here, so no console script
        session.run("python", "-m", "pytest", "-rfE", "tests", "-m", "gpu", *rest, env=env, success_codes=[0, 5])
    finally:
        if path.exists():
            _annotate(path, kind="gpu", gpu={k: probe.get(k) for k in ("torch", "cuda_version", "devices")})
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if data.get("pytest", {}).get("exit") == 5:
        session.skip("gpu: no test is marked `gpu` in this checkout (pytest exit 5)")


@nox.session(python=False)
def compat(session: nox.Session) -> None:
    """Merge compat_matrix/results/*.json into COMPAT.md and cpshim/_data/matrix.json."""
    session.run(sys.executable, str(ROOT / "compat_matrix" / "render.py"), "--results", str(RESULTS))


def _ci_cells() -> list[dict]:
    wanted = [c.strip() for c in (os.environ.get("CPSHIM_CI_CELLS") or "").split(",") if c.strip()]
    unknown = set(wanted) - {c["id"] for c in CELLS}
    if unknown:
        raise SystemExit(f"CPSHIM_CI_CELLS names unknown cells: {sorted(unknown)}")
    chosen = [c for c in CELLS if not wanted or c["id"] in wanted]
    return sorted(chosen, key=lambda c: c["suite"] != "full")  # long cells first (better packing)


@nox.session(python=False)
def ci(session: nox.Session) -> None:
    """unit + every matrix cell (CPSHIM_CI_JOBS at a time, default 2) + COMPAT.md; fails if any failed.

    Runs a nested `nox --parallel` so that independent cells share the cores; COMPAT.md is rendered
    even when cells fail (it lists the failures).
    """
    jobs = os.environ.get("CPSHIM_CI_JOBS", "2")
    sessions = ["unit"] + [f"tests({c['id']})" for c in _ci_cells()]
    started = time.monotonic()
    parallel = ["--parallel", jobs] if HAS_PARALLEL and jobs != "1" else []
    cmd = [sys.executable, "-m", "nox", "--envdir", ENVDIR, *parallel, "--no-color", "-s", *sessions]
    code = subprocess.run(cmd, cwd=ROOT, env=os.environ.copy(), check=False).returncode
    elapsed = time.monotonic() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "_run.json").write_text(json.dumps({
        "run": {"id": os.environ["CPSHIM_RUN_ID"], "commit": os.environ["CPSHIM_RUN_COMMIT"]},
        "jobs": int(jobs) if parallel else 1, "cpus": os.cpu_count(), "wall_s": round(elapsed, 1),
        "sessions": sessions, "nox_exit": code,
    }, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    session.run(sys.executable, str(ROOT / "compat_matrix" / "render.py"), "--results", str(RESULTS))
    session.log(f"ci: unit + {len(sessions) - 1} cells in {elapsed / 60:.1f} min (run {os.environ['CPSHIM_RUN_ID']})")
    if code != 0:
        session.error(f"ci: some sessions failed (nox exit {code}); see compat_matrix/COMPAT.md")
