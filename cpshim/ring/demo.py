"""`cpshim demo`: a 2-rank ring CP run of a tiny Llama on this CPU beside the single-process run."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from .launch import run_ranks

LOSS_RTOL, GRAD_RTOL = 1e-3, 2e-2


def main(steps: int = 4, seq_len: int = 128, strategy: str = "zigzag") -> int:
    import subprocess

    import torch

    from .parity import compare

    case = {"id": "demo", "strategy": strategy, "batch": 1, "seq_len": seq_len, "steps": steps}
    out = tempfile.mkdtemp(prefix="cpshim-demo-")
    code = f"from cpshim.ring.parity import main_worker; main_worker({json.dumps([case])!r}, {out!r}, CP)"
    print(f"cpshim demo: tiny Llama, copy task, seq {seq_len}, {steps} SGD steps, strategy {strategy}")
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run([sys.executable, "-c", code.replace("CP", "1")], env=env, capture_output=True, text=True)
    if ref.returncode != 0:
        print(ref.stdout, ref.stderr, file=sys.stderr)
        return 1
    t1 = time.perf_counter()
    run_ranks(code.replace("CP", "2"), 2)
    t2 = time.perf_counter()
    reference = torch.load(os.path.join(out, "ref-0.pt"))
    ring = torch.load(os.path.join(out, "ring-0.pt"))
    print(f"{'step':>4}  {'1 process':>12}  {'ring cp=2':>12}  {'rel err':>9}")
    for i, (a, b) in enumerate(zip(reference["losses"], ring["losses"]), 1):
        print(f"{i:>4}  {a:>12.6f}  {b:>12.6f}  {abs(a - b) / abs(a):>9.2e}")
    verdict = compare(reference, ring, LOSS_RTOL, GRAD_RTOL)
    print(f"first-step gradients: worst relative error {verdict['grad_rel_err_max']:.2e} "
          f"({verdict['worst_tensor']}), tolerance {GRAD_RTOL:g}; loss tolerance {LOSS_RTOL:g}")
    print(f"wall: 1 process {t1 - t0:.1f} s, 2 ranks {t2 - t1:.1f} s")
    print("parity: PASS" if verdict["ok"] else "parity: FAIL")
    return 0 if verdict["ok"] else 1
