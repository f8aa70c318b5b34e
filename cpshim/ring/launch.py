"""Start N local torch.distributed ranks (env:// on loopback) as fresh interpreters.

Used by `cpshim demo`, the benchmarks and the multi-process tests; CPU-only runs use gloo with one
thread per rank.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import NoReturn

FAILED_GRACE_S = 20
# Appended to every rank's code: a rank that got to the end leaves through `finish_rank`.
_EPILOGUE = "\nfrom cpshim.ring.launch import finish_rank\nfinish_rank()\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finish_rank() -> NoReturn:
    """End a rank that finished its work: barrier, destroy the process group, exit without finalization.

    Everything the rank reports is written before this runs. A gloo rank can still abort with SIGABRT
    ("terminate called without an active exception") when torch's C++ threads and objects are torn down
    during interpreter finalization (one CI run of the passing 2-rank ring test did, after its last
    collective; pytorch/pytorch#190489, #179291): `os._exit` skips that teardown, which a rank that has
    already written its results does not need.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(code: str, world: int, env: dict[str, str] | None = None, timeout: int = 600,
              cwd: str | None = None, failed_grace_s: float = FAILED_GRACE_S) -> list[str]:
    """Run `code` as `world` ranks; return each rank's stdout, or raise with every failing rank's output.

    Output goes to files, not pipes: a rank blocked on a full pipe while its peers wait for it in a
    collective would hang the run.
    """
    root = str(Path(__file__).resolve().parents[2])
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    base.pop("CPSHIM_POLICY", None)
    base.update(env or {})
    script = textwrap.dedent(code) + _EPILOGUE
    with tempfile.TemporaryDirectory(prefix="cpshim-ranks-") as logs, contextlib.ExitStack() as stack:
        files = [tuple(stack.enter_context(open(os.path.join(logs, f"{r}.{kind}"), "w+")) for kind in ("out", "err"))
                 for r in range(world)]
        procs = [subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=err, text=True, cwd=cwd,
                                  env={**base, "RANK": str(r), "LOCAL_RANK": str(r)})
                 for r, (out, err) in enumerate(files)]
        hung = _wait_all(procs, timeout, failed_grace_s)
        failed = [r for r, p in enumerate(procs) if p.returncode != 0]
        if failed:
            head = f"ranks did not finish within {timeout}s (killed)\n" if hung else ""
            raise RuntimeError(head + "\n".join(
                f"rank {r} exited {procs[r].returncode}:\n{_read(files[r][0])[-4000:]}\n{_read(files[r][1])[-4000:]}"
                for r in failed))
        return [_read(out) for out, _ in files]


def _wait_all(procs: list[subprocess.Popen], timeout: float, grace: float) -> bool:
    """Wait for every rank; once one fails, its peers (likely stuck in a collective with it) get
    `grace` seconds to finish before they are killed. Returns whether the deadline passed."""
    deadline, kill_at = time.monotonic() + timeout, None
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        if kill_at is None and any(p.returncode not in (None, 0) for p in procs):
            kill_at = now + grace
        if now > deadline or (kill_at is not None and now > kill_at):
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            return now > deadline
        time.sleep(0.1)
    return False


def _read(f) -> str:
    f.seek(0)
    return f.read()
