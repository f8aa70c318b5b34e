"""cpshim.fingerprint: normalisation, the wheel path vs the live path, and the shipped data.

The upstream tests (wheel path == live path on the installed transformers/accelerate, and the live
fingerprint found in the shipped data) skip cleanly when those libraries are not installed.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from cpshim import fingerprint as fp
from cpshim.patches.catalog import REGISTRY
from tests.helpers import ROOT, run_python

WHEELS_DIR = Path(os.environ.get("CPSHIM_WHEELS_DIR", "/work/wheels-cache"))


def h(src: str, qualname: str = "f", mention: str | None = None) -> str:
    return fp.component_hash_from_source(textwrap.dedent(src), qualname, mention)


# ------------------------------------------------------------------------ normalisation

BASE = """
def f(self, model, inputs: dict = None) -> tuple:
    '''Docstring.'''
    # a comment
    if inputs["x"].dim() < 2:
        raise ValueError("bad")
    return model(inputs)
"""


def test_ignores_comments_docstrings_whitespace_formatting_annotations():
    variant = '''
def f(self,
      model,      # trailing comment
      inputs=None):
    """Another docstring,
    on two lines."""

    if inputs['x'].dim() < 2 :   raise ValueError(
        "bad"
    )
    "a bare string statement does nothing"
    return model(
        inputs,
    )
'''
    assert h(BASE) == h(variant)


def test_changed_comparison_constant_or_decorator_changes_the_hash():
    assert h(BASE) != h(BASE.replace("dim() < 2", "dim() <= 2"))
    assert h(BASE) != h(BASE.replace("< 2", "< 3"))
    assert h(BASE) != h(BASE.replace('"bad"', '"worse"'))
    assert h(BASE) != h(BASE.replace("model(inputs)", "model(inputs, 1)"))
    assert h(BASE) != h("import contextlib\n@contextlib.contextmanager" + BASE)
    assert h(BASE) != h(BASE.replace("inputs: dict = None", "inputs: dict = 0"))


def test_indentation_and_methods_hash_like_functions():
    method = "class C:\n" + textwrap.indent(BASE, "    ")
    assert fp.component_hash_from_source(method, "C.f") == h(BASE)
    # what inspect.getsource returns for a method: an indented block
    assert fp.source_hash(textwrap.indent(BASE.strip("\n"), "        ")) == h(BASE)


def test_fstring_parts_are_merged():
    assert h('def f(x):\n    return f"a{x}b" "c"\n') == h('def f(x):\n    return f"a{x}bc"\n')


def test_golden_hash_pins_the_normaliser():
    # If this fails, the normalisation changed: bump fingerprint.NORMALISER and regenerate the data.
    assert fp.NORMALISER == 1
    assert h(BASE) == "5b76d953717fa1ff"


def test_markers_for_missing_and_opaque_names():
    src = "import os\nfrom x import g\nh = lambda: 1\nclass C:\n    m = staticmethod(len)\n"
    assert h(src, "f") == fp.ABSENT
    assert h(src, "g") == fp.OPAQUE
    assert h(src, "h") == fp.OPAQUE
    assert h(src, "C.m") == fp.OPAQUE
    assert h(src, "C.missing") == fp.ABSENT
    assert h(src, "h.attr") == fp.OPAQUE
    assert fp.component_hash_from_source(None, "f") == fp.ABSENT
    assert h(BASE, "f", "not_mentioned") == fp.UNMENTIONED


def test_parse_component():
    assert fp.parse_component("a.b:C.f@name") == ("a.b", "C.f", "name")
    assert fp.parse_component("a:f") == ("a", "f", None)
    for bad in ("a", "a:", ":f", "a:C..f"):
        with pytest.raises(ValueError):
            fp.parse_component(bad)


# ------------------------------------------------------------------------ @name selection

STEP = """
def step(self, model, inputs):
    cp_context, inputs = self._prep(model, inputs)
    with cp_context():
        model.train()
        loss = self.compute_loss(model, inputs)
    return loss
