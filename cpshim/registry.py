"""Patches as data, and the pure function that picks one variant per patch.

Nothing here imports torch, transformers or accelerate: tools (nox, the compat generator, the CLI's
what-if mode) read the registry and evaluate selection for versions that are not installed.
"""

from __future__ import annotations

from collections import namedtuple

from .errors import DependencyConflict, RegistrationError
from .specs import InvalidRange, Key, contains, parse, parse_range, release_key
from .versions import VersionInfo

TYPE_CHECKING = False  # typing costs import time; annotations are strings here
if TYPE_CHECKING:
    from typing import Mapping

SUPPORTED, UNTESTED, UNSUPPORTED = "supported", "untested", "unsupported"


class Variant(namedtuple("Variant", ["name", "requires", "ceiling", "impl", "info"], defaults=({},))):
    """One implementation of a patch, valid for a range of upstream releases.

    `requires` maps distribution -> PEP 440 specifier; `ceiling` maps distribution -> newest release
    this variant was tested against (above it: `untested`). `impl` is `module:function`, imported only
    when the patch is applied. `info` is copied into the report (e.g. which keys the hook adds).
    """

    __slots__ = ()

    def specifiers(self) -> dict[str, tuple[tuple[str, Key], ...]]:
        return {dist: parse_range(spec) for dist, spec in self.requires.items()}


PATCH, USES = "patch", "uses"


class Patch(namedtuple("Patch", ["id", "target", "dist", "floor", "variants", "group", "watch", "summary",
                                 "follows_mode", "fixed_in", "needed_from", "refused_before", "kind", "gate"],
                       defaults=(None, (), "", True, None, None, None, PATCH, None))):
    """A patched upstream attribute: `target` is `module:Owner.attr`; `dist` ships `module`.

    `floor` is the oldest `dist` release that has the target: below it cpshim cannot help (reason
    names the upgrade). `fixed_in`: from this release on the patch is not needed; `needed_from`:
    below this release the problem it fixes does not exist (not needed either). `group`: patches
    that apply all-or-nothing. `watch` lists the upstream code whose fingerprint must match a tested
    release (`module:qualname`, or `module:qualname@name`: the statements of qualname that mention
    name). `follows_mode=False`: the wrapper runs in every mode and decides by its own state.
    `refused_before`: `(release, what ring mode does instead)`: below the release upstream has no
    target to patch (the code is inline elsewhere), so ring mode refuses the feature by name.
    `kind=USES`: nothing is patched; `target` is upstream code cpshim (or ring-flash-attn, or accelerate
    under cpshim) calls, selected, fingerprinted and reported like a patch, so that a release it was
    not tested with is `untested` and one it cannot work with is `unsupported` (torch's ops and APIs).
    `gate`: `module:attr` of a `patching.Gate` for a hot `(self, key)` target: while it is closed the
    wrapper calls upstream directly, because the implementation would pass through anyway.
    """

    __slots__ = ()

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    @property
    def attr_path(self) -> tuple[str, ...]:
        return tuple(self.target.partition(":")[2].split("."))


class Selection(namedtuple("Selection", ["patch", "variant", "support", "reason", "needed", "conflicts"],
                           defaults=(True, ()))):
    """The outcome of selection for one patch: a variant or None, always with support and a reason."""

    __slots__ = ()


def _release(info: VersionInfo) -> Key | None:
    parsed = parse(info.raw) if info.raw is not None else None
    return parsed[0] if parsed else None


def _conflicts(variant: Variant, versions: Mapping[str, VersionInfo]) -> list[DependencyConflict]:
    """Unmet requirements; pre/dev/post/local builds are matched by their release (README, "Version policy")."""
    out = []
    for dist, spec in variant.specifiers().items():
        info = versions.get(dist) or VersionInfo(dist, None)
        key = _release(info)
        if key is None or not contains(spec, key):
            out.append(DependencyConflict(dist, variant.requires[dist], info.raw))
    return out


def _untested_reason(variant: Variant, versions: Mapping[str, VersionInfo]) -> str | None:
    for dist, ceiling in variant.ceiling.items():
        info = versions[dist]
        parsed = parse(info.raw) if info.raw is not None else None
        assert parsed is not None
        if parsed[1]:
            return (
                f"{dist} {info.raw} is a pre-release build; variant {variant.name!r} was tested on releases "
                f"up to {ceiling}: pin {dist}=={ceiling} for a tested setup"
            )
        if parsed[0] > release_key(ceiling):
            return (
                f"{dist} {info.raw} is newer than {ceiling}, the newest release variant {variant.name!r} "
                f"was tested on: pin {dist}<={ceiling} or run `cpshim check` after upgrading cpshim"
            )
    return None


