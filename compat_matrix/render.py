"""Merge the matrix cells' result files into COMPAT.md and cpshim/_data/matrix.json (one command).

    python compat_matrix/render.py            # what `nox -s compat` runs
    python compat_matrix/render.py --check    # exit 1 when either file is out of date

Inputs: compat_matrix/matrix.toml (the cells and the variant expected per patch, written by hand) and
compat_matrix/results/*.json (one per cell, written by `nox -s tests(<cell>)` through cpshim's pytest
plugin; `latest-*.json` by `nox -s latest`). Outputs are never edited by hand.

A cell `passed` only when its tests passed AND the variant cpshim selected equals the expectation
for every patch AND every selection is `supported` AND (when fingerprint data is shipped) the live
fingerprint of the patched upstream code matches a tested release. Needs Python >= 3.11 (tomllib)
and `packaging`; imports nothing from cpshim.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import tomllib

ROOT = Path(__file__).resolve().parents[1]
MATRIX = ROOT / "compat_matrix" / "matrix.toml"
RESULTS = ROOT / "compat_matrix" / "results"
COMPAT = ROOT / "compat_matrix" / "COMPAT.md"
DATA = ROOT / "cpshim" / "_data" / "matrix.json"
DATA_SCHEMA = 1
NONE = "none"  # expectation: no variant applies
STATIC_KEYS = ("id", "transformers", "accelerate", "python", "torch", "trl", "suite", "also", "why", "expect",
               "pins", "refuses")
#: Distributions a cell installs at its own version, besides transformers/accelerate/torch: absent from a
#: cell means not installed there (that cell proves "TRL missing: nothing changes").
OPTIONAL_DISTS = ("trl",)
SUITES = ("full", "smoke", "torch", "trl", "mixers")
MARK = {"passed": "passed", "failed": "**FAILED**", "untested": "untested", "unsupported": "**unsupported**",
        "not-run": "not run"}


def cell_id(transformers: str, accelerate: str, torch: str | None = None) -> str:
    """`t5.24.0-a1.15.0`; a cell on another torch than the matrix's default adds `-torch2.15.0`."""
    return f"t{transformers}-a{accelerate}" + (f"-torch{torch}" if torch else "")


def release(version: str | None) -> str | None:
    """`2.13.0+cpu` -> `2.13.0` (a local build label is not another release)."""
    return version.split("+")[0] if version else version


class MatrixError(ValueError):
    pass


def load_matrix(path: Path = MATRIX) -> dict[str, Any]:
    """matrix.toml, checked for shape, with each cell's `id`, `python` and `torch` filled in."""
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    for key in ("python", "torch"):
        if not isinstance(raw.get(key), str):
            raise MatrixError(f"{path}: top-level {key!r} (a version string) is missing")
    cells, seen = [], set()
    for i, cell in enumerate(raw.get("cell", [])):
        where = f"{path}: cell #{i + 1}"
        for key in ("transformers", "accelerate", "suite", "why"):
            if not isinstance(cell.get(key), str) or not cell[key]:
                raise MatrixError(f"{where}: {key!r} missing")
        if cell["suite"] not in SUITES:
            raise MatrixError(f"{where}: suite {cell['suite']!r} is not one of {SUITES}")
        expect = cell.get("expect")
        if not isinstance(expect, dict) or not all(isinstance(v, str) for v in expect.values()):
            raise MatrixError(f"{where}: [cell.expect] must map patch id -> variant name (or {NONE!r})")
        torch = cell.get("torch", raw["torch"])
        if not isinstance(torch, str) or not torch:
            raise MatrixError(f"{where}: `torch` must be a version string")
        cid = cell_id(cell["transformers"], cell["accelerate"], None if torch == raw["torch"] else torch)
        if cid in seen:
            raise MatrixError(f"{where}: duplicate cell {cid}")
        seen.add(cid)
        also = cell.get("also", [])
        if not isinstance(also, list) or not all(isinstance(a, str) and a for a in also):
            raise MatrixError(f"{where}: `also` must be a list of test paths")
        pins, refuses = cell.get("pins", []), cell.get("refuses", [])
        for key, val in (("pins", pins), ("refuses", refuses)):
            if not isinstance(val, list) or not all(isinstance(a, str) and a for a in val):
                raise MatrixError(f"{where}: `{key}` must be a list of strings")
        if set(refuses) - set(expect) or any(expect[r] != NONE for r in refuses):
            raise MatrixError(f"{where}: every id in `refuses` needs `{NONE}` in [cell.expect] (a refusal selects none)")
        for dist in OPTIONAL_DISTS:
            if dist in cell and (not isinstance(cell[dist], str) or not cell[dist]):
                raise MatrixError(f"{where}: `{dist}` must be a version string")
        extra = set(cell) - {"transformers", "accelerate", "torch", "suite", "also", "why", "expect", "pins",
                             "refuses", *OPTIONAL_DISTS}
        if extra:
            raise MatrixError(f"{where}: unknown keys {sorted(extra)}")
        cells.append({"id": cid, "transformers": cell["transformers"], "accelerate": cell["accelerate"],
                      "python": raw["python"], "torch": torch, **{d: cell.get(d) for d in OPTIONAL_DISTS},
                      "suite": cell["suite"], "also": list(also),
                      "why": cell["why"], "expect": dict(expect), "pins": list(pins), "refuses": list(refuses)})
    if not cells:
        raise MatrixError(f"{path}: no [[cell]]")
    return {**{k: v for k, v in raw.items() if k != "cell"}, "cells": cells}


