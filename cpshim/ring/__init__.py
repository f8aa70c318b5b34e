"""Ring-flash-attn support: kernel providers, a side-effect-free loader, and sequence sharding.

This package module imports neither torch nor transformers (`import cpshim` must stay cheap);
attributes below resolve lazily from the submodules, which do import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    ProviderError,
    RingError,
    RingImportError,
    RingNotInstalledError,
    ShardingError,
    UnsupportedAttentionError,
)

_LAZY = {
    "load_ring_flash_attn": "loader",
    "RingLoadResult": "loader",
    "Provider": "providers",
    "select_provider": "providers",
    "get_provider": "providers",
    "shard": "sharding",
    "unshard": "sharding",
    "STRATEGIES": "sharding",
}

__all__ = [
    "RingError", "RingImportError", "RingNotInstalledError", "ProviderError", "ShardingError",
    "UnsupportedAttentionError", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
