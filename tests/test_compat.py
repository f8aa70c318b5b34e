"""The version matrix against the registry, the shipped matrix data, cpshim.compat, the pytest plugin.

The matrix's expectations (compat_matrix/matrix.toml) are written by hand; these tests check that
cpshim's selection agrees with them, that every registered ceiling is tested by some cell, that cells
are valid pairs covering every behaviour boundary, and (with the fingerprint data) that every
fingerprint group of every patch has a cell running the full suite.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
from packaging.version import Version

import cpshim
import cpshim.compat
from cpshim.patches.catalog import ACCELERATE_CEILING, REGISTRY, TRANSFORMERS_CEILING, TRL_CEILING
from cpshim.patches.mixer_catalog import MIXER_PATCHES
from cpshim.patches.torch_uses import TORCH_CEILING
from cpshim.registry import PATCH, USES
from tests.helpers import ROOT, run_python

_spec = importlib.util.spec_from_file_location("cpshim_compat_render", ROOT / "compat_matrix" / "render.py")
render = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(render)  # type: ignore[union-attr]

MATRIX = render.load_matrix()
CELLS = MATRIX["cells"]
IDS = [c["id"] for c in CELLS]

# The behaviour boundaries the matrix must hit (issue 4; upstream-versions.md Tables A-E).
BOUNDARY_TRANSFORMERS = {"4.56.2", "4.57.6", "5.0.0", "5.1.0", "5.3.0", "5.4.0", "5.15.1", "5.19.0", "5.23.0",
                         "5.24.0", "5.25.0"}
BOUNDARY_ACCELERATE = {"1.10.1", "1.11.0", "1.12.0", "1.13.0", "1.14.0", "1.15.0", "1.16.0"}


def _valid_pair(transformers: str, accelerate: str) -> tuple[bool, str]:
    """Written from upstream's own checks (Trainer's ImportError), not from cpshim's selection."""
    t, a = Version(transformers), Version(accelerate)
    if t >= Version("5"):
        return a >= Version("1.12.0"), "transformers 5.x needs accelerate >= 1.12.0 for parallelism_config"
    if Version("4.56") <= t < Version("5"):
        return a >= Version("1.10.1"), "transformers 4.56-4.57 need accelerate >= 1.10.1"
    return False, "cpshim's targets exist from transformers 4.56.0"


# ------------------------------------------------------------------------------------ the matrix

@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_cell_is_a_valid_pair(cell):
    ok, rule = _valid_pair(cell["transformers"], cell["accelerate"])
    assert ok, f"{cell['id']}: {rule}"


def test_every_behaviour_boundary_has_a_cell():
    ts = {c["transformers"] for c in CELLS}
    accs = {c["accelerate"] for c in CELLS}
    assert BOUNDARY_TRANSFORMERS <= ts, f"no cell for transformers {sorted(BOUNDARY_TRANSFORMERS - ts, key=Version)}"
    assert any(t.startswith("5.16.") or t == "5.18.0" for t in ts), "no cell for 5.16.x or 5.18.0"
    assert BOUNDARY_ACCELERATE <= accs, f"no cell for accelerate {sorted(BOUNDARY_ACCELERATE - accs, key=Version)}"
    assert any(c["accelerate"] == "1.12.0" and c["transformers"].startswith("5.") for c in CELLS), \
        "accelerate 1.12.0 must be tested with a transformers 5.x"


def test_python_is_one_value_and_torch_varies_only_in_torch_cells():
    assert MATRIX["python"] == "3.11" and MATRIX["torch"] == "2.13.0"
    assert {c["python"] for c in CELLS} == {"3.11"}
    others = [c for c in CELLS if c["torch"] != MATRIX["torch"]]
    assert all(c["suite"] == "torch" and c["id"].endswith("-torch" + c["torch"]) for c in others)
    assert all(c["torch"] == MATRIX["torch"] for c in CELLS if c["suite"] != "torch")


