"""The attention lookup outside sharded steps, upstream against cpshim, side by side in one run.

  python bench/bench_dispatch.py [--number N]

Generation looks up the attention (and mask) function once per layer per token through
`GeneralInterface.__getitem__`, which cpshim wraps (`attention-dispatch`). Outside a sharded step the
wrapped lookup must cost <= 150 ns (target), in every mode, including after a ring-mode training step
(the case of GRPO/RLOO, which generate between training steps). Each figure is the best of 7 timeit
repeats, per lookup.
"""

from __future__ import annotations

import argparse
import timeit
import warnings

TARGET_NS = 150.0


def per_lookup_ns(stmt: str, env: dict, number: int) -> float:
    return min(timeit.repeat(stmt, globals=env, number=number, repeat=7)) / number * 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--number", type=int, default=200_000)
    number = ap.parse_args().number
    warnings.simplefilter("ignore")
    import transformers.trainer  # noqa: F401  (what a Trainer script has imported)
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    import cpshim
    from cpshim.ring import runtime

    env = {"attn": ALL_ATTENTION_FUNCTIONS, "mask": ALL_MASK_ATTENTION_FUNCTIONS}
    stmt = "attn['sdpa']; mask['sdpa']"
    rows = [("upstream (not patched)", per_lookup_ns(stmt, env, number) / 2)]
    cpshim.apply()
    rows.append(("cpshim.apply() (external mode)", per_lookup_ns(stmt, env, number) / 2))
    cpshim.enable()
    rows.append(("cpshim.enable() (ring mode, no step)", per_lookup_ns(stmt, env, number) / 2))
    runtime.set_step(object())  # a step in flight in this thread: the lookup routes (for scale only)
    rows.append(("(info) during a sharded step", per_lookup_ns(stmt, env, number) / 2))
    runtime.set_step(None)
    rows.append(("ring mode, after a sharded step", per_lookup_ns(stmt, env, number) / 2))
    cpshim.revert()
    base = rows[0][1]
    print(f"{'lookup (per call)':<42}{'ns':>8}{'x upstream':>12}")
    for name, ns in rows:
        verdict = "" if name.startswith("(info)") or name.startswith("upstream") else (
            "  OK" if ns <= TARGET_NS else "  MISS")
        print(f"{name:<42}{ns:>8.0f}{ns / base:>12.2f}{verdict}")
    print(f"target outside sharded steps: <= {TARGET_NS:.0f} ns per lookup")


if __name__ == "__main__":
    main()
