"""The architecture table as shipped: generated from its results, every type classified, nothing failing.

`compat_matrix/architectures.py` writes compat_matrix/ARCHITECTURES.md and cpshim/_data/architectures.json
from compat_matrix/architecture-runs.json (the runs); `cpshim.compat.architecture` reads the data.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

import cpshim.compat
from tests.helpers import ROOT

_spec = importlib.util.spec_from_file_location("cpshim_architectures", ROOT / "compat_matrix" / "architectures.py")
table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table)
RESULTS = json.loads(table.RESULTS.read_text())


def test_the_table_and_the_shipped_data_are_rendered_from_the_results():
    assert table.main(["--check"]) == 0, "run python compat_matrix/architectures.py --render"


def test_every_type_of_its_transformers_is_classified_and_none_fails():
    rows = RESULTS["rows"]
    assert len(rows) == RESULTS["types"] == len({r["type"] for r in rows})
    assert {r["verdict"] for r in rows} <= {"exact", "refused", "not built"}, \
        [r["type"] for r in rows if r["verdict"] not in ("exact", "refused", "not built")]
    for r in rows:
        assert r["verdict"] == "exact" or r.get("reason"), f"{r['type']} is {r['verdict']} without a reason"


def test_an_exact_row_is_within_the_rule_it_states():
    rule = RESULTS["rule"]
    exact = [r for r in RESULTS["rows"] if r["verdict"] == "exact"]
    assert exact
    for r in exact:
        f = r["figures"]
        assert f["loss_rel_err"] <= rule["loss_rtol"] and f["grad_rel_err_max"] <= rule["grad_rtol"], r
        assert f["control_grad_rel_err_max"] > rule["grad_rtol"], f"{r['type']}: its negative control passed"


@pytest.mark.parametrize("model_type, verdict, says", [
    ("llama", "exact", ""),
    ("gemma3_text", "exact", ""),
    ("gpt_oss", "exact", ""),
    ("deepseek_v3", "exact", ""),
    ("qwen3_next", "exact", ""),
    ("lfm2", "exact", ""),
    ("bamba", "exact", ""),
    ("falcon_h1", "exact", ""),  # attention and Mamba-2 side by side in each `hybrid` layer
    ("mamba2", "exact", ""),  # no attention and no position_ids: it reads no positions
    ("jamba", "exact", ""),  # Mamba-1: upstream's zero-started scan plus the carried state's part
    ("zamba", "exact", ""),  # Mamba-1 with one scan per head
    ("diffllama", "exact", "exact in fp16"),  # bf16 rounding over the rule, exact in fp16
    ("gpt_neox_japanese", "refused", "did not run ring attention"),  # inline attention, named `attention`
    ("bart", "refused", "takes no position_ids"),
    ("roberta", "refused", "padding_idx + 1"),
])
def test_compat_architecture_reads_the_row(model_type, verdict, says):
    row = cpshim.compat.architecture(model_type)
    assert (row.verdict, row.transformers) == (verdict, RESULTS["transformers"])
    assert says in row.reason and row.exact == (verdict == "exact")
    assert row.features == tuple(next(r for r in RESULTS["rows"] if r["type"] == model_type)["features"])


def test_a_type_outside_the_table_is_unknown_with_what_to_do():
    row = cpshim.compat.architecture("no_such_type")
    assert row.verdict == "unknown" and not row.exact
    assert "cpshim check --model no_such_type" in row.reason
