"""The registry's range matcher agrees with packaging's PEP 440 specifiers on final releases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from cpshim.specs import InvalidRange, contains, parse

release = st.lists(st.integers(0, 12), min_size=1, max_size=4).map(lambda p: ".".join(map(str, p)))
clause = st.tuples(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), release).map("".join)
spec = st.lists(clause, min_size=1, max_size=3).map(",".join)
candidate = st.tuples(release, st.sampled_from(["", "rc1", ".dev0", ".post1", "+cpu", "a2.dev1"])).map("".join)


@settings(max_examples=500)
@given(spec=spec, raw=candidate)
def test_matches_packaging_on_the_release_of_any_version(spec, raw):
    release_of = Version(Version(raw).base_version)
    assert contains(parse(spec), release_of) == SpecifierSet(spec).contains(release_of, prereleases=True)


@pytest.mark.parametrize("bad", ["~=4.56", ">=4.*", "===5.0", ">=5.0rc1", "<5.0.post1", ">=5+local", "5.0", ">=x"])
def test_rejects_what_the_registry_does_not_allow(bad):
    with pytest.raises(InvalidRange):
        parse(bad)
