"""Upstream guards relaxed by answering their own reads: one function's frame sees other values.

TRL's guards are inline in functions that do much else (`SFTTrainer.__init__`, `GRPOConfig.__post_init__`),
so they cannot be skipped. While a relaxing patch runs such a function, the property patches that the
guard reads (`ParallelismConfig.cp_enabled`, `TrainingArguments.world_size`) answer that very
function's frame, in the thread that runs it, with the relaxed values, and every other read with
upstream's: the rest of the function, and everything it calls, sees the real configuration.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Iterator

_local = threading.local()  # .frames: {code object: {attribute: relaxed answer}}


@contextlib.contextmanager
def relaxed(function: Any, **answers: Any) -> Iterator[None]:
    """While open, reads made by `function`'s own frame of each attribute in `answers` get that answer (a
    callable: its value for upstream's)."""
    code = getattr(function, "__func__", function).__code__
    frames = getattr(_local, "frames", None)
    previous = dict(frames) if frames else {}
    _local.frames = {**previous, code: answers}
    try:
        yield
    finally:
        _local.frames = previous


def _caller_code() -> Any:
    frame: Any = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("cpshim."):
        frame = frame.f_back
    return frame.f_code if frame is not None else None


def answer(name: str, value: Any) -> Any:
    """The relaxed answer for `name` when the reading frame (the first one outside cpshim) is relaxed for it,
    else upstream's `value`. A callable answer is applied to upstream's value."""
    frames = getattr(_local, "frames", None)
    if not frames:
        return value
    relaxed_answer = frames.get(_caller_code(), {}).get(name, _UPSTREAM)
    if relaxed_answer is _UPSTREAM:
        return value
    return relaxed_answer(value) if callable(relaxed_answer) else relaxed_answer


_UPSTREAM = object()
