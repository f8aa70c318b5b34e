"""Installed distribution versions, read cheaply from `*.dist-info` names.

`import importlib.metadata` alone costs ~50 ms; listing site-packages costs well under 1 ms, so the
metadata API is only a fallback for installs whose version is not in a directory name.
"""

from __future__ import annotations

import os
import sys
from collections import namedtuple

TYPE_CHECKING = False  # typing costs import time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any, Iterable, Mapping


_META_SUFFIXES = (".dist-info", ".egg-info")


def normalize(name: str) -> str:
    """PEP 503 normalisation, so `ring_flash_attn` and `ring-flash-attn` are one dist."""
    out = name.replace("_", "-").replace(".", "-")
    while "--" in out:
        out = out.replace("--", "-")
    return out.lower()


def _meta_dir(entry: str) -> tuple[str, str] | None:
    """(name, version) of `NAME-VERSION[-pyX.Y].dist-info` / `.egg-info`, else None (string methods,
    not `re`: see specs.py)."""
    suffix = next((s for s in _META_SUFFIXES if entry.endswith(s)), None)
    if suffix is None:
        return None
    parts = entry[: -len(suffix)].split("-")
    if len(parts) == 3 and parts[2][:2] == "py" and parts[2][2:3].isdigit():
        tag = parts.pop()[2:]
        if not all(c.isdigit() or c == "." for c in tag):
            return None
    if len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


class VersionInfo(namedtuple("VersionInfo", ["dist", "raw"])):
    """A distribution's raw version string (None: not installed) and its parsed form (None: invalid)."""

    __slots__ = ()

    @property
    def version(self) -> Any:
        """`packaging.version.Version`, or None when not installed or not PEP 440 (imports packaging)."""
        from packaging.version import InvalidVersion, Version

        if self.raw is None:
            return None
        try:
            return Version(self.raw)
        except InvalidVersion:
            return None


def _scan(paths: Iterable[str], wanted: set[str]) -> tuple[dict[str, str], set[str]]:
    found: dict[str, str] = {}
    modules_seen: set[str] = set()
    module_names = {d.replace("-", "_"): d for d in wanted}
    for entry in paths:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            meta = _meta_dir(name)
            if meta:
                dist = normalize(meta[0])
                if dist in wanted and dist not in found:  # first on sys.path wins, like import
                    found[dist] = meta[1]
            elif name in module_names:
                modules_seen.add(module_names[name])
    return found, modules_seen


def installed(dists: Iterable[str], paths: Iterable[str] | None = None) -> dict[str, VersionInfo]:
    """Versions of `dists` as installed on `paths` (default `sys.path`)."""
    wanted = {normalize(d) for d in dists}
    found, modules_seen = _scan(sys.path if paths is None else paths, wanted)
    for dist in sorted(modules_seen - set(found)):
        # A package directory without a version-bearing metadata dir: ask importlib.metadata.
        import importlib.metadata as md

        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return {d: VersionInfo(d, found.get(d)) for d in sorted(wanted)}


def from_strings(pins: Mapping[str, str | None], base: Mapping[str, VersionInfo]) -> dict[str, VersionInfo]:
    """`base` with some versions replaced by hypothetical ones (the CLI's `--with dist==X`)."""
    out = dict(base)
    for dist, raw in pins.items():
        out[normalize(dist)] = VersionInfo(normalize(dist), raw)
    return out
