"""Import ring-flash-attn 0.1.8 without flash-attn, on transformers 4.56-5.24, leaving no trace.

ring-flash-attn binds `_flash_attn_forward` & co. from `flash_attn.flash_attn_interface` at import,
and its HF adapter imports `is_flash_attn_greater_or_equal_2_10` from
`transformers.modeling_flash_attention_utils` (absent from transformers 5.4+). For the duration of
that one import we provide what is missing, then restore `sys.modules` and transformers' module
attributes exactly. The result reports what ring-flash-attn actually bound, not what we intended.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import INSTALL_HINT, RingImportError, RingNotInstalledError
from .providers import FLASH_ATTN, SHIM_MARKER, Provider, identify, qualified_name, select_provider
from .providers._common import FUNCTION_NAMES

RING = "ring_flash_attn"
FA_UTILS = "transformers.modeling_flash_attention_utils"
GE_2_10 = "is_flash_attn_greater_or_equal_2_10"
_SHIM_MODULES = ("flash_attn", "flash_attn.flash_attn_interface")
_ABSENT = object()


@dataclass(frozen=True)
class RingLoadResult:
    """What loading found. `provider` is derived from the bound functions (None if none bound)."""

    ring_version: str | None
    provider: str | None
    requested_provider: str | None
    shimmed: tuple[str, ...]
    bound: dict[str, dict[str, str]]
    already_imported: bool
    module: Any = field(repr=False, compare=False, default=None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ring_version": self.ring_version, "provider": self.provider,
            "requested_provider": self.requested_provider, "shimmed": list(self.shimmed),
            "bound": {m: dict(b) for m, b in self.bound.items()}, "already_imported": self.already_imported,
        }


def _ring_version() -> str | None:
    try:
        return importlib.metadata.version("ring-flash-attn")
    except importlib.metadata.PackageNotFoundError:
        return getattr(sys.modules.get(RING), "__version__", None)


def bound_kernels() -> dict[str, dict[str, str]]:
    """{ring module: {kernel name: qualified name}} read from each loaded ring module's globals."""
    found: dict[str, dict[str, str]] = {}
    for name, mod in sorted(sys.modules.items()):
        if mod is None or not (name == RING or name.startswith(RING + ".")):
            continue
        names = {n: qualified_name(mod.__dict__[n]) for n in FUNCTION_NAMES if n in mod.__dict__}
        if names:
            found[name] = names
    return found


def _bound_provider() -> str | None:
    kinds: set[str] = set()
    for name, mod in list(sys.modules.items()):
        if mod is not None and (name == RING or name.startswith(RING + ".")):
            kinds.update(identify(mod.__dict__[n]) for n in FUNCTION_NAMES if n in mod.__dict__)
    if not kinds:
        return None
    return kinds.pop() if len(kinds) == 1 else "mixed:" + ",".join(sorted(kinds))


def _shim_modules(provider: Provider) -> dict[str, types.ModuleType]:
    pkg = types.ModuleType("flash_attn", "cpshim shim: exists only while ring-flash-attn imports")
    pkg.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None, is_package=True)
    pkg.__path__ = []
    iface = types.ModuleType("flash_attn.flash_attn_interface", f"cpshim shim over the {provider.name} provider")
    iface.__spec__ = importlib.machinery.ModuleSpec("flash_attn.flash_attn_interface", None)
    for mod in (pkg, iface):
        setattr(mod, SHIM_MARKER, True)
    for n, fn in provider.functions().items():
        setattr(iface, n, fn)
    pkg.flash_attn_interface = iface  # type: ignore[attr-defined]
    return {"flash_attn": pkg, "flash_attn.flash_attn_interface": iface}


def _ge_2_10(provider: Provider) -> Callable[[], bool]:
    answer = bool(provider.flash_attn_ge_2_1)

    def is_flash_attn_greater_or_equal_2_10() -> bool:
        """cpshim shim: True when the bound kernels mask causally bottom-right (flash-attn >= 2.1)."""
        return answer

    return is_flash_attn_greater_or_equal_2_10


class _Patches:
    """Records every sys.modules entry / module attribute it sets, and restores each exactly."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self.names: list[str] = []

    def set_module(self, name: str, mod: types.ModuleType) -> None:
        old = sys.modules.get(name, _ABSENT)
        sys.modules[name] = mod
        self.names.append(f"sys.modules[{name!r}]")
        def undo() -> None:
            if old is _ABSENT:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old  # type: ignore[assignment]

        self._undo.append(undo)

    def set_attr(self, owner: types.ModuleType, attr: str, value: Any) -> None:
        old = owner.__dict__.get(attr, _ABSENT)
        setattr(owner, attr, value)
        self.names.append(f"{owner.__name__}.{attr}")
        self._undo.append(lambda: delattr(owner, attr) if old is _ABSENT else setattr(owner, attr, old))

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


def _preimport_transformers() -> types.ModuleType | None:
    """Import transformers' modules the adapter uses *before* shimming, so their import-time
    availability checks never see the fake flash_attn. Failures are left for the ring import to
    report (it needs these modules too)."""
    try:
        fa_utils = importlib.import_module(FA_UTILS)
    except Exception:
        return None
    try:
        importlib.import_module("transformers.modeling_utils")
    except Exception:
        pass  # the adapter itself treats this import as optional
    return fa_utils


def _forget_partial_import(before: set[str]) -> None:
    for name in [n for n in sys.modules if (n == RING or n.startswith(RING + ".")) and n not in before]:
        del sys.modules[name]


def load_ring_flash_attn(provider: Provider | str | None = None) -> RingLoadResult:
    """Import ring_flash_attn with `provider`'s kernels bound (default: select_provider()).

    Idempotent: if ring_flash_attn is already imported, nothing is reimported and the result reports
    the kernels it bound then. Raises RingNotInstalledError / RingImportError (cause chained).
    """
    if isinstance(provider, str) or provider is None:
        provider = select_provider(name=provider) if isinstance(provider, str) else select_provider()
    if sys.modules.get(RING) is not None:
        mod = sys.modules[RING]
        return RingLoadResult(_ring_version(), _bound_provider(), provider.name, (), bound_kernels(), True, mod)
    fa_utils = _preimport_transformers()
    patches = _Patches()
    before = set(sys.modules)
    try:
        if provider.name != FLASH_ATTN:
            for name, shim in _shim_modules(provider).items():
                patches.set_module(name, shim)
        if fa_utils is not None and GE_2_10 not in fa_utils.__dict__:
            patches.set_attr(fa_utils, GE_2_10, _ge_2_10(provider))
        try:
            mod = importlib.import_module(RING)
        except ModuleNotFoundError as e:
            _forget_partial_import(before)
            if e.name == RING:
                raise RingNotInstalledError(INSTALL_HINT) from e
            hint = " (ring-flash-attn imports transformers at import time)" if (e.name or "").startswith(
                "transformers") else ""
            raise RingImportError(f"importing ring_flash_attn failed: missing module {e.name!r}{hint}: {e}") from e
        except Exception as e:
            _forget_partial_import(before)
            raise RingImportError(
                f"importing ring_flash_attn {_ring_version()} failed: {type(e).__name__}: {e}") from e
    finally:
        shimmed = tuple(patches.names)
        patches.restore()
    return RingLoadResult(_ring_version(), _bound_provider(), provider.name, shimmed, bound_kernels(), False, mod)


__all__ = ["load_ring_flash_attn", "RingLoadResult", "bound_kernels"]
