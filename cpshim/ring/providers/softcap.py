"""A layer's softcap during a ring call (no torch import).

ring-flash-attn 0.1.8 passes softcap=0.0 to the kernels on every ring step (`utils.get_default_args`),
so the layer's softcap reaches cpshim's kernels another way: `layer_softcap`, which cpshim's ring call
holds around the ring's forward and backward, in the calling thread.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

_layer = threading.local()


@contextlib.contextmanager
def layer_softcap(cap: float | None) -> Iterator[None]:
    """The softcap the kernels apply while ring-flash-attn, which passes softcap=0.0, runs a layer's ring."""
    previous = getattr(_layer, "softcap", 0.0)
    _layer.softcap = float(cap or 0.0)
    try:
        yield
    finally:
        _layer.softcap = previous


def effective_softcap(softcap: Any) -> float:
    """The softcap a kernel call computes: its own argument, else the layer's (`layer_softcap`)."""
    return float(softcap) if softcap else getattr(_layer, "softcap", 0.0)
