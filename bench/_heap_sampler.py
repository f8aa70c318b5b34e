"""What glibc's allocator holds at a process's peak RSS: a diagnostic for bench/bench_ring_cp.py.

A thread samples VmRSS and `mallinfo2()` every `period` seconds while training runs; the sample with the
highest RSS is kept, with the heap in use when sampling began (`heap_in_use_at_start`). `heap_free` is memory
freed back to glibc's heap (all arenas) but still resident: glibc returns a freed block to the kernel only when
it was mmapped (from its mmap threshold up, which grows with the blocks freed, to 32 MiB on 64-bit) or sits at
the heap's top. A CP rank's tensors are half a single process's, so more of them fall under that ceiling and
are kept; `heap_free` says how much of a peak that is. None where the C library has no `mallinfo2`
(glibc < 2.33, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from typing import Any

MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mallinfo2() -> Any:
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class HeapAtPeak:
    """`with HeapAtPeak() as h: ...`; then `h.result()`: MiB at the highest sampled RSS, or None."""

    def __init__(self, period: float = 0.02) -> None:
        self.period, self.info, self.start = period, _mallinfo2(), 0.0
        self.best: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            rss = _rss_bytes()
            if rss > self.best.get("rss", 0) * MIB:
                m = self.info()
                self.best = {"rss": rss / MIB, "heap_in_use": m.uordblks / MIB, "heap_free": m.fordblks / MIB,
                             "mmapped": m.hblkhd / MIB}

    def __enter__(self) -> "HeapAtPeak":
        if self.info is not None:
            self.start = self.info().uordblks / MIB
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def result(self) -> dict[str, float] | None:
        return {**self.best, "heap_in_use_at_start": self.start} if self.best else None
