"""Kernel providers: the four flash-attn 2.8 private functions ring-flash-attn imports.

Order of preference: the real `flash_attn` package (when it imports for real, not our shim) >
PyTorch's CUDA flash kernels (`torch_cuda`) > the pure-torch `reference` (CPU, any dtype).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from ..errors import ProviderError
from ._common import FUNCTION_NAMES

FLASH_ATTN = "flash_attn"
TORCH_CUDA = "torch_cuda"
REFERENCE = "reference"
NAMES = (FLASH_ATTN, TORCH_CUDA, REFERENCE)
# Marker set on the synthetic flash_attn modules the loader installs while importing ring-flash-attn.
SHIM_MARKER = "__cpshim_shim__"


@dataclass(frozen=True)
class Provider:
    """A named set of the four kernels; `flash_attn_ge_2_1` is the honest answer for transformers'
    `is_flash_attn_greater_or_equal_2_10` (bottom-right causal masks)."""

    name: str
    forward: Callable[..., Any]
    backward: Callable[..., Any]
    varlen_forward: Callable[..., Any]
    varlen_backward: Callable[..., Any]
    flash_attn_ge_2_1: bool
    version: str | None = None

    def functions(self) -> dict[str, Callable[..., Any]]:
        """The kernels under the names flash_attn.flash_attn_interface gives them."""
        return dict(zip(FUNCTION_NAMES, (self.forward, self.backward, self.varlen_forward, self.varlen_backward)))


def _from_module(name: str, mod: Any, ge_2_1: bool, version: str | None = None) -> Provider:
    fns = dict(zip(("forward", "backward", "varlen_forward", "varlen_backward"),
                   (getattr(mod, n) for n in FUNCTION_NAMES)))
    return Provider(name, **fns, flash_attn_ge_2_1=ge_2_1, version=version)


def reference_provider() -> Provider:
    from . import reference

    return _from_module(REFERENCE, reference, reference.flash_attn_ge_2_1())


def torch_cuda_provider() -> Provider:
    from . import cuda

    return _from_module(TORCH_CUDA, cuda, cuda.flash_attn_ge_2_1())


def _is_shim(mod: ModuleType | None) -> bool:
    return mod is not None and bool(getattr(mod, SHIM_MARKER, False))


def real_flash_attn_provider() -> Provider | None:
    """The installed flash-attn package's kernels, or None when it is absent, broken, or our shim."""
    if _is_shim(sys.modules.get("flash_attn")) or _is_shim(sys.modules.get("flash_attn.flash_attn_interface")):
        return None
    try:
        if importlib.util.find_spec("flash_attn") is None:
            return None
        iface = importlib.import_module("flash_attn.flash_attn_interface")
    except Exception:  # an installed but unbuildable/mismatched flash-attn must not break selection
        return None
    if _is_shim(iface) or not all(hasattr(iface, n) for n in FUNCTION_NAMES):
        return None
    version = getattr(sys.modules.get("flash_attn"), "__version__", None)
    return _from_module(FLASH_ATTN, iface, _version_ge(version, (2, 1)), version)


def _version_ge(version: str | None, minimum: tuple[int, ...]) -> bool:
    if not version:
        return False
    try:
        from packaging.version import Version

        return Version(version).release[: len(minimum)] >= minimum
    except Exception:
        return False


def get_provider(name: str) -> Provider:
    """Provider by name; raises ProviderError when it cannot be used in this process."""
    if name == REFERENCE:
        return reference_provider()
    if name == TORCH_CUDA:
        from . import cuda

        if not cuda.available():
            raise ProviderError("the torch_cuda provider needs torch.cuda.is_available() and aten flash kernels")
        return torch_cuda_provider()
    if name == FLASH_ATTN:
        p = real_flash_attn_provider()
        if p is None:
            raise ProviderError("flash_attn is not importable (not installed, broken, or only cpshim's shim)")
        return p
    raise ProviderError(f"unknown kernel provider {name!r}; choose one of {NAMES}")


def select_provider(device_type: str | None = None, name: str | None = None) -> Provider:
    """Best provider for `device_type` ("cuda"/"cpu"; None = cuda if available, else cpu).

    A CPU device always gets the reference (CUDA kernels cannot run CPU tensors); `name` forces one.
    """
    if name is not None:
        return get_provider(name)
    import torch

    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        real = real_flash_attn_provider()
        if real is not None:
            return real
        from . import cuda

        if cuda.available():
            return torch_cuda_provider()
    return reference_provider()


def identify(fn: Any) -> str:
    """Which provider a bound kernel belongs to, from its defining module (report what IS bound)."""
    target = getattr(fn, "_init_fn", fn)  # flash-attn >= 2.6 wraps kernels in torch CustomOpDef
    module = getattr(target, "__module__", "") or ""
    if module == f"{__name__}.reference":
        return REFERENCE
    if module == f"{__name__}.cuda":
        return TORCH_CUDA
    if module.split(".")[0] == "flash_attn":
        return FLASH_ATTN
    return f"unknown:{module or type(fn).__name__}"


def qualified_name(fn: Any) -> str:
    target = getattr(fn, "_init_fn", fn)
    module = getattr(target, "__module__", None) or type(fn).__module__
    qual = getattr(target, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qual}"


__all__ = [
    "Provider", "select_provider", "get_provider", "reference_provider", "torch_cuda_provider",
    "real_flash_attn_provider", "identify", "qualified_name", "FUNCTION_NAMES", "NAMES",
    "FLASH_ATTN", "TORCH_CUDA", "REFERENCE", "SHIM_MARKER",
]