def test_torch_cells_reach_the_oldest_admitted_and_the_newest_torch():
    """transformers 4.56-4.57 admit torch >= 2.2, 5.x torch >= 2.6 (their wheels' Requires-Dist)."""
    torches = {(c["transformers"][0], c["torch"]) for c in CELLS}
    assert ("4", "2.2.2") in torches and ("5", "2.6.0") in torches
    newest = max((Version(c["torch"]) for c in CELLS))
    assert str(newest) == TORCH_CEILING, "the newest torch the registry claims must be a cell"


def test_the_newest_trl_runs_on_the_oldest_and_newest_transformers_and_some_cells_have_no_trl():
    """TRL 1.16 admits transformers >= 4.56.2 (its wheel's Requires-Dist): full cells on both ends; cells
    without TRL prove that nothing changes when it is missing."""
    with_newest = {c["transformers"] for c in CELLS if c["trl"] == TRL_CEILING and c["suite"] == "full"}
    assert {"4.56.2", TRANSFORMERS_CEILING} <= with_newest, with_newest
    assert any(c["trl"] is None and c["suite"] == "full" for c in CELLS)


def test_every_catalog_patch_has_an_expectation_in_every_cell():
    missing = {c["id"]: sorted({p.id for p in REGISTRY} - set(c["expect"])) for c in CELLS}
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, ("cells without an expectation for a registered patch (add one "
                         f"`patch-id = \"variant\"` line per cell in compat_matrix/matrix.toml): {missing}")


def test_expectations_name_registered_patches_and_variants():
    known = {p.id: {v.name for v in p.variants} | {render.NONE} for p in REGISTRY}
    bad = [f"{c['id']}: {pid} = {var!r}" for c in CELLS for pid, var in c["expect"].items()
           if pid not in known or var not in known[pid]]
    assert not bad, f"expectations naming unknown patches or variants: {bad}"


@pytest.mark.parametrize("cell", CELLS, ids=IDS)
def test_selection_picks_the_expected_variant(cell):
    rep = cpshim.report(versions={"transformers": cell["transformers"], "accelerate": cell["accelerate"],
                                  "torch": cell["torch"], **{d: cell[d] for d in render.OPTIONAL_DISTS}})
    wrong = []
    for rec in rep.patches:
        expected = cell["expect"].get(rec.id)
        if expected is None:
            continue  # reported by test_every_catalog_patch_has_an_expectation_in_every_cell
        got = rec.variant or render.NONE
        if got != expected:
            wrong.append(f"{rec.id}: selection picks {got}, the matrix expects {expected} ({rec.reason})")
        elif rec.id in cell["refuses"] and rec.support != "unsupported":
            wrong.append(f"{rec.id}: the matrix expects a refusal here, selection says {rec.support}")
        elif expected != render.NONE and rec.support != "supported":
            wrong.append(f"{rec.id}: {rec.support} on a tested cell: {rec.reason}")
    assert not wrong, f"{cell['id']}:\n  " + "\n  ".join(wrong)


def test_every_registered_ceiling_is_tested_by_a_cell():
    """A ceiling (newest release a variant claims as tested) above every cell expecting it fails."""
    untested = []
    for patch in REGISTRY:
        for variant in patch.variants:
            cells = [c for c in CELLS if c["expect"].get(patch.id) == variant.name]
            for dist, ceiling in variant.ceiling.items():
                tested = [Version(c[dist]) for c in cells if c.get(dist)]
                if not tested or Version(ceiling) > max(tested):
                    untested.append(f"{patch.id}/{variant.name}: {dist} ceiling {ceiling}, newest cell "
                                    f"{max(tested) if tested else 'none'}")
    for dist, ceiling in (("transformers", TRANSFORMERS_CEILING), ("accelerate", ACCELERATE_CEILING)):
        if Version(ceiling) > max(Version(c[dist]) for c in CELLS):
            untested.append(f"{dist} ceiling {ceiling} is above every cell")
    assert not untested, "ceilings the matrix does not test:\n  " + "\n  ".join(untested)


# ------------------------------------------------------------------------ fingerprint groups

