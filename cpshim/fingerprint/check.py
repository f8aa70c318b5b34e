"""A patch's fingerprint checked against the tested releases.

A patch's fingerprint (:func:`patch_fingerprint`) combines the hashes of its ``watch`` components, in
catalog order. :func:`lookup` says which tested releases (``cpshim/_data/fingerprints.json``, written by
``python compat_matrix/generate.py``) have the same fingerprint.
"""

from __future__ import annotations

from .canonical import _hash
from .components import describe
from .data import _entry, lookup, lookup_component
from .live import component_hash_live


def combine(components, hashes) -> str:
    """Fingerprint of a patch: its components (in catalog order) with their hashes, hashed together."""
    return _hash("".join(f"{c}={hashes[c]}\n" for c in components))


def patch_component_hashes(patch, *, import_missing: bool = True) -> dict[str, str]:
    """``{component: hash}`` (live) for every ``watch`` entry of `patch`, in catalog order."""
    return {c: component_hash_live(c, import_missing=import_missing) for c in patch.watch}


def patch_fingerprint(patch, *, import_missing: bool = True) -> str:
    """Combined live fingerprint of `patch`'s ``watch`` components."""
    return combine(patch.watch, patch_component_hashes(patch, import_missing=import_missing))


class FingerprintCheck:
    """Outcome of :func:`check`: the live fingerprint of one patch against the tested releases.

    ``releases``: tested releases with the same fingerprint (empty: untested code). ``unmatched``:
    components whose own hash matches no tested release. ``stale``: the shipped data was generated
    for another ``watch`` list (regenerate it). ``reason``: None when matched, else a sentence for the
    report (without the version prefix, which the caller adds).
    """

    __slots__ = ("patch_id", "fingerprint", "components", "releases", "unmatched", "stale", "reason")

    def __init__(self, patch_id, fingerprint, components, releases, unmatched, stale, reason):
        self.patch_id = patch_id
        self.fingerprint = fingerprint
        self.components = components
        self.releases = releases
        self.unmatched = unmatched
        self.stale = stale
        self.reason = reason

    @property
    def matched(self) -> bool:
        return bool(self.releases)

    def __repr__(self) -> str:
        return (f"FingerprintCheck({self.patch_id!r}, fingerprint={self.fingerprint!r}, "
                f"releases={self.releases!r}, unmatched={self.unmatched!r}, stale={self.stale!r})")


def check(patch, *, import_missing: bool = True) -> FingerprintCheck:
    """Live fingerprint of `patch` compared with the shipped data, with a reason when it matches nothing."""
    hashes = patch_component_hashes(patch, import_missing=import_missing)
    fp = combine(patch.watch, hashes)
    entry = _entry(patch.id)
    stale = tuple(entry.get("watch", ())) != tuple(patch.watch)
    releases = () if stale else lookup(patch.id, fp)
    unmatched = tuple(c for c in patch.watch if not lookup_component(patch.id, c, hashes[c]))
    reason = None
    if stale:
        reason = (f"cpshim's fingerprint data has no entry for patch {patch.id!r} with its current watch list "
                  f"(regenerate it: python compat_matrix/generate.py)")
    elif not releases:
        if unmatched:
            reason = "; ".join(f"{describe(c)} differs from every tested release" for c in unmatched)
        else:
            reason = ("each watched component matches some tested release, but their combination "
                      "matches none")
    return FingerprintCheck(patch.id, fp, hashes, releases, unmatched, stale, reason)
