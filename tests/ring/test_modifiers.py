"""Softcap and attention sinks under CP, over gloo on 2 and 4 ranks (bf16, reference provider): the ring of every
strategy with each modifier alone and both, and a sliding layer's halo exchange with both, against one process
with the same kernels, dtype and modifiers. The sinks' gradient is compared summed over the group (each rank
holds its queries' share). Negative controls: the same runs with the sinks or the softcap dropped must fail.

Tolerance, fixed before measuring: the ring test's (relative Frobenius error <= 2e-2 for outputs, <= 3e-2 for
every gradient, the sinks' included): the modifiers add one fp32 merge per query and no bf16 rounding.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import rank_json

TOL = {"out": 2e-2, "dq": 3e-2, "dk": 3e-2, "dv": 3e-2, "dsinks": 3e-2}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return rank_json(tmp_path_factory, "tests.ring._modifiers_worker")


def _passes(per_rank: list[dict]) -> bool:
    return all(rel <= TOL[name] for m in per_rank for name, rel in m.items())


@pytest.mark.multiproc
@pytest.mark.parametrize("world", [2, 4])
def test_softcap_and_sinks_match_one_process(results, world):
    ranks = results[world]
    cases = [k for k in ranks[0] if k != "negative"]
    assert len(cases) == 12
    for case in cases:
        per_rank = [r[case] for r in ranks]
        assert _passes(per_rank), (case, json.dumps(per_rank))
        assert ("dsinks" in per_rank[0]) == case.endswith("True")


@pytest.mark.multiproc
@pytest.mark.parametrize("world", [2, 4])
def test_dropping_a_modifier_fails_the_same_check(results, world):
    negatives = results[world][0]["negative"]
    assert len(negatives) == 18
    for case in negatives:
        per_rank = [r["negative"][case] for r in results[world]]
        assert not _passes(per_rank), (case, "passed without its modifier", json.dumps(per_rank))
