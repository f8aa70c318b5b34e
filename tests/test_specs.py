"""cpshim's version keys and ranges agree with packaging's PEP 440 semantics on generated input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from cpshim.specs import InvalidRange, contains, parse, parse_range, release_key

release = st.lists(st.integers(0, 12), min_size=1, max_size=4).map(lambda p: ".".join(map(str, p)))
clause = st.tuples(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), release).map("".join)
spec = st.lists(clause, min_size=1, max_size=3).map(",".join)
suffix = st.sampled_from(["", "rc1", ".dev0", ".post1", "+cpu", "a2.dev1", "+cu121.x", "b3"])
epoch = st.sampled_from(["", "", "1!", "2!"])
candidate = st.builds(lambda e, r, s: f"{e}{r}{s}", epoch, release, suffix)
junk = st.one_of(st.text(max_size=12), st.sampled_from([
    "5.x", "1..2", "v", "latest", "+cpu", "5.0-final-x", " 5.24.0 ", "v5.24.0", "V1.0+CPU", "5.0+", "5.0+a..b",
    "5.0+a_b-c", "5.0+-a", "1.0+\u00fc", "\u0661.\u0662", "5.0\n", "\t5.0", "5 .0", "5.0 +cpu", ".5", "5.",
    "V5.0+Ab.C"]))


@settings(max_examples=500)
@given(raw=st.one_of(candidate, junk))
def test_parse_agrees_with_packaging(raw):
    try:
        v = Version(raw)
    except InvalidVersion:
        assert parse(raw) is None
        return
    key, pre = parse(raw)
    assert pre == v.is_prerelease
    other = Version(f"{v.epoch}!{'.'.join(map(str, v.release))}")
    assert key == parse(str(other))[0]


@settings(max_examples=300)
@given(a=candidate, b=candidate)
def test_keys_order_releases_like_packaging(a, b):
    ra, rb = (Version(Version(x).public).base_version for x in (a, b))
    assert (parse(a)[0] < parse(b)[0]) == (Version(ra) < Version(rb))
    assert (parse(a)[0] == parse(b)[0]) == (Version(ra) == Version(rb))


@settings(max_examples=500)
@given(spec=spec, raw=candidate)
def test_ranges_match_packaging_on_the_release_of_any_version(spec, raw):
    release_of = Version(Version(raw).base_version)
    expected = SpecifierSet(spec).contains(release_of, prereleases=True)
    assert contains(parse_range(spec), parse(raw)[0]) == expected


ws = st.sampled_from(["", " ", "  ", "\t"])
spaced_clause = st.tuples(ws, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), ws, release, ws).map("".join)
spaced_spec = st.lists(spaced_clause, min_size=1, max_size=3).map(",".join)


@settings(max_examples=300)
@given(spec=spaced_spec, raw=candidate)
def test_ranges_with_spaces_match_packaging(spec, raw):
    expected = SpecifierSet(spec).contains(Version(Version(raw).base_version), prereleases=True)
    assert contains(parse_range(spec), parse(raw)[0]) == expected


@pytest.mark.parametrize("bad", ["~=4.56", ">=4.*", "===5.0", ">=5.0rc1", "<5.0.post1", ">=5+local", "5.0", ">=x",
                                 "> =5.0", ">= 5.0 1", ">=", "", ">=5.0,", "=>5.0"])
def test_rejects_what_the_registry_does_not_allow(bad):
    with pytest.raises(InvalidRange):
        parse_range(bad)


def test_release_key_needs_a_final_release():
    assert release_key("5.24.0") == release_key("5.24") == (0, 5, 24)
    for bad in ("5.0.0rc0", "5.0.0.post1", "2.13.0+cpu", "banana"):
        with pytest.raises(InvalidRange):
            release_key(bad)
