"""Run one loader scenario in a fresh interpreter and print a JSON verdict (import state is
process-global, so each scenario needs its own process). Usage: python _loader_probe.py SCENARIO"""

from __future__ import annotations

import json
import random
import sys
import types


def _transformers_state():
    import transformers.modeling_flash_attention_utils as fa

    mods = {k: id(v) for k, v in sys.modules.items() if k == "transformers" or k.startswith("transformers.")}
    return fa, dict(fa.__dict__), mods


def _unchanged(fa, fa_before, mods_before) -> dict:
    same_attrs = fa.__dict__.keys() == fa_before.keys() and all(fa.__dict__[k] is v for k, v in fa_before.items())
    same_mods = all(id(sys.modules.get(k)) == i for k, i in mods_before.items())
    return {"fa_utils_unchanged": same_attrs, "transformers_modules_unchanged": same_mods}


def _error(e: BaseException) -> dict:
    return {"type": type(e).__name__, "bases": [c.__name__ for c in type(e).__mro__], "msg": str(e),
            "cause": type(e.__cause__).__name__ if e.__cause__ else None}


def _llama3_parity(ring) -> dict:
    """Our pure llama3_local_params vs ring-flash-attn's own llama3_flash_attn_prepare_cu_seqlens."""
    import torch

    from cpshim.ring.sharding import llama3_local_params

    rng = random.Random(0)
    mismatches, cases = [], 0
    for _ in range(300):
        cp = rng.randint(1, 8)
        docs = [rng.randint(1, 20) for _ in range(rng.randint(1, 8))]
        if sum(docs) % cp:
            docs.append(cp - sum(docs) % cp)
        cu = torch.tensor([0] + torch.tensor(docs).cumsum(0).tolist(), dtype=torch.int32)
        for rank in range(cp):
            for causal in (True, False):
                cases += 1
                a = ring.llama3_flash_attn_prepare_cu_seqlens(cu, causal, rank, cp)
                b = llama3_local_params(cu, rank, cp, causal)
                same = (a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()
                        and int(a[2]) == b[2] and int(a[3]) == b[3] and a[4] == b[4])
                if not same:
                    mismatches.append([docs, rank, cp, causal])
    return {"cases": cases, "mismatches": mismatches[:5]}


def main(scenario: str) -> dict:
    import transformers  # noqa: F401

    if scenario == "no_transformers":
        for k in [k for k in sys.modules if k == "transformers" or k.startswith("transformers.")]:
            del sys.modules[k]
        sys.modules["transformers"] = None  # type: ignore[assignment]  # blocks the import
        from cpshim.ring.loader import load_ring_flash_attn

        try:
            load_ring_flash_attn("reference")
            return {"error": None}
        except Exception as e:
            left = [k for k in sys.modules if k.startswith("ring_flash_attn") or k.startswith("flash_attn")]
            return {"error": _error(e), "left_modules": left}

    fa, fa_before, mods_before = _transformers_state()
    had_ge = "is_flash_attn_greater_or_equal_2_10" in fa_before
    fake = None
    if scenario == "preexisting_flash_attn":
        import importlib.machinery

        fake = types.ModuleType("flash_attn")  # stands in for an installed (say broken) flash-attn
        fake.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None, is_package=True)
        sys.modules["flash_attn"] = fake
    if scenario == "not_installed":
        sys.modules["ring_flash_attn"] = None  # type: ignore[assignment]
    from cpshim.ring.loader import load_ring_flash_attn

    out: dict = {"had_ge_2_10": had_ge, "transformers": transformers.__version__}
    try:
        res = load_ring_flash_attn("reference")
    except Exception as e:
        out["error"] = _error(e)
        res = None
    out.update(_unchanged(fa, fa_before, mods_before))
    out["flash_attn_in_sys_modules"] = "flash_attn" in sys.modules
    out["flash_attn_iface_in_sys_modules"] = "flash_attn.flash_attn_interface" in sys.modules
    out["flash_attn_is_preexisting"] = fake is not None and sys.modules.get("flash_attn") is fake
    if res is not None:
        out["result"] = res.as_dict()
        again = load_ring_flash_attn("reference")
        out["second"] = {"already_imported": again.already_imported, "bound_same": again.bound == res.bound,
                         "module_same": again.module is res.module}
        import ring_flash_attn

        out["bound_identity"] = {
            m: all(getattr(sys.modules[m], n).__module__ == "cpshim.ring.providers.reference" for n in names)
            for m, names in res.bound.items()}
        if scenario == "load":
            out["llama3_parity"] = _llama3_parity(ring_flash_attn)
    if scenario == "not_installed":
        del sys.modules["ring_flash_attn"]  # unblock: the next scenario in this process imports for real
    if fake is not None:
        del sys.modules["flash_attn"]
    return out


if __name__ == "__main__":
    # Scenarios run in order in this one process: "a,b" checks that a leaves a state in which b works.
    print("CPSHIM_JSON=" + json.dumps({s: main(s) for s in sys.argv[1].split(",")}))