"""


def test_mention_selects_call_site_and_the_with_that_uses_it():
    base = h(STEP, "step", "_prep")
    # unrelated statements (even inside the with) do not count
    assert h(STEP.replace("model.train()", "model.eval()"), "step", "_prep") == base
    assert h(STEP.replace("return loss", "return loss.detach()"), "step", "_prep") == base
    # the call itself, its arguments, and the with that uses its result do
    assert h(STEP.replace("self._prep(model, inputs)", "self._prep(inputs)"), "step", "_prep") != base
    assert h(STEP.replace("with cp_context():", "with cp_context(), other():"), "step", "_prep") != base
    # the enclosing condition counts
    guarded = STEP.replace("    cp_context, inputs = self._prep(model, inputs)\n",
                           "    if flag:\n        cp_context, inputs = self._prep(model, inputs)\n")
    assert h(guarded, "step", "_prep") != base
    assert h(guarded, "step", "_prep") != h(guarded.replace("if flag:", "if not flag:"), "step", "_prep")


def test_mention_in_header_keeps_header_not_body():
    src = "def f(self):\n    if self._prep():\n        a = 1\n    b = 2\n"
    base = h(src, "f", "_prep")
    assert h(src.replace("a = 1", "a = 3"), "f", "_prep") == base
    assert h(src.replace("self._prep()", "not self._prep()"), "f", "_prep") != base


# ------------------------------------------------------------------------ live path == source path

LIVE_MODULE = '''
import functools
import os.path


def deco(func):
    @functools.wraps(func)
    def inner(*a, **k):
        return func(*a, **k)
    return inner


def no_wraps(func):
    def inner(*a, **k):
        return func(*a, **k)
    return inner


def plain(x):
    """Doc."""
    return x + 1


@deco
def decorated(x):
    return x * 2


class Base:
    def inherited(self):
        return "base"

    def overridden(self):
        return 1


class C(Base):
    @property
    def prop(self):
        return 1

    @prop.setter
    def prop(self, value):
        pass

    @staticmethod
    def st(a):
        return a

    @classmethod
    def cm(cls, a):
        return cls, a

    @functools.cached_property
    def cached(self):
        return 3

    @functools.wraps(os.path.join)
    def wraps_foreign(self, *a):
        return a

    @no_wraps
    def wrapped_without_wraps(self):
        return 5

    def overridden(self):
        return 2

    def uses(self):
        ctx = self.prep()
        with ctx:
            return 1

    def tail_string(self):
        return """
