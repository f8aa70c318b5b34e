"""Reading installed versions from metadata directory names (no upstream library needed)."""

from __future__ import annotations

import re
import string

from hypothesis import given, settings, strategies as st
from packaging.version import InvalidVersion, Version

from cpshim.versions import VersionInfo, _meta_dir, from_strings, installed, normalize


def _site(tmp_path, *names):
    d = tmp_path / f"site{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    for n in names:
        (d / n).mkdir()
    return str(d)


def test_dist_info_names_are_read(tmp_path):
    site = _site(tmp_path, "transformers-5.24.0.dist-info", "ring_flash_attn-0.1.8.dist-info",
                 "torch-2.13.0+cpu.dist-info", "accelerate-1.15.0-py3.11.egg-info")
    got = installed(["transformers", "ring-flash-attn", "torch", "accelerate", "packaging"], [site])
    assert {d: i.raw for d, i in got.items()} == {
        "transformers": "5.24.0", "ring-flash-attn": "0.1.8", "torch": "2.13.0+cpu",
        "accelerate": "1.15.0", "packaging": None,
    }


def test_first_path_entry_wins_like_import(tmp_path):
    first = _site(tmp_path, "transformers-4.56.2.dist-info")
    second = _site(tmp_path, "transformers-5.24.0.dist-info")
    assert installed(["transformers"], [first, second])["transformers"].raw == "4.56.2"


def test_missing_and_unreadable_paths_are_skipped(tmp_path):
    assert installed(["transformers"], [str(tmp_path / "nope"), ""])["transformers"].raw is None


def test_invalid_version_is_kept_raw_and_unparsed(tmp_path):
    site = _site(tmp_path, "transformers-banana.dist-info")
    info = installed(["transformers"], [site])["transformers"]
    assert info.raw == "banana" and info.version is None


def test_from_strings_overrides_only_named_dists():
    base = {"transformers": VersionInfo("transformers", "4.56.2"), "accelerate": VersionInfo("accelerate", "1.10.1")}
    out = from_strings({"Transformers": "5.10.4"}, base)
    assert out["transformers"].raw == "5.10.4" and out["accelerate"].raw == "1.10.1"


@given(st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=20))
def test_normalize_is_idempotent_and_separator_blind(name):
    n = normalize(name)
    assert normalize(n) == n
    assert normalize(name.replace("_", "-")) == n
    assert n == re.sub(r"[-_.]+", "-", name).lower()  # PEP 503's own definition


# The metadata directory grammar, written as the regular expression the string parser replaces.
META_DIR = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+?)(?:-py\d[\d.]*)?\.(?:dist-info|egg-info)$")
meta_piece = st.text(alphabet="ab1.-_+py", max_size=8)
meta_name = st.one_of(
    st.builds(lambda *p: "".join(p), meta_piece, st.sampled_from(["-", ""]), meta_piece,
              st.sampled_from(["", "-py3", "-py3.11", "-py3.x", "-pyx", "-py"]),
              st.sampled_from([".dist-info", ".egg-info", ".dist-infox", "", ".egg"])),
    st.text(max_size=20))


@settings(max_examples=500)
@given(meta_name)
def test_metadata_dir_names_parse_like_the_grammar(entry):
    m = META_DIR.match(entry)
    assert _meta_dir(entry) == ((m.group("name"), m.group("version")) if m else None)


@given(st.text(max_size=30))
def test_version_info_never_raises(raw):
    info = VersionInfo("x", raw)
    try:
        expected = Version(raw)
    except InvalidVersion:
        expected = None
    assert info.version == expected
