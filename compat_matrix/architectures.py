"""The architecture table: every model type of the installed transformers under ring CP, classified by a run.

    python compat_matrix/architectures.py                  # every type (what `nox -s architectures` runs; long)
    python compat_matrix/architectures.py --types llama,gemma3_text   # some types, merged into the table
    python compat_matrix/architectures.py --render         # ARCHITECTURES.md and the shipped data from the results
    python compat_matrix/architectures.py --check          # exit 1 when either is out of date

Types: transformers' causal-LM mapping and its image-text-to-text mapping. Each gets a tiny model from its
own default config (`cpshim.ring.shrink`, no hub) and one verdict:
- `exact`: ring CP=2 (zigzag, 64 tokens, a copy task, real Trainer, SGD, 2 steps) matches one process:
  per-step loss within LOSS_RTOL, every tensor's first-step update within GRAD_RTOL (relative, Frobenius);
  a tensor whose one-process update is below FLOOR x the largest tensor's is judged against that scale;
  and the negative control (no KV exchange: each rank attends to its own shard; a model without attention,
  pure Mamba-2: no state passed between shards) misses the same check.
  Both sides compute attention in bf16; a type that misses in bf16 is run again in fp16, and is exact if it
  passes there (rounding shrinks ~8x with 3 more mantissa bits; a CP error does not).
  Vision-language types train text-only batches here (image batches: `tests/architectures`).
- `refused`: ring mode refuses it, with the reason it names (from the config, or when the run starts).
- `not built`: no tiny model could be built or trained in one process (the reason).
- `FAILS`: ring mode ran it and did not match one process, or crashed: the table fails (exit 1).
Results: compat_matrix/architecture-runs.json; rendered to compat_matrix/ARCHITECTURES.md and
cpshim/_data/architectures.json (`cpshim.compat.architecture(model_type)`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "compat_matrix" / "architecture-runs.json"  # not results/: those are the cells
TABLE = ROOT / "compat_matrix" / "ARCHITECTURES.md"
DATA = ROOT / "cpshim" / "_data" / "architectures.json"
LOSS_RTOL, GRAD_RTOL, FLOOR = 1e-3, 2e-2, 1e-3
CASE = {"strategy": "zigzag", "batch": 1, "seq_len": 64, "steps": 2}
VERDICTS = ("exact", "refused", "not built", "FAILS")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def model_types() -> list[str]:
    from transformers.models.auto import modeling_auto as m

    return sorted(set(m.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | set(m.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES))


def classify(types: list[str], chunk: int = 30, timeout: int = 600) -> dict[str, dict]:
    """Config verdict and tiny build per type, `chunk` types per interpreter; a type that kills its
    interpreter (memory cap, segfault, timeout) is `not built` with what happened."""
    rows: dict[str, dict] = {}
    todo = list(types)
    while todo:
        batch = todo[:chunk]
        code = f"from compat_matrix.architecture_worker import classify; classify({batch!r})"
        try:
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                                  cwd=ROOT, timeout=timeout)
            out, tail = proc.stdout, f"exit {proc.returncode}: {proc.stderr[-300:]}"
        except subprocess.TimeoutExpired as e:
            out, tail = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timed out"
        for line in out.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                rows[row["type"]] = row
        done = [t for t in batch if t in rows]
        if len(done) < len(batch):  # the first type without a line killed the interpreter
            dead = batch[len(done)]
            rows[dead] = {"type": dead, "verdict": "not built", "reason": f"the interpreter died ({tail.strip()})"}
        todo = [t for t in todo if t not in rows]
        print(f"classified {len(rows)}/{len(types)}", file=sys.stderr, flush=True)
    return rows


def parity(types: list[str], chunk: int = 8, timeout: int = 900, dtype: str = "bfloat16") -> dict[str, dict]:
    """The parity verdict per type in `dtype` (both sides); launches restart after the first case that raises
    or hangs."""
    import torch

    from cpshim.ring.launch import run_ranks
    from cpshim.ring.parity import compare

    verdicts: dict[str, dict] = {}
    todo = list(types)
    while todo:
        batch = todo[:chunk]
        cases = [{**CASE, "id": t, "model": f"auto:{t}", "ring_dtype": dtype} for t in batch]
        controls = [c for case in cases for c in (case, {**case, "negative": True})]  # ring: case, its control
        out = tempfile.mkdtemp(prefix="cpshim-table-")
        code = "from compat_matrix.architecture_worker import parity; parity({!r}, {!r}, {})"
        failure = ""
        try:
            subprocess.run([sys.executable, "-c", code.format(json.dumps(cases), out, 1)], capture_output=True,
                           env=_env(), cwd=ROOT, timeout=timeout)
            run_ranks(code.format(json.dumps(controls), out, 2), 2, env={"PYTHONPATH": _env()["PYTHONPATH"]},
                      timeout=timeout, cwd=str(ROOT))
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            failure = str(e)[-600:]
        for i, t in enumerate(batch):
            paths = [os.path.join(out, name) for name in (f"ref-{i}.pt", f"ring-{2 * i}.pt", f"ring-{2 * i + 1}.pt")]
            ref, ring, negative = (torch.load(p, weights_only=False) if os.path.exists(p) else None for p in paths)
            verdict, stop = _judge(ref, ring, negative, failure, dtype, compare)
            verdicts[t] = verdict
            if stop:  # a launch stopped at this case: the next one starts after it
                break
        todo = [t for t in todo if t not in verdicts]
        print(f"parity {len(verdicts)}/{len(types)}", file=sys.stderr, flush=True)
    return verdicts


def _judge(ref: dict | None, ring: dict | None, negative: dict | None, failure: str, dtype: str,
           compare) -> tuple[dict, bool]:
    """(the type's verdict, whether a launch stopped at it). Exact needs the ring within the rule AND its
    negative control (every rank attending to its own shard only) outside it: on a tiny model where local
    attention passes the check, the check proves nothing."""
    if ref is not None and "error" in ref:
        return {"verdict": "not built", "reason": f"the tiny model does not train: {ref['error']}"}, True
    if ref is None:
        return {"verdict": "not built", "reason": f"the one-process run died: {failure or 'no result'}"}, True
    if ring is None:
        return {"verdict": "FAILS", "reason": f"the ring run did not finish: {failure or 'no result'}"}, True
    if "error" in ring:
        return {"verdict": "refused" if ring["cpshim"] else "FAILS", "reason": ring["error"]}, not ring["cpshim"]
    got = compare(ref, ring, LOSS_RTOL, GRAD_RTOL, floor=FLOOR)
    figures = {**{k: got[k] for k in ("loss_rel_err", "grad_rel_err_max", "worst_tensor")}, "dtype": dtype}
    if negative is None or "error" in negative:
        why = negative["error"] if negative else failure or "no result"
        return {"verdict": "FAILS", "figures": figures, "reason": f"the negative control did not run: {why}"}, True
    control = compare(ref, negative, LOSS_RTOL, GRAD_RTOL, floor=FLOOR)
    figures["control_grad_rel_err_max"] = control["grad_rel_err_max"]
    if control["ok"]:
        return {"verdict": "FAILS", "figures": figures, "reason": "the negative control (no KV exchange) passes the "
                "check too: on this tiny model it cannot tell local attention from the ring"}, False
    return {"verdict": "exact" if got["ok"] else "FAILS", "figures": figures,
            "reason": "" if got["ok"] else "ring CP=2 does not match one process"}, False


def run(types: list[str] | None) -> dict:
    import torch
    import transformers

    every = model_types()
    rows = classify(types or every)
    ran = parity([t for t, r in rows.items() if r["verdict"] == "runs"])
    # A mismatch in bf16 is run again in fp16 (3 more mantissa bits): a CP error stays, rounding shrinks ~8x
    again = parity([t for t, v in ran.items() if v["verdict"] == "FAILS" and v.get("figures")], dtype="float16")
    for t, v in again.items():
        if v["verdict"] == "exact":
            ran[t] = {**v, "reason": f"bf16 rounding over the rule (worst update err "
                                     f"{ran[t]['figures']['grad_rel_err_max']:.1e}); exact in fp16"}
    for t, v in ran.items():
        rows[t].update(v)
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() and types else {"rows": []}
    if types and old.get("transformers") != transformers.__version__:
        old = {"rows": []}
    merged = {r["type"]: r for r in old["rows"]}
    merged.update(rows)
    return {"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0],
            "types": len(every), "rule": {"loss_rtol": LOSS_RTOL, "grad_rtol": GRAD_RTOL, "floor": FLOOR, **CASE},
            "rows": [merged[t] for t in sorted(merged)]}


def render(results: dict) -> tuple[str, str]:
    """(ARCHITECTURES.md, the shipped data) from the results."""
    from cpshim.ring.vlm import IMAGE_BATCHES_EXACT  # no torch: the list of VLMs whose image batches are exact

    rows = results["rows"]
    counts = {v: sum(r["verdict"] == v for r in rows) for v in VERDICTS}
    rule = results["rule"]
    lines = [
        f"# Model types under ring CP (transformers {results['transformers']}, torch {results['torch']})", "",
        "Generated by `python compat_matrix/architectures.py` (`nox -s architectures`); do not edit.", "",
        f"{len(rows)} of the {results['types']} types of transformers' causal-LM and image-text-to-text mappings: "
        + ", ".join(f"{counts[v]} {v}" for v in VERDICTS) + ".", "",
        f"`exact`: ring CP=2 ({rule['strategy']}, {rule['seq_len']} tokens, batch {rule['batch']}, "
        f"{rule['steps']} SGD steps of a real Trainer on a copy task) matches one process: per-step loss within "
        f"{rule['loss_rtol']:g}, each tensor's first-step update within {rule['grad_rtol']:g} (relative, Frobenius; "
        f"a tensor whose update is below {rule['floor']:g} x the largest tensor's is judged at that scale), and its "
        "negative control (each rank attending to its own shard only; without attention, pure Mamba-2: no state "
        "passed between shards) misses the same check (its worst tensor's "
        "error in the column: on a model where local attention passes, the check would prove nothing). The "
        "model is the type's default config shrunk (`cpshim.ring.shrink`). Vision-language types train text-only "
        f"batches here; image batches are proven for {', '.join(f'`{t}`' for t in IMAGE_BATCHES_EXACT)} "
        "(`tests/architectures`) and refused for the others. "
        "Attention runs in bf16 on both sides; a type that misses in bf16 is run again in fp16 and is exact if it "
        "passes there (the dtype column; its reason gives the bf16 figure). "
        "`refused`: ring mode refuses it with this reason. `not built`: no tiny model (the reason). A type in "
        "none of these is a failure of the table.", "",
        "| model type | verdict | features | dtype | loss err | worst update err | control's worst | reason |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r.get("figures") or {}
        errs = tuple(f"{f[k]:.1e}" if k in f else "" for k in ("loss_rel_err", "grad_rel_err_max",
                                                                  "control_grad_rel_err_max"))
        reason = (r.get("reason") or "").replace("|", "\\|").replace("\n", " ")
        dtype = {"bfloat16": "bf16", "float16": "fp16"}.get(f.get("dtype", ""), "")
        lines.append(f"| `{r['type']}` | {r['verdict']} | {', '.join(r.get('features', []))} | {dtype} | {errs[0]} | "
                     f"{errs[1]} | {errs[2]} | {reason[:300]} |")
    data = {"schema": 1, "transformers": results["transformers"], "torch": results["torch"],
            "rule": rule, "types": {r["type"]: {k: r[k] for k in ("verdict", "reason", "features", "figures")
                                                if r.get(k)} for r in rows}}
    return "\n".join(lines) + "\n", json.dumps(data, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--types", help="comma-separated model types (default: every type)")
    parser.add_argument("--render", action="store_true", help="only render the results")
    parser.add_argument("--check", action="store_true", help="exit 1 when the rendered files are out of date")
    args = parser.parse_args(argv)
    if not (args.render or args.check):
        RESULTS.write_text(json.dumps(run(args.types.split(",") if args.types else None), indent=1) + "\n")
    results = json.loads(RESULTS.read_text())
    table, data = render(results)
    if args.check:
        stale = [str(p.relative_to(ROOT)) for p, text in ((TABLE, table), (DATA, data))
                 if not p.exists() or p.read_text() != text]
        if stale:
            print(f"out of date: {', '.join(stale)} (run python compat_matrix/architectures.py --render)")
        return 1 if stale else 0
    TABLE.write_text(table)
    DATA.write_text(data)
    fails = [r["type"] for r in results["rows"] if r["verdict"] not in VERDICTS[:3]]
    print(f"{TABLE.relative_to(ROOT)}: " + ", ".join(f"{sum(r['verdict'] == v for r in results['rows'])} {v}"
                                                   for v in VERDICTS))
    if fails:
        print(f"FAILS (neither exact nor refused): {', '.join(fails)}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