def _fingerprint_groups() -> dict[str, dict[str, list[str]]]:
    from cpshim import fingerprint

    data = fingerprint.load_data()
    out = {}
    for patch in REGISTRY:
        entry = data.get("patches", {}).get(patch.id)
        if entry and tuple(entry.get("watch", ())) == tuple(patch.watch):
            out[patch.id] = {fp: [r if isinstance(r, str) else r.get("version") for r in rels]
                             for fp, rels in entry.get("fingerprints", {}).items()}
    return out


def _yanked() -> set[tuple[str, str]]:
    """(dist, version) of yanked releases, from the shipped release lists (empty when absent)."""
    try:
        data = json.loads((ROOT / "cpshim" / "_data" / "releases.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {(dist, str(row["version"])) for dist, rows in data.get("dists", {}).items() for row in rows
            if isinstance(row, dict) and row.get("yanked")}


def _needed(patch, release: str) -> bool:
    return cpshim.report(versions={patch.dist: release})[patch.id].state != "not-needed"


def test_every_fingerprint_group_has_a_full_cell():
    groups = _fingerprint_groups()
    if not groups:
        pytest.skip("no fingerprint data for the current watch lists (python compat_matrix/generate.py)")
    yanked = _yanked()
    problems = []
    for patch in REGISTRY:
        if patch.id not in groups:
            problems.append(f"{patch.id}: no fingerprint data for its current watch list")
            continue
        lo = min(Version(c[patch.dist]) for c in CELLS if c.get(patch.dist))
        if patch.kind != PATCH:
            proving: tuple = ("full", "torch")  # torch cells run the multi-rank tests
        elif patch.dist == "trl":
            proving = ("full", "trl")  # trl cells run TRL's parity suites
        elif patch in MIXER_PATCHES:
            proving = ("full", "mixers")  # mixers cells run the mixers' parity (tests/parity/test_mixer_parity.py)
        else:
            proving = ("full",)
        for fp, releases in groups[patch.id].items():
            usable = [r for r in releases if not Version(r).is_prerelease and (patch.dist, r) not in yanked
                      and Version(r) >= lo and _needed(patch, r)]
            if not usable:
                continue  # only pre-releases, yanked releases, releases below the tested floor or
                # releases on which the patch is not needed (fixed upstream: its code is never patched)
            label = f"{patch.id} group {fp[:8]} ({patch.dist} {usable[0]}..{usable[-1]})"
            if patch.dist == "torch" and all(_torch_refused(r) for r in usable):
                # cpshim refuses these torch releases by their version alone: a cell must prove the refusal
                if not any(c["refuses"] and _torch_refused(c["torch"]) for c in CELLS):
                    problems.append(f"{label}: refused, and no cell proves a torch refusal")
                continue
            cells = [c for c in CELLS if c.get(patch.dist) in releases]
            if not cells:
                problems.append(f"{label}: no cell")
            elif not any(c["suite"] in proving for c in cells):
                problems.append(f"{label}: no {' or '.join(proving)} cell (cells: {[c['id'] for c in cells]})")
    assert not problems, "fingerprint groups the matrix does not cover:\n  " + "\n  ".join(problems)


def _torch_refused(release: str) -> bool:
    """Whether some `uses` entry is unsupported on this torch (cpshim refuses it by version)."""
    rep = cpshim.report(versions={"torch": release})
    return any(p.kind == USES and p.support == "unsupported" for p in rep.patches)


def test_cells_in_one_fingerprint_group_expect_one_variant():
    groups = _fingerprint_groups()
    if not groups:
        pytest.skip("no fingerprint data for the current watch lists (python compat_matrix/generate.py)")
    split = []
    for pid, by_fp in groups.items():
        dist = REGISTRY[pid].dist
        for fp, releases in by_fp.items():
            variants = {c["expect"].get(pid) for c in CELLS if c[dist] in releases}
            if len(variants) > 1:
                split.append(f"{pid} group {fp[:8]}: {sorted(map(str, variants))}")
    assert not split, f"one upstream code, several expected variants: {split}"


# ------------------------------------------------------------------ generated and shipped data

def test_shipped_matrix_json_matches_matrix_toml():
    shipped = json.loads((ROOT / "cpshim" / "_data" / "matrix.json").read_text(encoding="utf-8"))
    static = [{k: c[k] for k in render.STATIC_KEYS} for c in shipped["cells"]]
    assert static == [{k: c[k] for k in render.STATIC_KEYS} for c in CELLS], \
        "cpshim/_data/matrix.json is stale: run `python compat_matrix/render.py` (or `nox -s compat`)"
    assert (shipped["python"], shipped["torch"]) == (MATRIX["python"], MATRIX["torch"])


@pytest.mark.skipif(bool(os.environ.get("CPSHIM_IN_NOX")),
                    reason="inside a nox run the result files change; `nox -s ci` renders at its end")
def test_compat_md_is_generated_from_the_result_files():
    assert render.main(["--check"]) == 0, "COMPAT.md or matrix.json is stale: run `nox -s compat`"
    assert (ROOT / "compat_matrix" / "COMPAT.md").read_text(encoding="utf-8").startswith("<!-- GENERATED")


def _result(c, **over):
    base = {
        "kind": "cell", "cell": c["id"], "suite": c["suite"], "run": {"id": "R1", "commit": "abc"},
        "versions": {"transformers": c["transformers"], "accelerate": c["accelerate"], "torch": c["torch"],
                     "trl": c["trl"]},
        "patches": {pid: {"variant": None if v == render.NONE else v, "support": "supported", "needed": True,
                          "reason": "ok", "fingerprint": {"matches": ["x"], "unmatched": []}}
                    for pid, v in c["expect"].items()},
        "fingerprint_data": True,
        "pytest": {"exit": 0, "counts": {"passed": 3}, "passed": ["a", "b", "c"], "failed": [], "skipped": []},
        "timing": {"total_s": 61.0},
    }
    base.update(over)
    return base


def test_render_judges_each_way_a_cell_can_fail(tmp_path):
    c0, c1, c2, c3, c4 = CELLS[:5]
    results = {
        c0["id"]: _result(c0),
        c1["id"]: _result(c1, pytest={"exit": 1, "counts": {"passed": 1, "failed": 1}, "passed": ["a"],
                                      "failed": [{"id": "tests/x.py::test_y", "outcome": "failed",
                                                  "message": "AssertionError: boom"}], "skipped": []}),
        c2["id"]: _result(c2, patches={**_result(c2)["patches"],
                                       "trainer-cp-inputs": {"variant": "other", "support": "supported"}}),
        c3["id"]: _result(c3, pytest={"exit": 5, "counts": {}, "passed": [], "failed": [], "skipped": []}),
        "latest": {**_result(c4, kind="latest", cell=None),
                   "versions": {"transformers": "9.0.0", "accelerate": "9.0.0"},
                   "patches": {"trainer-cp-inputs": {"variant": "no-op", "support": "untested", "needed": True,
                                                     "reason": "transformers 9.0.0 is newer than 5.24.0"}}},
    }
    assert render.judge(results[c0["id"]], c0)[0] == "passed"
    status, notes = render.judge(results[c1["id"]], c1)
    assert status == "failed" and any("tests/x.py::test_y" in n and "boom" in n for n in notes)
    status, notes = render.judge(results[c2["id"]], c2)
    assert status == "failed" and any("selected other" in n for n in notes)
    status, notes = render.judge(results[c3["id"]], c3)
    assert status == "failed" and any("exit 5" in n for n in notes)
    assert render.judge(None, c4) == ("not-run", [])
    status, notes = render.judge(results["latest"], None)
    assert status == "untested" and any("newer than" in n for n in notes)
    unmatched = _result(c0)
    unmatched["patches"]["trainer-cp-inputs"]["fingerprint"] = {"matches": [], "reason": "differs"}
    assert render.judge(unmatched, c0)[0] == "untested"
    assert render.judge({"install": {"ok": False, "error": "no wheel"}}, c0)[0] == "failed"
    other_trl = _result(c0)  # a cell's TRL (or its absence) is part of what the cell tests
    other_trl["versions"]["trl"] = None if c0["trl"] else "1.16.0"
    status, notes = render.judge(other_trl, c0)
    assert status == "failed" and any(n.startswith("installed trl") for n in notes), notes
    skipped_only = _result(c0, pytest={"exit": 0, "counts": {"skipped": 4}, "passed": [], "failed": [],
                                       "skipped": []})
    assert render.judge(skipped_only, c0) == ("failed", ["no test passed (every test was skipped): "
                                                         "the run verified nothing"])

    for key, data in results.items():
        (tmp_path / f"{key}.json").write_text(json.dumps(data), encoding="utf-8")
    (tmp_path / "_run.json").write_text(json.dumps({"run": {"id": "R1"}, "wall_s": 1200, "jobs": 2,
                                                    "sessions": ["unit", "a", "b"]}), encoding="utf-8")
    loaded = render.load_results(tmp_path)
    assert "_run" not in loaded
    md = render.render_md(MATRIX, loaded, render.load_run(tmp_path))
    assert md.startswith("<!-- GENERATED") and "run `R1`" in md
    assert "Wall time of `nox -s ci` for this run: 20m00s (3 sessions, unit included, 2 at a time" in md
    assert "**FAILED**" in md and "tests/x.py::test_y" in md and "not run" in md
    assert "| 9.0.0 | 9.0.0 | - | untested |" in md
    data = render.build_data(MATRIX, loaded)
    assert [c["result"]["status"] if c["result"] else None for c in data["cells"][:5]] == \
        ["passed", "failed", "failed", "failed", None]
    assert data["latest"][0]["status"] == "untested"


# ------------------------------------------------------------------------------ cpshim.compat

def test_compat_cells_are_the_matrix():
    cells = cpshim.compat.cells()
    assert [c.id for c in cells] == IDS
    assert all(dict(c.expect) == m["expect"] for c, m in zip(cells, CELLS))
    assert cells[0].requirements() == [f"transformers=={CELLS[0]['transformers']}",
                                       f"accelerate=={CELLS[0]['accelerate']}", f"trl=={CELLS[0]['trl']}"]
    without = next(c for c in cells if c.trl is None)
    assert without.requirements() == [f"transformers=={without.transformers}", f"accelerate=={without.accelerate}"]
    assert set(cpshim.compat.cells(passed_only=True)) <= set(cells)


@pytest.mark.parametrize("cell", [next(c for c in CELLS if c["torch"] == MATRIX["torch"] and c["suite"] == "full"),
                                  next(c for c in CELLS if c["torch"] != MATRIX["torch"] and not c["refuses"])],
                         ids=["default-torch", "torch-cell"])
def test_compat_supported_for_a_tested_cell(cell):
    torch = None if cell["torch"] == MATRIX["torch"] else cell["torch"]
    answer = cpshim.compat.supported(transformers=cell["transformers"], accelerate=cell["accelerate"], torch=torch)
    assert answer.tested and answer.cell.id == cell["id"] and answer.support == "supported"
    assert {k: v or render.NONE for k, v in answer.variants.items()} == cell["expect"]
    assert answer.verdict == ("tested" if answer.cell.passed else "tested-failing")


def test_compat_supported_names_the_torch_refusal():
    cell = next(c for c in CELLS if c["refuses"])
    answer = cpshim.compat.supported(transformers=cell["transformers"], accelerate=cell["accelerate"],
                                     torch=cell["torch"])
    assert answer.cell is not None and answer.cell.id == cell["id"] and answer.support == "unsupported"
    assert any(r.startswith(tuple(cell["refuses"])) and "torch>=2.6" in r for r in answer.reasons), answer.reasons


def test_compat_supported_outside_the_cells():
    inside = cpshim.compat.supported(transformers="5.10.4", accelerate="1.13.0")
    assert not inside.tested and inside.support == "supported" and inside.verdict in ("same-code", "in-range")
    assert inside.variants["trainer-cp-inputs"] == "no-op"
    bad_pair = cpshim.compat.supported(transformers="5.0.0", accelerate="1.11.0")
    assert bad_pair.verdict == "unsupported" and not bad_pair
    assert any("accelerate" in r for r in bad_pair.reasons)
    newer = cpshim.compat.supported(transformers="5.99.0", accelerate="1.15.0")
    assert newer.verdict == "untested" and not newer.ok
    garbage = cpshim.compat.supported(transformers="not-a-version", accelerate="1.15.0")
    assert garbage.verdict == "unsupported"


def test_compat_imports_no_upstream_library():
    proc = run_python("""
        import json, sys
        import cpshim.compat as c
        c.cells()
        c.supported(transformers="5.10.4", accelerate="1.13.0")
        c.supported(transformers="4.56.2", accelerate="1.10.1")
        print(json.dumps([m for m in ("torch", "transformers", "accelerate") if m in sys.modules]))
    """)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


# ------------------------------------------------------------------------------ pytest plugin

def test_header_line_names_versions_and_variants():
    from cpshim import pytest_plugin

    line = pytest_plugin.header_line()
    assert "\n" not in line and line.startswith(f"cpshim {cpshim.__version__}:")
    rep = cpshim.report()
    for d in ("transformers", "accelerate", "torch"):
        assert f"{d} {rep.versions.get(d) or '-'}" in line
    for rec in rep.patches:
        if rec.state != "not-needed":
            assert f"{rec.id}={rec.variant or 'none'}" in line


def test_plugin_is_registered_as_entry_point(pytestconfig):
    import importlib.metadata as md

    names = {ep.name: ep.value for ep in md.entry_points(group="pytest11")}
    if "cpshim" not in names:
        pytest.skip("cpshim is not installed as a distribution here (pip install -e .)")
    assert names["cpshim"] == "cpshim.pytest_plugin"
    if not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        assert pytestconfig.pluginmanager.has_plugin("cpshim")


def test_plugin_writes_a_cell_result(tmp_path):
    (tmp_path / "test_sample.py").write_text(textwrap.dedent("""
        import pytest
        def test_ok(): pass
        def test_bad(): assert 1 == 2, "one is not two"
        @pytest.mark.skip(reason="not here")
        def test_skipped(): pass
    """), encoding="utf-8")
    out = tmp_path / "res" / "cell.json"
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "CPSHIM_RESULT_FINGERPRINTS": "0",
           "CPSHIM_RUN_ID": "RUN-X", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                 os.environ.get("PYTHONPATH")]))}
    for key in ("CPSHIM_RESULT", "CPSHIM_CELL", "CPSHIM_SUITE", "CPSHIM_KIND"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "cpshim.pytest_plugin", "-q", "-p",
                           "no:cacheprovider", f"--cpshim-result={out}", "--cpshim-cell=t0-a0", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["cell"] == "t0-a0" and data["run"]["id"] == "RUN-X"
    assert data["pytest"]["exit"] == 1 and data["pytest"]["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert [f["id"].split("::")[-1] for f in data["pytest"]["failed"]] == ["test_bad"]
    assert "one is not two" in data["pytest"]["failed"][0]["message"]
    assert set(data["patches"]) == {p.id for p in REGISTRY}
    assert "transformers" in data["versions"] and "cpshim" in data["versions"]


# --------------------------------------------------------------- the installed pair, for real

@pytest.mark.upstream
def test_installed_pair_selects_the_expected_variants_and_known_code(upstream_installed):
    from cpshim import fingerprint
    from cpshim.registry import select
    from cpshim.versions import installed

    versions = installed(REGISTRY.dists())
    raw = {d: v.raw for d, v in versions.items()}
    cell = render.cell_of(MATRIX, raw)
    if cell is None:
        pytest.skip(f"transformers {raw['transformers']} + accelerate {raw['accelerate']} + torch {raw['torch']} "
                    "is not a matrix cell")
    problems = []
    have_data = bool(fingerprint.load_data())
    for patch in REGISTRY:
        sel = select(patch, versions)
        got = sel.variant.name if sel.variant else render.NONE
        expected = cell["expect"].get(patch.id, "(no expectation in matrix.toml)")
        if got != expected:
            problems.append(f"{patch.id}: selected {got}, expected {expected}")
        if have_data and sel.needed:
            chk = fingerprint.check(patch)
            if not chk.matched:
                problems.append(f"{patch.id}: live upstream code matches no tested release: {chk.reason}")
    assert not problems, f"{cell['id']}:\n  " + "\n  ".join(problems)