def select(patch: Patch, versions: Mapping[str, VersionInfo]) -> Selection:
    """Pick exactly one variant (or none, with a reason). Total: never raises on version input."""
    own = versions.get(patch.dist) or VersionInfo(patch.dist, None)
    if own.raw is None:
        return Selection(patch, None, SUPPORTED, f"{patch.dist} is not installed: nothing to patch", False)
    own_key = _release(own)
    if own_key is None:
        return Selection(
            patch, None, UNSUPPORTED,
            f"{patch.dist} reports version {own.raw!r}, which is not a PEP 440 version: cpshim cannot tell "
            f"which code it runs; reinstall a released {patch.dist} (pip install --force-reinstall {patch.dist})",
        )
    bad = [v for v in versions.values() if v.raw is not None and _release(v) is None]
    if patch.needed_from and own_key < release_key(patch.needed_from):
        return Selection(patch, None, SUPPORTED,
                         f"not needed: the problem it fixes appeared in {patch.dist} {patch.needed_from}", False)
    if patch.refused_before and own_key < release_key(patch.refused_before[0]):
        return Selection(patch, None, SUPPORTED,
                         f"nothing to patch below {patch.dist} {patch.refused_before[0]}: {patch.refused_before[1]}",
                         False)
    if own_key < release_key(patch.floor):
        return Selection(
            patch, None, UNSUPPORTED,
            f"{patch.dist} {own.raw} has no {patch.target.partition(':')[2]} (added in {patch.floor}): "
            f"pip install -U '{patch.dist}>={patch.floor}'",
        )
    if patch.fixed_in and own_key >= release_key(patch.fixed_in):
        return Selection(patch, None, SUPPORTED, f"not needed: fixed upstream in {patch.dist} {patch.fixed_in}", False)
    matching = [v for v in patch.variants if not _conflicts(v, versions)]
    if len(matching) > 1:
        raise RegistrationError(f"{patch.id}: variants {[v.name for v in matching]} overlap at {dict(versions)}")
    if matching:
        variant = matching[0]
        why = _untested_reason(variant, versions)
        if why:
            return Selection(patch, variant, UNTESTED, why)
        return Selection(patch, variant, SUPPORTED, f"{variant.name}: tested on this release range")
    # No variant: explain with the closest one (own dist in range first, then fewest unmet requirements).
    def distance(v: Variant) -> tuple[bool, int]:
        found = _conflicts(v, versions)
        return any(c.dist == patch.dist for c in found), len(found)

    closest = min(patch.variants, key=distance)
    conflicts = tuple(_conflicts(closest, versions))
    fixes = "; ".join(c.fix() for c in conflicts)
    invalid = "".join(f" ({b.dist} {b.raw!r} is not a PEP 440 version)" for b in bad)
    return Selection(
        patch, None, UNSUPPORTED,
        f"no variant of {patch.id} fits {', '.join(c.describe() for c in conflicts)}{invalid}: {fixes}",
        conflicts=conflicts,
    )


class Registry:
    """An ordered set of patches; registration checks what can be checked without versions."""

    def __init__(self, patches: tuple[Patch, ...] = ()) -> None:
        self._patches: dict[str, Patch] = {}
        for patch in patches:
            self.register(patch)

    def register(self, patch: Patch) -> None:
        if patch.id in self._patches:
            raise RegistrationError(f"patch id {patch.id!r} registered twice")
        if ":" not in patch.target or not patch.attr_path[-1]:
            raise RegistrationError(f"{patch.id}: target {patch.target!r} is not 'module:Owner.attr'")
        if not patch.variants:
            raise RegistrationError(f"{patch.id}: no variants")
        if patch.kind not in (PATCH, USES):
            raise RegistrationError(f"{patch.id}: kind {patch.kind!r} is not {PATCH!r} or {USES!r}")
        for variant in patch.variants:
            try:
                variant.specifiers()
                release_key(patch.floor)
                release_key(patch.fixed_in or patch.floor)
                release_key(patch.needed_from or patch.floor)
                release_key(patch.refused_before[0] if patch.refused_before else patch.floor)
                [release_key(c) for c in variant.ceiling.values()]
            except (InvalidRange, ValueError) as e:
                raise RegistrationError(f"{patch.id}/{variant.name}: {e}") from e
            if not (patch.kind == USES and variant.impl is None) and ":" not in (variant.impl or ""):
                raise RegistrationError(f"{patch.id}/{variant.name}: impl {variant.impl!r} is not 'module:attr'")
            if set(variant.ceiling) - set(variant.requires):
                raise RegistrationError(f"{patch.id}/{variant.name}: ceiling names a dist it does not require")
        self._patches[patch.id] = patch

    def __iter__(self):
        return iter(self._patches.values())

    def __getitem__(self, patch_id: str) -> Patch:
        return self._patches[patch_id]

    def dists(self) -> tuple[str, ...]:
        names = {p.dist for p in self} | {d for p in self for v in p.variants for d in v.requires}
        return tuple(sorted(names))
