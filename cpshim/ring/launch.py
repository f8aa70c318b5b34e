"""Start N local torch.distributed ranks (env:// on loopback) as fresh interpreters.

Used by `cpshim demo` and the multi-process tests; CPU-only runs use gloo with one thread per rank.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(code: str, world: int, env: dict[str, str] | None = None, timeout: int = 600,
              cwd: str | None = None) -> list[str]:
    """Run `code` as `world` ranks; return each rank's stdout, or raise with every failing rank's output."""
    root = str(Path(__file__).resolve().parents[2])
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    base.pop("CPSHIM_POLICY", None)
    base.update(env or {})
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=cwd,
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(world)]
    outs, failed = [], []
    try:
        for r, p in enumerate(procs):
            out, err = p.communicate(timeout=timeout)
            outs.append(out)
            if p.returncode != 0:
                failed.append(f"rank {r} exited {p.returncode}:\n{out}\n{err[-4000:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if failed:
        raise RuntimeError("\n".join(failed))
    return outs
