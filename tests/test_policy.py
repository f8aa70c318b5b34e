"""Policies and bad input: unsupported / invalid installed versions, a missing target attribute.

Version problems use fake metadata directories placed first on sys.path (cpshim reads versions from
them; nothing is imported). The missing-attribute case uses a small package written here, because no
released transformers lacks the attribute while carrying the version that selects the patch.
"""

from __future__ import annotations

import json
import textwrap

from tests.helpers import run_python


def _site(tmp_path, *dists):
    site = tmp_path / "site"
    site.mkdir()
    for d in dists:
        (site / f"{d}.dist-info").mkdir()
    return str(site)


def _run(tmp_path, code, policy=None, dists=("transformers-4.55.4", "accelerate-1.10.1")):
    """Run `code` with fake metadata for `dists` first on sys.path (before `import cpshim`)."""
    prelude = f"import sys; sys.path.insert(0, {_site(tmp_path, *dists)!r})\n"
    return run_python(prelude + textwrap.dedent(code), env={"CPSHIM_POLICY": policy} if policy else None,
                      check=False)


def test_strict_refuses_unsupported_at_apply_naming_version_range_and_fix(tmp_path):
    proc = _run(tmp_path, """
        import cpshim
        try:
            cpshim.apply()
        except cpshim.UnsupportedVersionError as e:
            print("RAISED", e)
        print("STATES", [p.state for p in cpshim.report().needed()])
    """, policy="strict")
    assert "RAISED" in proc.stdout, proc.stdout + proc.stderr
    assert "transformers 4.55.4" in proc.stdout and "4.56.0" in proc.stdout and "pip install -U" in proc.stdout
    assert "'applied'" not in proc.stdout and "'pending-import'" not in proc.stdout


def test_warn_records_and_skips_unsupported(tmp_path):
    proc = _run(tmp_path, """
        import json, warnings, cpshim
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            rep = cpshim.apply()
        print(json.dumps({"warned": [str(x.message) for x in w if issubclass(x.category, cpshim.CpshimWarning)],
                          "rec": rep["trainer-cp-inputs"].to_dict(), "code": rep.exit_code()}))
    """)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rec"]["support"] == "unsupported" and out["rec"]["state"] == "failed"
    assert any("4.56.0" in m for m in out["warned"]) and out["code"] == 1


def test_off_applies_nothing(tmp_path):
    proc = _run(tmp_path, """
        import cpshim
        print("STATES", sorted({p.state for p in cpshim.apply().needed()}))
    """, policy="off", dists=("transformers-5.24.0", "accelerate-1.15.0"))
    assert "STATES ['disabled']" in proc.stdout, proc.stdout + proc.stderr


def test_invalid_installed_version_is_a_record_not_a_traceback(tmp_path):
    proc = _run(tmp_path, """
        import cpshim
        r = cpshim.report()["trainer-cp-inputs"]
        print("REC", r.support, r.reason)
        try:
            cpshim.apply(policy="strict")
        except cpshim.UnsupportedVersionError as e:
            print("RAISED", e)
    """, dists=("transformers-banana", "accelerate-1.15.0"))
    assert "REC unsupported" in proc.stdout and "'banana'" in proc.stdout and "RAISED" in proc.stdout
    assert "pip install --force-reinstall transformers" in proc.stdout
    assert "Traceback" not in proc.stderr


FAKE = '''
class Thing:
    def present(self):
        return "upstream"
'''

MISSING_ATTR = """
import sys, warnings
sys.path.insert(0, {pkg!r})
import cpshim
from cpshim import lifecycle
from cpshim.registry import Patch, Registry, Variant
impl = "cpshim.patches.accelerate_prepare_cp:no_op_context"
v = Variant("v", {{"fakepkg": ">=1"}}, {{"fakepkg": "1.0"}}, impl)
reg = Registry((Patch("p-present", "fakepkg.mod:Thing.present", "fakepkg", "1.0", (v,), group="g"),
                Patch("p-missing", "fakepkg.mod:Thing.missing", "fakepkg", "1.0", (v,), group="g")))
lifecycle.init(reg, paths=[{site!r}])
warnings.simplefilter("ignore")
cpshim.apply(policy={policy!r})
import fakepkg.mod                           # the import itself never fails
print("IMPORTED", [(p.id, p.state) for p in cpshim.report().patches])
try:
    print("CALL", fakepkg.mod.Thing().present())
except cpshim.UnsupportedVersionError as e:
    print("RAISED", e)
"""


def _fake_package(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "fakepkg").mkdir(parents=True)
    (pkg / "fakepkg" / "__init__.py").write_text("")
    (pkg / "fakepkg" / "mod.py").write_text(FAKE)
    site = tmp_path / "fsite"
    (site / "fakepkg-1.0.dist-info").mkdir(parents=True)
    return str(pkg), str(site)


def test_missing_attribute_fails_the_group_and_never_breaks_import(tmp_path):
    pkg, site = _fake_package(tmp_path)
    warn = run_python(MISSING_ATTR.format(pkg=pkg, site=site, policy="warn"))
    assert "('p-missing', 'failed')" in warn.stdout and "('p-present', 'failed')" in warn.stdout
    assert "CALL upstream" in warn.stdout  # the group is inactive: upstream runs
    strict = run_python(MISSING_ATTR.format(pkg=pkg, site=site, policy="strict"))
    assert "IMPORTED" in strict.stdout and "RAISED" in strict.stdout, strict.stdout
    assert "does not exist in the installed version" in strict.stdout
