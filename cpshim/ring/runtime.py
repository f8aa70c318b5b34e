"""Mode `ring`: settings, the loaded ring-flash-attn, and the step in flight.

`enable()` loads ring-flash-attn once (reporting what it bound), installs the wrappers and puts the
process in mode `ring`. The Trainer hook opens a *step* (the sharded batch's facts); attention
routing and the tripwires read it. Steps are thread-local.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

from .. import lifecycle, modes
from ..errors import ConfigurationError, UnsupportedVersionError
from ..patching import Gate

STRATEGIES = ("zigzag", "contiguous", "varlen")
RING_DTYPES = ("bfloat16", "float16")

_lock = threading.Lock()
_local = threading.local()
settings: dict[str, Any] = {"strategy": "zigzag", "heads_k_stride": 1, "ring_dtype": "bfloat16",
                            "check_batches": True}
loaded: Any = None  # cpshim.ring.loader.RingLoadResult once loaded
#: Open while a sharded step is in flight in some thread: `attention-dispatch` routes only then, so
#: outside steps (generation, eval before 5.16, CP off) an attention lookup is upstream's plus one read.
ROUTING = Gate()


def ensure_loaded() -> Any:
    """Import ring-flash-attn with a kernel provider (raises RingNotInstalledError with the fix)."""
    global loaded
    with _lock:
        if loaded is None:
            from .loader import load_ring_flash_attn

            loaded = load_ring_flash_attn()
            _publish()
        return loaded


def _publish() -> None:
    from .trl_trainers import trainers

    info: dict[str, Any] = dict(settings)
    trl = trainers(lifecycle._versions)
    if trl is not None:
        info["trl"] = trl
    if loaded is not None:
        info.update(ring_flash_attn=loaded.ring_version, provider=loaded.provider, bound=loaded.bound,
                    shimmed=list(loaded.shimmed))
        info["compute"] = (f"ring attention runs in {settings['ring_dtype']} (q/k/v cast in, output cast back): "
                           "ring-flash-attn's fp32 backward is wrong and fp64 fails over gloo")
    lifecycle.ring_info = info


def enable(strategy: str = "zigzag", heads_k_stride: int = 1, ring_dtype: str = "bfloat16",
           check_batches: bool = True) -> Any:
    if strategy not in STRATEGIES:
        raise ConfigurationError(f"unknown ring strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if not isinstance(heads_k_stride, int) or heads_k_stride < 1:
        raise ConfigurationError(f"heads_k_stride must be a positive int, got {heads_k_stride!r}")
    if ring_dtype not in RING_DTYPES:
        raise ConfigurationError(f"ring_dtype must be one of {', '.join(RING_DTYPES)}, got {ring_dtype!r}")
    refused = lifecycle.refused_uses()
    if refused:
        raise UnsupportedVersionError(
            "ring mode cannot run on this torch: " + "; ".join(f"{pid} ({why})" for pid, why in refused)
            + " (`cpshim report` lists what cpshim uses in torch)")
    settings.update(strategy=strategy, heads_k_stride=heads_k_stride, ring_dtype=ring_dtype,
                    check_batches=check_batches)
    ensure_loaded()
    _publish()  # the settings just given (the Trainer hook's per-step ensure_loaded publishes nothing)
    return lifecycle.apply(mode=modes.RING)


def disable() -> Any:
    if modes.process_mode() == modes.RING:
        modes.set_process_mode(modes.EXTERNAL)
    return lifecycle.report()


def note_group(cp: int) -> None:
    """Record the CP group size of the latest sharded step for the report (only when it changes)."""
    if (lifecycle.ring_info or {}).get("group_size") != cp:
        settings["group_size"] = cp
        _publish()


def current_step() -> Any:
    return getattr(_local, "step", None)


def set_step(step: Any) -> None:
    from . import eager

    previous = getattr(_local, "step", None)
    _local.step = step
    if previous is not step:  # eager attention reads "sdpa" (routed) only while its step is current
        if previous is not None:
            eager.restore(getattr(previous, "eager", ()))
        if step is not None:
            eager.route(getattr(step, "eager", ()))
    if previous is None and step is not None:
        with _lock:
            ROUTING.enter()
    elif previous is not None and step is None:
        with _lock:
            ROUTING.leave()


def replicated_scope() -> Any:
    """The Trainer whose gathers in this thread gather values that are the same on every rank of a CP group
    (its eval loop, a label-less step, TRL's reference log-prob precompute), or None."""
    scope = getattr(_local, "replicated", None)
    return scope[0] if scope is not None else None


def replicated_collectives() -> bool:
    """Whether every accelerate collective in the scope sees the CP group as one data-parallel rank (a label-less
    or generating step, the precompute), not only `gather_for_metrics` (the eval loop: its labelled steps count
    their targets with upstream's CP-aware gathers)."""
    scope = getattr(_local, "replicated", None)
    return scope is not None and scope[1]


@contextlib.contextmanager
def replicated(trainer: Any, collectives: bool = True) -> Iterator[None]:
    previous = getattr(_local, "replicated", None)
    _local.replicated = (trainer, collectives)
    try:
        yield
    finally:
        _local.replicated = previous


@contextlib.contextmanager
def generating() -> Iterator[None]:
    """A trainer's generation inside a step (TRL's GRPO/RLOO `_generate`, each CP rank on its own share of the
    prompts): no step in flight (attention is upstream's), the backbone hooks pass its calls through
    unsharded, and no replicated scope (its collectives are upstream's: the ranks hold different values)."""
    saved = current_step(), getattr(_local, "replicated", None), is_generating()
    set_step(None)
    _local.replicated, _local.generating = None, True
    try:
        yield
    finally:
        _local.replicated, _local.generating = saved[1], saved[2]
        set_step(saved[0])


@contextlib.contextmanager
def swapped(module_name: str, name: str, value: Any) -> Iterator[Any]:
    """Within: the module's global `name` is `value` (a core or scan a run's call of upstream's forward looks up
    by name); yields the original."""
    import sys

    home = sys.modules[module_name]
    original = home.__dict__[name]
    setattr(home, name, value)
    try:
        yield original
    finally:
        setattr(home, name, original)


def is_generating() -> bool:
    return getattr(_local, "generating", False)


def note_eval_steps(prefix: str, num_samples: int, steps: int) -> None:
    """What the eval loop just ran, for the speed metrics `evaluate()`/`predict()` compute right after it."""
    _local.eval_steps = (prefix, num_samples, steps)


def take_eval_steps(prefix: str, num_samples: Any) -> int | None:
    facts = getattr(_local, "eval_steps", None)
    if facts is None or facts[:2] != (prefix, num_samples):
        return None
    _local.eval_steps = None
    return facts[2]
