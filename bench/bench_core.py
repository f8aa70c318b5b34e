"""Core overheads, measured side by side in one run (medians of repeated fresh interpreters).

  python bench/bench_core.py [--runs N]

import:  `import cpshim` (selection included) over a bare interpreter; target < 25 ms.
apply:   `cpshim.apply()` after `import transformers.trainer, accelerate`, patches really applied
         (fingerprint check included); target < 50 ms. Also timed in-process around the call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_SOURCE = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
ENV = {k: v for k, v in ENV_SOURCE.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="cpshim-bench-pyc-")

APPLY = """
import time, json, warnings
warnings.simplefilter("ignore")
import transformers.trainer, accelerate, accelerate.parallelism_config, accelerate.state
import cpshim
t0 = time.perf_counter(); rep = cpshim.apply(); dt = time.perf_counter() - t0
import sys
from cpshim.patches.catalog import REGISTRY
def done(p):  # a patch of a module this script never imports (TRL's) waits for its import
    return p.state == ("in-use" if p.kind == "uses" else "applied") or (
        p.state == "pending-import" and REGISTRY[p.id].module not in sys.modules)
assert all(done(p) for p in rep.needed()), [(p.id, p.state) for p in rep.needed()]
print(json.dumps({"apply_ms": dt * 1e3}))
"""


def wall(code: str, runs: int, env: dict[str, str] = ENV) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    runs = ap.parse_args().runs
    wall(APPLY, 1)  # fills the bytecode cache for everything the measured runs import
    bare = wall("pass", runs)
    imp = wall("import cpshim", runs)
    imp_source = wall("import cpshim", runs, ENV_SOURCE)
    bare_source = wall("pass", runs, ENV_SOURCE)
    base = wall("import transformers.trainer, accelerate", max(3, runs // 3))
    applied = []
    for _ in range(max(3, runs // 3)):
        proc = subprocess.run([sys.executable, "-c", APPLY], check=True, env=ENV, capture_output=True, text=True)
        applied.append(json.loads(proc.stdout.strip().splitlines()[-1])["apply_ms"])
    med = statistics.median
    d_import = med(imp) - med(bare)
    print(f"{'measure':<44}{'median ms':>10}")
    print(f"{'bare interpreter':<44}{med(bare):>10.1f}")
    print(f"{'import cpshim':<44}{med(imp):>10.1f}")
    print(f"{'import transformers.trainer, accelerate':<44}{med(base):>10.1f}")
    print(f"{'-> import cpshim over bare (target < 25)':<44}{d_import:>10.1f}  {'OK' if d_import < 25 else 'MISS'}")
    print(f"{'-> apply() in-process (target < 50)':<44}{med(applied):>10.1f}  {'OK' if med(applied) < 50 else 'MISS'}")
    print(f"{'(info) import cpshim over bare, no bytecode':<44}{med(imp_source) - med(bare_source):>10.1f}")
    print(f"ratio import cpshim / bare: {med(imp) / med(bare):.2f}x")


if __name__ == "__main__":
    main()
