"""Time and peak memory of one kernel provider's forward + backward (ring-style raw calls).

    python bench/bench_ring_provider.py [--provider reference] [--seqs 2048,4096,8192,16384]
        [--heads 4 --kv-heads 2 --head-dim 64 --dtype bfloat16 --device cpu]

Each sequence length runs in a fresh subprocess so peak RSS (CPU) is per size; on CUDA the peak is
torch.cuda.max_memory_allocated. Prints one row per length and a JSON line. For the CUDA provider vs
SDPA's flash backend see tests/ring/gpu_check.py.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def one(a) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from cpshim.ring.providers import get_provider

    torch.manual_seed(0)
    P = get_provider(a.provider)
    dt = getattr(torch, a.dtype)
    S, h, hk, d = a.seq, a.heads, a.kv_heads, a.head_dim
    q = torch.randn(1, S, h, d, dtype=dt, device=a.device)
    k, v = (torch.randn(1, S, hk, d, dtype=dt, device=a.device) for _ in range(2))
    dout = torch.randn_like(q)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    common = dict(dropout_p=0.0, softmax_scale=d ** -0.5, causal=True, window_size_left=-1, window_size_right=-1,
                  softcap=0.0, alibi_slopes=None)
    sync()
    t0 = time.perf_counter()
    out, lse, _, _ = P.forward(q=q, k=k, v=v, return_softmax=False, **common)
    sync()
    t1 = time.perf_counter()
    P.backward(dout=dout, q=q, k=k, v=v, out=out, softmax_lse=lse, dq=dq, dk=dk, dv=dv, deterministic=False, **common)
    sync()
    t2 = time.perf_counter()
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if a.device == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)
    return {"seq": S, "fwd_s": t1 - t0, "bwd_s": t2 - t1, "peak_extra_mib": peak,
            "score_matrix_mib": S * S * h * 4 / 2 ** 20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--provider", default="reference")
    ap.add_argument("--seqs", default="2048,4096,8192,16384")
    ap.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    if a.seq:
        print("ROW=" + json.dumps(one(a)))
        return
    rows = []
    print(f"provider={a.provider} heads={a.heads}/{a.kv_heads} d={a.head_dim} {a.dtype} {a.device}, causal, batch 1")
    print(f"{'seq':>6} {'fwd s':>8} {'bwd s':>8} {'peak extra MiB':>15} {'(full S*S*h fp32 MiB)':>22}")
    for s in (int(x) for x in a.seqs.split(",")):
        argv = [sys.executable, __file__, "--seq", str(s)] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
                                                                if k not in ("seq", "seqs")]
        line = [ln for ln in subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()
                if ln.startswith("ROW=")][-1]
        r = json.loads(line[4:])
        rows.append(r)
        print(f"{r['seq']:>6} {r['fwd_s']:>8.2f} {r['bwd_s']:>8.2f} {r['peak_extra_mib']:>15.0f} "
              f"{r['score_matrix_mib']:>22.0f}", flush=True)
    print("JSON=" + json.dumps(rows))


if __name__ == "__main__":
    main()
