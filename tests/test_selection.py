"""Selection over generated versions: total, unique, and the written version policy."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from packaging.version import Version

from cpshim.errors import RegistrationError
from cpshim.patches.catalog import REGISTRY
from cpshim.registry import SUPPORTED, UNSUPPORTED, UNTESTED, USES, Patch, Registry, Variant, select
from cpshim.versions import VersionInfo

releases = st.tuples(st.integers(0, 7), st.integers(0, 70), st.integers(0, 12)).map(lambda t: ".".join(map(str, t)))
suffixes = st.sampled_from(["", "", "a1", "b2", "rc0", ".dev0", ".post1", "+cpu", "+local.7", ".post2.dev3", "rc1+g1"])
valid = st.builds(lambda e, r, s: f"{e}{r}{s}", st.sampled_from(["", "", "1!"]), releases, suffixes)
invalid = st.sampled_from(["banana", "5.x", "", "v", "1..2", "latest", "5.0.0-final-final", "☃"])
version_strings = st.one_of(valid, invalid, st.none())


def _versions(**raw):
    return {d: VersionInfo(d, v) for d, v in raw.items()}


@settings(max_examples=300)
@given(t=version_strings, a=version_strings, torch=version_strings, trl=version_strings)
def test_selection_is_total_and_unique(t, a, torch, trl):
    versions = _versions(transformers=t, accelerate=a, torch=torch, trl=trl)
    for patch in REGISTRY:
        sel = select(patch, versions)  # overlapping variants would raise RegistrationError here
        assert sel.support in (SUPPORTED, UNTESTED, UNSUPPORTED)
        assert sel.reason
        if sel.variant is None and sel.needed:
            assert sel.support == UNSUPPORTED
        own = versions[patch.dist]
        if own.raw is not None and own.version is None:
            assert sel.support == UNSUPPORTED and repr(own.raw) in sel.reason


@settings(max_examples=200)
@given(t=valid, a=valid)
def test_above_ceiling_or_prerelease_is_never_supported(t, a):
    versions = _versions(transformers=t, accelerate=a)
    for patch in REGISTRY:
        sel = select(patch, versions)
        if sel.variant is None:
            continue
        for dist, ceiling in sel.variant.ceiling.items():
            v = Version(versions[dist].raw)
            if v.is_prerelease or Version(v.base_version) > Version(ceiling):
                assert sel.support == UNTESTED, (patch.id, t, a, sel.reason)


POLICY_TABLE = [
    # transformers, accelerate, expected variant of trainer-cp-inputs, support
    ("4.56.2", "1.10.1", "guard-relax", SUPPORTED),
    ("4.57.6", "1.15.0", "guard-relax", SUPPORTED),
    ("4.57.1.post1", "1.11.0", "guard-relax", SUPPORTED),      # post: counts as its release
    ("5.24.0+cu121", "1.15.0", "no-op", SUPPORTED),            # local label ignored
    ("5.0.0", "1.12.0", "no-op", SUPPORTED),
    ("5.0.0rc0", "1.12.0", "no-op", UNTESTED),                 # pre-release: selected by release, untested
    ("5.26.0.dev0", "1.16.0", "no-op", UNTESTED),              # main build above the ceiling
    ("5.26.0", "1.16.0", "no-op", UNTESTED),
    ("5.25.0", "1.16.0", "no-op", SUPPORTED),                  # the ceilings themselves
    ("5.25.0", "1.17.0", "no-op", UNTESTED),                   # accelerate above its ceiling
    ("6.0.0", "1.15.0", None, UNSUPPORTED),
    ("4.55.4", "1.10.1", None, UNSUPPORTED),                   # no CP hook yet
    ("5.10.4", "1.11.0", None, UNSUPPORTED),                   # invalid pair: 5.x needs accelerate >= 1.12
    ("4.56.2", "1.9.0", None, UNSUPPORTED),
    ("1!5.0.0", "1.15.0", None, UNSUPPORTED),                  # epoch 1 sorts above every release
]


@pytest.mark.parametrize("t,a,variant,support", POLICY_TABLE)
def test_version_policy_table(t, a, variant, support):
    sel = select(REGISTRY["trainer-cp-inputs"], _versions(transformers=t, accelerate=a))
    assert (sel.variant.name if sel.variant else None, sel.support) == (variant, support), sel.reason


def test_invalid_pair_names_the_upgrade():
    sel = select(REGISTRY["trainer-cp-inputs"], _versions(transformers="5.10.4", accelerate="1.11.0"))
    assert "accelerate 1.11.0" in sel.reason and "pip install 'accelerate" in sel.reason
    assert [c.dist for c in sel.conflicts] == ["accelerate"]


def test_too_old_names_the_floor():
    sel = select(REGISTRY["trainer-cp-inputs"], _versions(transformers="4.55.4", accelerate="1.10.1"))
    assert "4.56.0" in sel.reason and "pip install -U 'transformers>=4.56.0'" in sel.reason


def test_not_installed_is_not_needed():
    sel = select(REGISTRY["accelerate-prepare-cp"], _versions(accelerate=None))
    assert sel.needed is False and sel.variant is None


def _patch(*variants):
    return Patch(id="p", target="m:C.f", dist="d", floor="1.0", variants=variants)


def test_overlapping_variants_are_a_registration_error():
    patch = _patch(Variant("a", {"d": ">=1,<3"}, {"d": "2.0"}, "x:y"), Variant("b", {"d": ">=2"}, {"d": "3.0"}, "x:y"))
    assert select(patch, _versions(d="1.5")).variant.name == "a"
    with pytest.raises(RegistrationError, match="overlap"):
        select(patch, _versions(d="2.5"))


@pytest.mark.parametrize("bad", [
    dict(target="no_colon"), dict(variants=()), dict(floor="x.y"),
])
def test_registry_rejects_malformed_patches(bad):
    fields = dict(id="p", target="m:C.f", dist="d", floor="1.0",
                  variants=(Variant("a", {"d": ">=1"}, {"d": "2.0"}, "x:y"),))
    fields.update(bad)
    with pytest.raises(RegistrationError):
        Registry((Patch(**fields),))


def test_registry_rejects_duplicate_ids_and_bad_specs():
    good = _patch(Variant("a", {"d": ">=1"}, {"d": "2.0"}, "x:y"))
    with pytest.raises(RegistrationError, match="twice"):
        Registry((good, good))
    with pytest.raises(RegistrationError):
        Registry((_patch(Variant("a", {"d": ">=>1"}, {"d": "2.0"}, "x:y")),))
    with pytest.raises(RegistrationError, match="ceiling"):
        Registry((_patch(Variant("a", {"d": ">=1"}, {"e": "2.0"}, "x:y")),))


def _shipped(name):
    import json
    from importlib import resources

    return json.loads(resources.files("cpshim").joinpath(f"_data/{name}").read_text())


def _valid_pair(t: str, a: str) -> bool:
    """Written from the upstream facts, not from the registry: 5.x needs accelerate >= 1.12.0 for
    parallelism_config; 4.56-4.57 need >= 1.10.1."""
    need = Version("1.12.0") if Version(t) >= Version("5.0.0rc0") else Version("1.10.1")
    return Version(a) >= need


def test_every_released_pair_has_a_variant_or_a_reasoned_refusal():
    releases = _shipped("releases.json")["dists"]
    t_all = [r["version"] for r in releases["transformers"]]
    a_all = [r["version"] for r in releases["accelerate"]]
    assert "4.56.0" in t_all and "5.24.0" in t_all and "1.12.0" in a_all
    for t in t_all:
        for a in a_all:
            sel = select(REGISTRY["trainer-cp-inputs"], _versions(transformers=t, accelerate=a))
            if _valid_pair(t, a):
                assert sel.variant is not None, (t, a, sel.reason)
                assert sel.support == (UNTESTED if Version(t).is_prerelease else SUPPORTED), (t, a, sel.reason)
            else:
                assert sel.variant is None and sel.support == UNSUPPORTED
                assert "accelerate" in sel.reason and "pip install" in sel.reason, sel.reason


def test_variants_agree_with_fingerprint_groups():
    """Releases whose patched code is identical (one fingerprint group) always get the same variant."""
    import json
    from pathlib import Path

    full = json.loads((Path(__file__).parents[1] / "compat_matrix" / "fingerprints.json").read_text())["patches"]
    newest_accelerate = {"transformers": {"accelerate": "1.16.0"}, "accelerate": {"transformers": "5.25.0"},
                         "torch": {"transformers": "5.25.0", "accelerate": "1.16.0"},
                         "trl": {"transformers": "5.25.0", "accelerate": "1.16.0"}}
    for patch in REGISTRY:
        groups = full[patch.id]["groups"]
        assert groups, patch.id
        for group in groups:
            chosen = set()
            for release in group["releases"]:
                versions = _versions(**{patch.dist: release}, **newest_accelerate[patch.dist])
                sel = select(patch, versions)
                if patch.kind == USES and sel.support == UNSUPPORTED:
                    continue  # refused by version for another dist's reason (accelerate: no CP below torch 2.6)
                chosen.add(sel.variant.name if sel.variant else None)
            assert len(chosen) == 1 or (patch.kind == USES and not chosen), (patch.id, group["label"], chosen)
