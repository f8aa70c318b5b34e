"""Exceptions raised by cpshim.ring.

Kept in one dependency-free module so the core can re-export (or reparent) them without
importing torch.
"""

from __future__ import annotations

INSTALL_HINT = "ring-flash-attn is not installed: pip install 'cpshim[ring]'"


class RingError(RuntimeError):
    """Base class for runtime failures in cpshim.ring."""


class RingNotInstalledError(ImportError):
    """ring-flash-attn (import name `ring_flash_attn`) cannot be found."""

    def __init__(self, msg: str = INSTALL_HINT, **kwargs: object) -> None:
        super().__init__(msg, **kwargs)  # type: ignore[arg-type]


class RingImportError(ImportError):
    """ring-flash-attn is installed but importing it failed; the cause is chained."""


class ProviderError(RingError):
    """No usable kernel provider, or a provider was asked for something it cannot do."""


class UnsupportedAttentionError(ProviderError, ValueError):
    """An attention argument (dropout, softcap, alibi, sliding window) the providers refuse."""


class ShardingError(RingError, ValueError):
    """A sequence cannot be sharded as requested (length, strategy, cp size)."""
