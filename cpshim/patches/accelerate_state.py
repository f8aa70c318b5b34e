"""`AcceleratorState` on multi-GPU when cpshim owns CP: no FSDP2 plugin required.

Upstream's multi-GPU branch refuses CP without an FSDP2 plugin (torch CP shards the model too) and
forces `distributed_type = FSDP`, after which `is_fsdp2` dereferences a None plugin. Ring attention
runs under plain DDP or DeepSpeed, so neither applies. These paths only run on several GPUs.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator

from .. import modes
from ..modes import cp_owned

_env_lock = threading.Lock()


@contextlib.contextmanager
def _allow_standalone() -> Iterator[None]:
    with _env_lock:
        saved = os.environ.get("ACCELERATE_ALLOW_CP_STANDALONE")
        os.environ["ACCELERATE_ALLOW_CP_STANDALONE"] = "true"
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("ACCELERATE_ALLOW_CP_STANDALONE", None)
            else:
                os.environ["ACCELERATE_ALLOW_CP_STANDALONE"] = saved


def allow_cp_without_fsdp(call: Any, state: Any, *args: Any, **kwargs: Any) -> None:
    """Keeps: everything `AcceleratorState.__init__` sets up. Turns off: the cp-needs-FSDP2 refusal
    and the forced FSDP type when no FSDP plugin was given. Checked (by reading) on 1.10.1-1.16.0."""
    pc, fsdp = kwargs.get("parallelism_config"), kwargs.get("fsdp_plugin")
    if not cp_owned(pc) or fsdp is not None or modes.process_mode() == modes.NATIVE:
        return call.original(*args, **kwargs)
    with _allow_standalone():
        call.original(*args, **kwargs)
    if getattr(state.distributed_type, "value", None) == "FSDP" and getattr(state, "fsdp_plugin", None) is None:
        from accelerate.state import PartialState

        state.distributed_type = PartialState().distributed_type
    return None


def is_fsdp2_without_plugin(call: Any, state: Any) -> bool:
    """Keeps: upstream's answer whenever an FSDP plugin exists. Turns off: the AttributeError on a
    None plugin (no plugin means no FSDP2)."""
    if getattr(state, "fsdp_plugin", None) is None:
        return False
    return call.original()
