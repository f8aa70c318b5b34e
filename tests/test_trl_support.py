"""TRL in the registry without TRL imported: selection per TRL release, and the report's trainer verdicts."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from packaging.version import Version

import cpshim
from cpshim.ring.trl_trainers import trainers
from cpshim.versions import VersionInfo
from tests.helpers import ROOT

RELEASES = [r["version"] for r in json.loads((ROOT / "cpshim" / "_data" / "releases.json").read_text())["dists"]["trl"]]


def test_trl_missing_changes_nothing():
    rep = cpshim.report(versions={"trl": None})
    assert rep["trl-sft-packing-guard"].state == "not-needed"
    assert "not installed" in rep["trl-sft-packing-guard"].reason
    assert trainers({"trl": VersionInfo("trl", None)}) is None


@given(st.sampled_from(RELEASES + ["1.17.0", "2.0.0"]))
def test_selection_and_verdicts_follow_the_guards_in_the_wheels(release):
    v = Version(release)
    rec = cpshim.report(versions={"trl": release})["trl-sft-packing-guard"]
    if v < Version("1.11.0"):  # no packing guard in SFTTrainer.__init__ before 1.11.0
        assert rec.state == "not-needed" and rec.variant is None
    elif v < Version("2"):
        assert rec.variant == "relax-when-varlen"
        assert rec.support == ("supported" if v <= Version("1.16.0") else "untested")
    else:
        assert rec.variant is None and rec.support == "unsupported"
    got = trainers({"trl": VersionInfo("trl", release)})["trainers"]
    assert got["RewardTrainer"].startswith("exact (label-less")
    assert ("untested" in got["RewardTrainer"]) == (not Version("1.5.1") <= v <= Version("1.16.0"))
    for name, floor in (("DPOTrainer", "0.29.0"), ("KTOTrainer", "1.8.0")):  # `_precompute_ref_logps` in the wheels
        assert got[name].startswith("exact (label-less")
        assert ("gathered over data-parallel ranks" in got[name]) == (Version(floor) <= v < Version("2")), got[name]
        if Version("1.4.0") <= v < Version("2"):
            assert ("untested" in got[name]) == (not Version("1.5.1") <= v <= Version("1.16.0"))
    for name in ("GRPOTrainer", "RLOOTrainer"):  # `_generate` as patched from 1.3.0; the cp guard from 1.4.0
        assert got[name].startswith("exact (generation batch") == (Version("1.3.0") <= v < Version("2")), got[name]
        if Version("1.3.0") <= v < Version("2"):
            assert ("untested" in got[name]) == (not Version("1.5.1") <= v <= Version("1.16.0"))
    assert ("DistillationTrainer" in got) == (v >= Version("1.10.0"))
    assert ("TRL's packing guard relaxed" in got["SFTTrainer"]) == (Version("1.11.0") <= v < Version("2"))
    assert ("untested" in got["SFTTrainer"]) == (not Version("1.11.0") <= v <= Version("1.16.0"))
