"""Shared test helpers: fresh interpreters, and observing whether upstream code ran."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, env: dict[str, str] | None = None, timeout: int = 300,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with the repo importable; fail with its output."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    full_env.pop("CPSHIM_POLICY", None)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=str(ROOT))
    if check and proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@contextlib.contextmanager
def code_runs(*funcs):
    """Yield a set filled with the functions (by code object) among `funcs` that executed inside."""
    codes = {f.__code__: f for f in funcs}
    seen: set = set()

    def profiler(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            seen.add(codes[frame.f_code])

    old = sys.getprofile()
    sys.setprofile(profiler)
    try:
        yield seen
    finally:
        sys.setprofile(old)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(code: str, world: int, env: dict[str, str] | None = None, timeout: int = 300) -> list[str]:
    """Run `code` as `world` torch.distributed ranks (env:// on loopback); return each rank's stdout."""
    port = str(free_port())
    base = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1",
            "LOCAL_WORLD_SIZE": str(world)}
    base.pop("CPSHIM_POLICY", None)
    base.update(env or {})
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(world)]
    outs = []
    failed = []
    for r, p in enumerate(procs):
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
        if p.returncode != 0:
            failed.append(f"rank {r} exited {p.returncode}:\n{out}\n{err[-4000:]}")
    if failed:
        raise AssertionError("\n".join(failed))
    return outs
