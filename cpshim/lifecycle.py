"""apply / revert / report: the process-wide state machine over the registry's selections.

Selection happens once, at import. `apply()` installs one wrapper per target (now, or when its module
is imported); the wrapper asks this module at call time which implementation runs, so later mode or
policy changes never re-patch.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import warnings
from collections import namedtuple

from . import modes, patching
from .errors import ConfigurationError, CpshimWarning, UnsupportedVersionError
from .patches.catalog import REGISTRY
from .registry import SUPPORTED, UNSUPPORTED, UNTESTED, USES, Patch, Registry, Selection, select
from .versions import VersionInfo, from_strings, installed

TYPE_CHECKING = False  # typing costs import time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping

    from .records import PatchRecord, Report

POLICIES = ("warn", "strict", "off")
EXTRA_DISTS = ("torch", "ring-flash-attn")


class Call(namedtuple("Call", ["original", "mode", "variant", "patch_id", "settings"])):
    """What an implementation gets besides the upstream arguments: the bound upstream callable,
    the mode of the calling object, the selected variant, the patch id and the settings."""

    __slots__ = ()


class _State:
    """Mutable per-patch state; `selection` is fixed at import."""

    def __init__(self, patch: Patch, selection: Selection) -> None:
        self.patch, self.selection = patch, selection
        self.state = "selected" if selection.needed else "not-needed"
        self.support, self.reason = selection.support, selection.reason
        self.impl: Callable[..., Any] | None = None
        self.wrapper: Any = None
        self.installed: patching.Installed | None = None
        self.active = False
        self.fingerprint: dict[str, Any] | None = None
        self.error: str | None = None
        self.raise_on_call: UnsupportedVersionError | None = None


_lock = threading.RLock()
_registry: Registry = REGISTRY
_versions: dict[str, VersionInfo] = {}
_states: dict[str, _State] = {}
_policy = "warn"
_settings: dict[str, Any] = {"full_length_keys": False}
_notices: list[dict[str, Any]] = []
ring_info: dict[str, Any] | None = None
_LIVE = ("applied", "in-use", "pending-import")  # states apply() leaves as they are


def _select(registry: Registry, versions: Mapping[str, VersionInfo]) -> dict[str, _State]:
    out = {}
    for patch in registry:
        try:
            selection = select(patch, versions)
        except Exception as e:  # a registry bug must not break `import cpshim`: record it
            selection = Selection(patch, None, UNSUPPORTED, f"cpshim registry error: {e}")
        out[patch.id] = _State(patch, selection)
    return out


def init(registry: Registry = REGISTRY, paths: list[str] | None = None) -> None:
    """Read installed versions and select (runs at `import cpshim`; tests call it with other data)."""
    global _registry, _versions, _states
    with _lock:
        _registry = registry
        _versions = installed(registry.dists() + EXTRA_DISTS, paths)
        _states = _select(registry, _versions)


def _env_policy() -> str:
    raw = os.environ.get("CPSHIM_POLICY", "").strip().lower()
    if raw and raw not in POLICIES:
        notice("bad-policy", f"CPSHIM_POLICY={raw!r} is not one of {', '.join(POLICIES)}: using 'warn'; "
                             "set CPSHIM_POLICY to warn, strict or off")
        warnings.warn(f"cpshim: CPSHIM_POLICY={raw!r} is unknown; using 'warn'", CpshimWarning, stacklevel=3)
        return "warn"
    return raw or "warn"


def notice(kind: str, reason: str, **fields: Any) -> None:
    """Record something a user should know that is not a patch outcome (deduplicated)."""
    entry = {"kind": kind, "reason": reason, **fields}
    with _lock:
        if entry not in _notices:
            _notices.append(entry)


# ---------------------------------------------------------------- call time

def refused_uses() -> list[tuple[str, str]]:
    """(id, what it is and why it is refused) of every `uses` entry the installed versions leave
    unsupported: ring mode refuses to start."""
    return [(s.patch.id, f"{s.patch.summary}: {s.selection.reason}") for s in _states.values()
            if s.patch.kind == USES and s.selection.support == UNSUPPORTED]


def is_active(patch_id: str) -> bool:
    """Whether the patch is applied and running (ring mode refuses a feature whose fix is not)."""
    st = _states.get(patch_id)
    return st is not None and st.active


def selection(patch_id: str) -> Selection | None:
    """The variant chosen for the installed versions (None: no such patch), applied or not."""
    st = _states.get(patch_id)
    return None if st is None else st.selection


def _dispatch(patch_id: str, original: Callable[..., Any], this: Any, args: tuple, kwargs: dict) -> Any:
    st = _states[patch_id]
    if st.raise_on_call is not None:
        raise st.raise_on_call
    mode = modes.mode_for(this)
    if not st.active or st.impl is None or (mode == modes.NATIVE and st.patch.follows_mode):
        return original(*args, **kwargs)
    assert st.selection.variant is not None
    call = Call(original, mode, st.selection.variant, patch_id, _settings)
    return st.impl(call, this, *args, **kwargs)


# ---------------------------------------------------------------- apply

def _fail(st: _State, reason: str, error: BaseException | None = None) -> None:
    st.state, st.reason, st.active = "failed", reason, False
    if error is not None:
        st.error = f"{type(error).__name__}: {error}"


def _group_members(st: _State) -> list[_State]:
    if not st.patch.group:
        return [st]
    return [s for s in _states.values() if s.patch.group == st.patch.group]


def _fail_group(st: _State, during_import: bool) -> None:
    """All-or-nothing: one failed member turns its whole group back into pass-through."""
    for other in _group_members(st):
        if other is st or other.state == "not-needed":
            continue
        if other.state != "failed":
            _fail(other, f"not active because {st.patch.id} failed in group {st.patch.group}: {st.reason}")
        if _policy == "strict" and during_import:
            _raise_on_call(other, UnsupportedVersionError(other.reason))


def _check_fingerprint(st: _State) -> None:
    """An installed target that matches no tested release is `untested`, whatever its version says."""
    from . import fingerprint

    try:
        result = fingerprint.check(st.patch)
    except Exception as e:  # a fingerprinting problem must not turn into a failed patch
        st.fingerprint = {"value": None, "matches": [], "error": f"{type(e).__name__}: {e}"}
        if st.support == SUPPORTED:
            st.support = UNTESTED
            st.reason = f"could not fingerprint the installed {st.patch.dist} code ({e}); treated as untested"
        return
    st.fingerprint = {"value": result.fingerprint, "matches": list(result.releases),
                      "unmatched": list(result.unmatched)}
    if result.reason and st.support == SUPPORTED:
        dist = st.patch.dist
        st.support, st.reason = UNTESTED, f"{dist} {_versions[dist].raw}: {result.reason}"


def _install(st: _State, module_name: str, during_import: bool) -> list[_State]:
    """Install one patch whose module is imported; returns the states with version problems.

    A `uses` entry installs nothing: its upstream code is fingerprinted and it is in use."""
    _check_fingerprint(st)
    if st.patch.kind == USES:
        st.state, st.active = "in-use", True
        return _report_support(st, during_import)
    try:
        inst = patching.install(st.patch.id, module_name, st.patch.attr_path, _dispatch, st.wrapper, _gate(st))
    except Exception as e:  # never break the user's import: record, fail the group, maybe raise later
        _fail(st, f"could not patch {st.patch.target}: {e}", e)
        if _policy == "strict" and during_import:
            _raise_on_call(st, UnsupportedVersionError(st.reason))
        _fail_group(st, during_import)
        return [st]
    st.installed, st.wrapper = inst, inst.wrapper
    group_failed = any(o.state == "failed" for o in _group_members(st))
    st.state, st.active = ("failed", False) if group_failed else ("applied", True)
    return _report_support(st, during_import)


def _gate(st: _State) -> patching.Gate | None:
    if st.patch.gate is None:
        return None
    module_name, _, attr = st.patch.gate.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _raise_on_call(st: _State, error: UnsupportedVersionError | None) -> None:
    """Set (or clear) the error every call raises; a gated patch's gate is held open while one is set,
    as a closed gate would skip the dispatch that raises it."""
    st.raise_on_call = error
    gate = _gate(st)
    if gate is not None and error is not None:
        gate.hold()
    elif gate is not None:
        gate.release()


def _report_support(st: _State, during_import: bool) -> list[_State]:
    if st.support == SUPPORTED:
        return []
    if _policy == "strict" and during_import:
        _raise_on_call(st, UnsupportedVersionError(st.reason))
    if during_import and _policy == "warn":
        warnings.warn(f"cpshim: {st.patch.id}: {st.reason}", CpshimWarning, stacklevel=3)
    return [st]


def _on_import(module: Any) -> None:
    with _lock:
        for st in _states.values():
            if st.state == "pending-import" and st.patch.module == module.__name__:
                _install(st, module.__name__, during_import=True)


def _prepare(st: _State) -> None:
    """Import the selected implementation; the group check happens before anything is installed."""
    variant = st.selection.variant
    if variant is None:
        _fail(st, st.selection.reason)
        return
    if variant.impl is None:  # a `uses` entry that names no cpshim code
        return
    module_name, _, attr = variant.impl.partition(":")
    try:
        st.impl = getattr(importlib.import_module(module_name), attr)
    except Exception as e:
        _fail(st, f"cannot import {variant.impl}: {e}", e)


def _strict_error(problems: list[_State]) -> UnsupportedVersionError:
    lines = [f"{s.patch.id} ({s.support}): {s.reason}" for s in problems]
    return UnsupportedVersionError("cpshim policy 'strict' refuses to patch:\n  " + "\n  ".join(lines))


def apply(policy: str | None = None, *, full_length_keys: bool | None = None, mode: str | None = None) -> Report:
    """Install every selected patch (idempotent) and put the process in mode `external`."""
    global _policy
    from . import import_hooks

    if policy is not None and policy not in POLICIES:
        raise ConfigurationError(f"unknown cpshim policy {policy!r}: use one of {', '.join(POLICIES)}")
    target_mode = modes.check(mode) if mode is not None else None
    with _lock:
        _policy = policy or _env_policy()
        env_keys = os.environ.get("CPSHIM_FULL_LENGTH_KEYS", "").strip().lower() in ("1", "true", "yes")
        _settings["full_length_keys"] = bool(full_length_keys) if full_length_keys is not None else env_keys
        needed = [s for s in _states.values() if s.state != "not-needed"]
        if _policy == "off":
            for st in needed:
                if st.state not in _LIVE:
                    st.state, st.reason = "disabled", "CPSHIM_POLICY=off: cpshim patches nothing"
            return report()
        if _policy == "strict":
            bad = [s for s in needed if s.selection.support != SUPPORTED]
            if bad:
                raise _strict_error(bad)
        fresh = [s for s in needed if s.state not in _LIVE]
        for st in fresh:
            st.support, st.reason = st.selection.support, st.selection.reason
            _raise_on_call(st, None)
            st.state, st.error = "selected", None
            _prepare(st)
        for st in fresh:
            if st.state == "failed":
                _fail_group(st, during_import=False)
        installed_now: list[_State] = []
        for st in fresh:
            if st.state == "failed":
                continue
            if st.patch.module in sys.modules:
                _install(st, st.patch.module, during_import=False)
                installed_now.append(st)
            else:
                st.state = "pending-import"
                import_hooks.when_imported(st.patch.module, _on_import)
        problems = [s for s in installed_now if s.support != SUPPORTED or s.state == "failed"]
        if _policy == "strict" and problems:
            _revert_states(installed_now, quiet=True)
            raise _strict_error(problems)
        if modes.process_mode() == modes.NATIVE or target_mode is not None:
            modes.set_process_mode(target_mode or modes.EXTERNAL)
        for st in fresh:
            if st.support != SUPPORTED or st.state == "failed":
                warnings.warn(f"cpshim: {st.patch.id} ({st.support}, {st.state}): {st.reason}",
                              CpshimWarning, stacklevel=2)
        return report()


# ---------------------------------------------------------------- revert

def _revert_states(states: list[_State], quiet: bool = False) -> None:
    from . import import_hooks

    for st in reversed(states):
        if st.state == "pending-import":
            import_hooks.cancel(st.patch.module)
        if st.installed is not None:
            if quiet:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CpshimWarning)
                    patching.uninstall(st.installed)
            else:
                patching.uninstall(st.installed)
            st.installed = None
        st.active = False
        _raise_on_call(st, None)
        if st.state in _LIVE + ("failed", "disabled"):
            st.state = "reverted"


def revert() -> Report:
    """Remove every wrapper (reverse order, identity restored); idempotent."""
    with _lock:
        _revert_states([s for s in _states.values() if s.state != "not-needed"])
        modes.set_process_mode(modes.NATIVE)
        return report()


# ---------------------------------------------------------------- report

def _record(st: _State) -> PatchRecord:
    from .records import PatchRecord

    v = st.selection.variant
    return PatchRecord(
        id=st.patch.id, target=st.patch.target, group=st.patch.group, variant=v.name if v else None, kind=st.patch.kind,
        state=st.state, support=st.support, reason=st.reason,
        requires=dict(v.requires) if v else None, info=dict(v.info) if v else {},
        conflicts=[c.to_dict() for c in st.selection.conflicts], fingerprint=st.fingerprint, error=st.error,
    )


def report(versions: Mapping[str, str | None] | None = None) -> Report:
    """The in-process state; with `versions`, selection for those (hypothetical) versions instead."""
    from .records import Report

    with _lock:
        if versions is not None:
            pins = from_strings(versions, _versions)
            states = _select(_registry, pins)
            return Report(
                versions={d: i.raw for d, i in pins.items()}, mode=modes.process_mode(), policy=_policy,
                patches=[_record(s) for s in states.values()], settings=dict(_settings), hypothetical=True,
            )
        if ring_info:
            ring = dict(ring_info)
        else:
            from .ring.preview import preview

            ring = preview(_versions)
        return Report(
            versions={d: i.raw for d, i in _versions.items()}, mode=modes.process_mode(), policy=_policy,
            patches=[_record(s) for s in _states.values()], notices=list(_notices),
            settings=dict(_settings), ring=ring,
        )