tail at column 0
"""

    assigned = plain
    alias = staticmethod(os.path.join)

    class Inner:
        def m(self):
            return "inner"


class FromElsewhere(os.PathLike):
    pass
'''

LIVE_COMPONENTS = [
    "plain", "decorated", "deco", "C", "C.prop", "C.st", "C.cm", "C.cached", "C.wraps_foreign",
    "C.wrapped_without_wraps", "C.overridden", "C.inherited", "C.uses", "C.uses@prep", "C.uses@nothing",
    "C.tail_string", "C.assigned", "C.alias", "C.Inner.m", "C.missing", "missing", "missing.attr",
    "FromElsewhere.__fspath__", "plain.attr",
]


@pytest.fixture
def live_module(tmp_path, monkeypatch):
    name = "cpshim_fp_live_mod"
    path = tmp_path / f"{name}.py"
    path.write_text(LIVE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module(name)
    yield name, LIVE_MODULE
    sys.modules.pop(name, None)
    fp.clear_cache()


@pytest.mark.parametrize("qual", LIVE_COMPONENTS)
def test_live_path_equals_source_path(live_module, qual):
    name, src = live_module
    q, _, mention = qual.partition("@")
    want = fp.component_hash_from_source(src, q, mention or None)
    assert fp.component_hash_live(f"{name}:{qual}") == want


def test_live_path_markers(live_module):
    name, _ = live_module
    assert fp.component_hash_live(f"{name}:missing") == fp.ABSENT
    assert fp.component_hash_live(f"{name}:C.assigned") == fp.OPAQUE
    assert fp.component_hash_live(f"{name}:C.uses@nothing") == fp.UNMENTIONED
    assert fp.component_hash_live(f"{name}:FromElsewhere.__fspath__") == fp.ABSENT
    assert fp.component_hash_live("cpshim_no_such_module_xyz:f") == fp.ABSENT
    assert fp.component_hash_live("cpshim_no_such_module_xyz:f", import_missing=False) == fp.ABSENT
    assert fp.component_hash_live(f"{name}:C.wrapped_without_wraps") not in fp.MARKERS


def test_live_path_sees_the_original_through_a_wrapper(live_module):
    name, _ = live_module
    mod = sys.modules[name]
    before = fp.component_hash_live(f"{name}:C.overridden")
    original = mod.C.__dict__["overridden"]
    import functools

    @functools.wraps(original)
    def patched(self):
        return original(self)

    mod.C.overridden = patched
    try:
        fp.clear_cache()
        assert fp.component_hash_live(f"{name}:C.overridden") == before
        mod.C.overridden = lambda self: 0  # no __wrapped__: not the tested code
        assert fp.component_hash_live(f"{name}:C.overridden") == fp.OPAQUE
    finally:
        mod.C.overridden = original


def test_import_is_light():
    proc = run_python("""
        import sys
        import cpshim.fingerprint
        heavy = [m for m in ("torch", "transformers", "accelerate", "importlib.metadata", "json") if m in sys.modules]
        print(heavy)
    """)
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------ shipped data

DATA = ROOT / "cpshim" / "_data"
MATRIX = ROOT / "compat_matrix"


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_shipped_data_covers_every_catalog_patch():
    data = _json(DATA / "fingerprints.json")
    releases = _json(DATA / "releases.json")
    assert data["normaliser"] == fp.NORMALISER
    assert data["generated_by"] == releases["generated_by"] == "python compat_matrix/generate.py"
    for patch in REGISTRY:
        entry = data["patches"].get(patch.id)
        assert entry, f"{patch.id}: not in cpshim/_data/fingerprints.json: run python compat_matrix/generate.py"
        assert entry["dist"] == patch.dist
        assert tuple(entry["watch"]) == tuple(patch.watch), f"{patch.id}: watch list changed: regenerate"
        versions = [r["version"] for r in releases["dists"][patch.dist]]
        grouped = sorted(v for rels in entry["fingerprints"].values() for v in rels)
        assert grouped == sorted(versions), f"{patch.id}: every release in exactly one group"
        for comp in patch.watch:
            assert sorted(v for rels in entry["components"][comp].values() for v in rels) == sorted(versions)


def test_release_lists_are_in_range_and_mark_yanked():
    from packaging.version import Version

    full = _json(MATRIX / "releases.json")
    small = _json(DATA / "releases.json")
    for dist, bounds in full["ranges"].items():
        rows = full["dists"][dist]
        vs = [Version(r["version"]) for r in rows]
        assert vs == sorted(vs) and len(set(vs)) == len(vs)
        assert vs[0] == Version(bounds["min"]) and vs[-1] == Version(bounds["max"])
        assert [(r["version"], r["yanked"]) for r in rows] == [(r["version"], r["yanked"]) for r in small["dists"][dist]]
    tf = {r["version"]: r for r in full["dists"]["transformers"]}
    assert tf["4.57.0"]["yanked"] and tf["5.10.0"]["yanked"] and not tf["4.57.1"]["yanked"]
    assert {"5.0.0rc0", "5.0.0rc3"} <= set(tf) and not tf["5.0.0rc0"]["yanked"]


def test_matrix_and_shipped_data_agree():
    full = _json(MATRIX / "fingerprints.json")
    data = _json(DATA / "fingerprints.json")
    assert set(full["patches"]) == set(data["patches"])
    for pid, entry in full["patches"].items():
        assert {g["fingerprint"]: g["releases"] for g in entry["groups"]} == data["patches"][pid]["fingerprints"]
        for row in entry["releases"]:
            assert fp.combine(entry["watch"], row["components"]) == row["fingerprint"]


def test_documented_boundaries_of_the_core_targets():
    comps = _json(MATRIX / "fingerprints.json")["patches"]

    def labels(pid, comp):
        return [g["label"] for g in comps[pid]["component_groups"][comp]]

    assert labels("trainer-cp-inputs", "transformers.trainer:Trainer._prepare_context_parallel_inputs") == [
        "4.56.0-4.56.2", "4.57.0-4.57.6", "5.0.0rc0-5.1.0", "5.2.0-5.25.0"]
    assert labels("accelerate-prepare-cp", "accelerate.accelerator:Accelerator._prepare_cp") == [
        "1.10.0-1.11.0, 1.13.0-1.16.0", "1.12.0"]


def test_lookup_and_check_with_the_shipped_data():
    pid = "trainer-cp-inputs"
    data = _json(DATA / "fingerprints.json")["patches"][pid]
    some_fp, rels = next(iter(data["fingerprints"].items()))
    assert fp.lookup(pid, some_fp) == tuple(rels)
    assert fp.lookup(pid, "0" * 16) == ()
    assert fp.lookup("no-such-patch", some_fp) == ()
    comp = data["watch"][0]
    chash, crels = next(iter(data["components"][comp].items()))
    assert fp.lookup_component(pid, comp, chash) == tuple(crels)


def test_check_reports_stale_data_and_unmatched_components(live_module):
    name, _ = live_module

    class FakePatch:
        id = "trainer-cp-inputs"
        watch = (f"{name}:plain",)

    chk = fp.check(FakePatch)
    assert chk.stale and not chk.matched and "regenerate" in chk.reason

    saved = fp.data._DATA
    try:
        live = fp.component_hash_live(f"{name}:plain")
        fp.data._DATA = {"normaliser": fp.NORMALISER, "patches": {"p": {
            "watch": [f"{name}:plain", f"{name}:decorated"],
            "fingerprints": {}, "components": {f"{name}:plain": {live: ["1.0"]}}}}}
        FakePatch.id, FakePatch.watch = "p", (f"{name}:plain", f"{name}:decorated")
        chk = fp.check(FakePatch)
        assert not chk.stale and not chk.matched
        assert chk.unmatched == (f"{name}:decorated",)
        assert chk.reason == "decorated differs from every tested release"
        fp.data._DATA["patches"]["p"]["fingerprints"] = {chk.fingerprint: ["1.0"]}
        chk = fp.check(FakePatch)
        assert chk.matched and chk.releases == ("1.0",) and chk.reason is None
    finally:
        fp.data._DATA = saved


# ------------------------------------------------------------------------ real upstream

def _installed(dist: str):
    if importlib.util.find_spec(dist) is None:
        return None
    from importlib.metadata import version

    return version(dist)


def _module_text(module: str) -> str | None:
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).read_text(encoding="utf-8")


UPSTREAM_MODULES = {"transformers": "transformers.trainer", "accelerate": "accelerate.accelerator"}


@pytest.fixture(scope="module")
def upstream():
    """Import transformers.trainer and accelerate (as apply() sees them), or skip."""
    found = {}
    for dist, module in UPSTREAM_MODULES.items():
        ver = _installed(dist)
        if ver is None:
            continue
        try:
            importlib.import_module(module)
        except Exception as exc:  # e.g. no torch
            pytest.skip(f"cannot import {module}: {type(exc).__name__}: {exc}")
        found[dist] = ver
    if not found:
        pytest.skip("needs transformers and/or accelerate installed")
    return found


def _upstream_patches(upstream):
    return [p for p in REGISTRY if p.dist in upstream]


def test_wheel_path_equals_live_path_on_installed_releases(upstream):
    fp.clear_cache()
    checked = 0
    for patch in _upstream_patches(upstream):
        for comp in patch.watch:
            module, qualname, mention = fp.parse_component(comp)
            from_source = fp.component_hash_from_source(_module_text(module), qualname, mention)
            assert fp.component_hash_live(comp) == from_source, comp
            checked += 1
    assert checked


def test_installed_wheels_agree_with_installed_files(upstream):
    """The cached wheel of the installed release (if present) gives the same hashes as its files."""
    done = 0
    for dist, ver in upstream.items():
        whl = WHEELS_DIR / f"{dist}-{ver}-py3-none-any.whl"
        if not whl.exists():
            continue
        sys.path.insert(0, str(MATRIX))
        try:
            import wheels
        finally:
            sys.path.remove(str(MATRIX))
        with zipfile.ZipFile(whl) as zf:
            for patch in (p for p in REGISTRY if p.dist == dist):
                for comp in patch.watch:
                    module, qualname, mention = fp.parse_component(comp)
                    src = wheels.module_source(zf, module)
                    assert fp.component_hash_from_source(src, qualname, mention) == fp.component_hash_live(comp)
                    done += 1
    if not done:
        pytest.skip(f"no cached wheel of the installed releases in {WHEELS_DIR}")


def test_live_fingerprint_is_found_in_the_shipped_data(upstream):
    from packaging.version import Version

    ranges = _json(DATA / "fingerprints.json")["ranges"]
    for patch in _upstream_patches(upstream):
        ver = upstream[patch.dist]
        r = ranges[patch.dist]
        if not (Version(r["min"]) <= Version(ver) <= Version(r["max"])):
            continue
        chk = fp.check(patch)
        assert not chk.stale, chk
        assert ver in chk.releases, (patch.id, ver, chk)
        assert chk.reason is None and chk.unmatched == ()


def test_whole_modules_live_equals_source(upstream):
    """Every def and method of the main upstream modules: a broader net than the catalog."""
    fp.clear_cache()
    n = 0
    for module in ("transformers.trainer", "transformers.trainer_pt_utils", "accelerate.accelerator",
                   "accelerate.state", "accelerate.big_modeling"):
        if module not in sys.modules:
            continue
        parsed = fp.parse_source(_module_text(module))
        for st in parsed.tree.body:
            quals = []
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                quals.append(st.name)
            if isinstance(st, ast.ClassDef):
                quals += [f"{st.name}.{s.name}" for s in st.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
            for q in quals:
                assert fp.component_hash_live(f"{module}:{q}") == fp.component_hash_from_source(parsed, q), q
                n += 1
    assert n > 100