def patch_ids(matrix: dict[str, Any]) -> list[str]:
    """Patch ids in first-seen order over the cells' expectations."""
    out: list[str] = []
    for cell in matrix["cells"]:
        out += [p for p in cell["expect"] if p not in out]
    return out


def load_results(directory: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """{result key: result}; the key is the cell id (matrix cells) or the file stem (latest-*)."""
    out: dict[str, dict[str, Any]] = {}
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.json")):
        if path.name.startswith("_"):
            continue  # _run.json: the run's own record, not a cell
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            data = {"error": f"unreadable result file {path.name}: {exc}"}
        out[data.get("cell") or path.stem] = {**data, "_file": path.name}
    return out


def load_run(directory: Path = RESULTS) -> dict[str, Any]:
    """compat_matrix/results/_run.json, written by `nox -s ci` (wall time, parallel jobs); {} if absent."""
    try:
        return json.loads((directory / "_run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------------ judging

_RANK = {"passed": 0, "untested": 1, "unsupported": 2, "failed": 3}


def _worse(a: str, b: str) -> str:
    return a if _RANK[a] >= _RANK[b] else b


def judge(result: dict[str, Any] | None, cell: dict[str, Any] | None) -> tuple[str, list[str]]:
    """(status, notes) of one result against its cell (None for `latest` results outside the matrix)."""
    if result is None:
        return "not-run", []
    notes: list[str] = []
    status = "passed"
    if result.get("error"):
        return "failed", [str(result["error"])]
    install = result.get("install") or {}
    if install.get("ok") is False:
        return "failed", [f"install failed: {install.get('error', '?')}"]
    versions = result.get("versions") or {}
    if cell is not None:
        for dist in ("transformers", "accelerate", "torch", *OPTIONAL_DISTS):
            if release(versions.get(dist)) != cell.get(dist):
                status = "failed"
                notes.append(f"installed {dist} {versions.get(dist) or '(none)'}, the cell is "
                             f"{cell.get(dist) or 'without it'}")
    patches = result.get("patches") or {}
    if cell is not None:
        for pid, expected in cell["expect"].items():
            rec = patches.get(pid)
            if rec is None:
                status = "failed"
                notes.append(f"{pid}: expected {expected}, the result has no record (cpshim without this patch)")
                continue
            got = rec.get("variant") or NONE
            if got != expected:
                status = "failed"
                notes.append(f"{pid}: cpshim selected {got}, the matrix expects {expected}")
        for pid in patches:
            if pid not in cell["expect"]:
                status = "failed"
                notes.append(f"{pid}: no expectation in matrix.toml for this cell")
    refuses = set(cell["refuses"]) if cell is not None else set()
    for pid in sorted(refuses):
        if (patches.get(pid) or {}).get("support") != "unsupported":
            status = "failed"
            notes.append(f"{pid}: the matrix expects cpshim to refuse this cell's versions, it selected "
                         f"{(patches.get(pid) or {}).get('support')}")
    for pid, rec in patches.items():
        if not rec.get("needed", True) or pid in refuses:
            continue
        support = rec.get("support")
        if support in ("untested", "unsupported"):
            status = _worse(status, support)
            notes.append(f"{pid}: {support}: {rec.get('reason')}")
        fp = rec.get("fingerprint") or {}
        if fp.get("error"):
            status = _worse(status, "failed")
            notes.append(f"{pid}: fingerprint error: {fp['error']}")
        elif result.get("fingerprint_data") and not fp.get("matches"):
            status = _worse(status, "untested")
            notes.append(f"{pid}: untested code: {fp.get('reason')}")
    py = result.get("pytest")
    if not py:
        status = "failed"
        notes.append("no pytest outcome recorded")
    else:
        if py.get("exit") == 5:
            status = "failed"
            notes.append("pytest collected no tests (exit 5): the cell verified nothing")
        elif py.get("exit") == 0 and not (py.get("counts") or {}).get("passed"):
            status = "failed"
            notes.append("no test passed (every test was skipped): the run verified nothing")
        elif py.get("exit") not in (0, None) or py.get("failed"):
            status = "failed"
            for f in py.get("failed") or []:
                notes.append(f"`{f['id']}` {f.get('outcome', 'failed')}: {f.get('message', '')}")
            if not py.get("failed"):
                notes.append(f"pytest exited {py.get('exit')}")
    return status, notes


# ------------------------------------------------------------------------------------ outputs

def _run_of(result: dict[str, Any]) -> tuple[str, str]:
    run = result.get("run") or {}
    return str(run.get("id") or "unknown"), str(run.get("commit") or "unknown")


def _seconds(result: dict[str, Any] | None) -> float | None:
    timing = (result or {}).get("timing") or {}
    return timing.get("total_s")


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    whole = round(s)
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


def _counts(result: dict[str, Any] | None) -> str:
    counts = ((result or {}).get("pytest") or {}).get("counts") or {}
    if not counts:
        return "-"
    order = ("passed", "failed", "error", "skipped", "xfailed")
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))


def _extra_results(matrix: dict[str, Any], results: dict[str, dict[str, Any]],
                   kind: str) -> list[tuple[str, dict]]:
    """Results that are not matrix cells: kind `latest` (the default for unknown kinds) or `gpu`."""
    ids = {c["id"] for c in matrix["cells"]}
    out = []
    for key, result in sorted(results.items()):
        if key in ids:
            continue
        rkind = "gpu" if result.get("kind") == "gpu" else "latest"
        if rkind == kind:
            out.append((key, result))
    return out


def cell_of(matrix: dict[str, Any], versions: dict[str, Any]) -> dict[str, Any] | None:
    """The matrix cell of these installed versions (transformers, accelerate and torch's release)."""
    key = (versions.get("transformers"), versions.get("accelerate"), release(versions.get("torch")))
    return next((c for c in matrix["cells"] if (c["transformers"], c["accelerate"], c["torch"]) == key), None)


def judge_extra(matrix: dict[str, Any], result: dict[str, Any]) -> tuple[str, list[str], str | None]:
    """(status, notes, same cell id) of a result outside the matrix (e.g. `nox -s latest`).

    The pair of a matrix cell is judged against that cell's expectations; any other pair is at best
    `untested` (passing tests on a pair that is not a cell prove less than a cell).
    """
    versions = result.get("versions") or {}
    cell = cell_of(matrix, versions)
    status, notes = judge(result, cell)
    if cell is not None:
        return status, [f"same pair as cell {cell['id']}", *notes], cell["id"]
    if status == "passed":
        status = "untested"
    return status, ["not a cell of the matrix", *notes], None


def build_data(matrix: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """cpshim/_data/matrix.json: what `cpshim.compat` reads at run time (shipped in the wheel)."""
    cells = []
    for cell in matrix["cells"]:
        result = results.get(cell["id"])
        status, notes = judge(result, cell)
        rec = None
        if result is not None:
            run_id, commit = _run_of(result)
            py = result.get("pytest") or {}
            rec = {"status": status, "notes": notes, "run": run_id, "commit": commit,
                   "counts": py.get("counts") or {}, "seconds": _seconds(result)}
        cells.append({**{k: cell[k] for k in STATIC_KEYS}, "result": rec})
    latest = []
    for key, result in _extra_results(matrix, results, "latest"):
        status, notes, _ = judge_extra(matrix, result)
        versions = result.get("versions") or {}
        latest.append({"id": key, "transformers": versions.get("transformers"),
                       "accelerate": versions.get("accelerate"), "status": status, "notes": notes,
                       "run": _run_of(result)[0]})
    return {"schema": DATA_SCHEMA, "generated_by": "compat_matrix/render.py (nox -s compat)",
            "python": matrix["python"], "torch": matrix["torch"], "torch_note": matrix.get("torch_note", ""),
            "patches": patch_ids(matrix), "cells": cells, "latest": latest}


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_md(matrix: dict[str, Any], results: dict[str, dict[str, Any]],
              run: dict[str, Any] | None = None) -> str:
    cells = matrix["cells"]
    pids = patch_ids(matrix)
    judged = {c["id"]: judge(results.get(c["id"]), c) for c in cells}
    runs: dict[tuple[str, str], list[str]] = {}
    for c in cells:
        if c["id"] in results:
            runs.setdefault(_run_of(results[c["id"]]), []).append(c["id"])
    recorded = sum(1 for c in cells if c["id"] in results)
    lines = [
        ("<!-- GENERATED by `nox -s compat` (python compat_matrix/render.py) from compat_matrix/results/*.json"
         " and compat_matrix/matrix.toml. Do not edit by hand. -->"),
        "# cpshim compatibility table",
        "",
    ]
    if not runs:
        lines.append("Generated from no run: no result file in compat_matrix/results/ (run `nox -s ci`).")
    elif len(runs) == 1:
        (run_id, commit), _ = next(iter(runs.items()))
        lines.append(f"Generated from matrix run `{run_id}` (cpshim commit `{commit}`): "
                     f"{recorded} of {len(cells)} cells recorded.")
    else:
        lines.append(f"Generated from {len(runs)} matrix runs ({recorded} of {len(cells)} cells recorded):")
        for (run_id, commit), ids in sorted(runs.items()):
            lines.append(f"- run `{run_id}` (commit `{commit}`): {', '.join(ids)}")
    total = sum(_seconds(results.get(c["id"])) or 0 for c in cells)
    lines += [
        "",
        (f"Every cell runs on **Python {matrix['python']}**; torch is **{matrix['torch']}** "
         f"({matrix.get('torch_note', '')}) unless the torch column says otherwise "
         f"({matrix.get('torch_cells_note', '')}). "
         f"ring-flash-attn {matrix.get('ring_flash_attn', '-')} is installed in every cell. A patch in a cell's "
         "`refuses` list is one cpshim must refuse there by name (e.g. ring CP below torch 2.6); the cell "
         "passes only if it does."),
        "",
        ("A cell *passed* when its tests passed, cpshim selected the variant `compat_matrix/matrix.toml` expects "
         "for every patch, every selection is `supported`, and the upstream code it patches matches a tested "
         "release's fingerprint. `full` cells run every CPU test (patch contract, multi-rank, ring); `smoke` "
         "cells run the real Trainer/Accelerator tests in one process."),
        "",
        "| transformers | accelerate | torch | trl | result | " + " | ".join(f"`{p}`" for p in pids)
        + " | tests | suite | time |",
        "|---|---|---|---|---|" + "---|" * len(pids) + "---|---|---|",
    ]
    for c in cells:
        result = results.get(c["id"])
        status, _ = judged[c["id"]]
        got = (result or {}).get("patches") or {}
        variants = []
        for p in pids:
            expected = c["expect"].get(p, "?")
            rec = got.get(p)
            actual = (rec.get("variant") or NONE) if rec else None
            shown = expected if actual in (None, expected) or result is None else f"{actual} (expected {expected})"
            variants.append(f"refused ({shown})" if p in c["refuses"] else shown)
        lines.append(f"| {c['transformers']} | {c['accelerate']} | {c['torch']} | {c['trl'] or '-'} | {MARK[status]} | "
                     + " | ".join(variants)
                     + f" | {_counts(result)} | {c['suite']} | {_fmt_time(_seconds(result))} |")
    lines += ["", f"Sum of the cells' times (install included): {_fmt_time(total) if total else '-'}."]
    if run and len(runs) == 1 and (run.get("run") or {}).get("id") == next(iter(runs))[0]:
        lines[-1] += (f" Wall time of `nox -s ci` for this run: {_fmt_time(run.get('wall_s'))} "
                      f"({len(run.get('sessions') or [])} sessions, unit included, {run.get('jobs')} at a time, "
                      f"on {run.get('cpus', '?')} CPUs).")
    problems = [(c, judged[c["id"]][1]) for c in cells if judged[c["id"]][0] not in ("passed", "not-run")]
    if problems:
        lines += ["", "## Failures and notes", ""]
        for c, notes in problems:
            lines.append(f"- **{c['id']}** ({judged[c['id']][0]}):")
            lines += [f"  - {_esc(n)}" for n in notes]
    lines += ["", "## Newest releases (`nox -s latest`, non-blocking)", ""]
    latest = _extra_results(matrix, results, "latest")
    if not latest:
        lines.append("No `latest` result recorded.")
    else:
        lines += ["| transformers | accelerate | torch | result | reasons | run |", "|---|---|---|---|---|---|"]
        for _, result in latest:
            status, notes, _ = judge_extra(matrix, result)
            versions = result.get("versions") or {}
            lines.append(f"| {versions.get('transformers') or '-'} | {versions.get('accelerate') or '-'} "
                         f"| {versions.get('torch') or '-'} "
                         f"| {MARK[status]} | {_esc('; '.join(notes))} | `{_run_of(result)[0]}` |")
    lines += ["", "## GPU runs (`nox -s gpu`, on a CUDA runner)", ""]
    gpu = _extra_results(matrix, results, "gpu")
    if not gpu:
        lines.append("No GPU result recorded: GPU-only paths (e.g. `state-cp-without-fsdp`) are not verified "
                     "by this table.")
    else:
        lines += ["| cell | device | result | tests | notes |", "|---|---|---|---|---|"]
        for key, result in gpu:
            status, notes, _ = judge_extra(matrix, result)
            device = ", ".join((result.get("gpu") or {}).get("devices") or []) or "-"
            lines.append(f"| {key} | {_esc(device)} | {MARK[status]} | {_counts(result)} "
                         f"| {_esc('; '.join(notes))} |")
    lines += [
        "",
        "## Reproduce",
        "",
        ("- one cell: `nox -s 'tests(t5.24.0-a1.15.0)'`; the whole matrix and this file: `nox -s ci` "
         "(or `.ci/run` on a fresh clone); this file only, from the result files: `nox -s compat`."),
        "- from Python: `cpshim.compat.cells()`, `cpshim.compat.supported(transformers=..., accelerate=...)`.",
        "",
    ]
    return "\n".join(lines)


def outputs(matrix_path: Path = MATRIX, results_dir: Path = RESULTS) -> dict[Path, str]:
    matrix = load_matrix(matrix_path)
    results = load_results(results_dir)
    data = json.dumps(build_data(matrix, results), indent=1, sort_keys=True) + "\n"
    return {COMPAT: render_md(matrix, results, load_run(results_dir)), DATA: data}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=Path, default=MATRIX)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--check", action="store_true", help="exit 1 if COMPAT.md or matrix.json is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs(args.matrix, args.results).items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    rel = ", ".join(str(p.relative_to(ROOT)) for p in stale) or "nothing"
    if args.check:
        print(f"render --check: {'stale: ' + rel if stale else 'up to date'}")
        return 1 if stale else 0
    print(f"render: wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
