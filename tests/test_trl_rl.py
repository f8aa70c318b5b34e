"""The GRPO/RLOO generation split's pure parts (no TRL imported): joining the ranks' `_generate` results."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpshim.errors import ConfigurationError
from cpshim.patches.trl_rl import joined


@given(st.lists(st.integers(0, 5), min_size=1, max_size=4))
def test_joined_concatenates_per_completion_fields_in_rank_order(sizes):
    parts = [([[r, i] for i in range(n)], None, {"env": [f"{r}.{i}" for i in range(n)]}, [r] * n)
             for r, n in enumerate(sizes)]
    ids, none, extra, flat = joined(parts)
    assert ids == [[r, i] for r, n in enumerate(sizes) for i in range(n)]
    assert none is None
    assert extra == {"env": [f"{r}.{i}" for r, n in enumerate(sizes) for i in range(n)]}
    assert flat == [r for r, n in enumerate(sizes) for _ in range(n)]


def test_joined_keeps_a_total_every_rank_holds():
    """TRL < 1.9 returns the completion-token count gathered over every process: the same on each rank."""
    torch = pytest.importorskip("torch")
    assert joined([([1], torch.tensor(7)), ([2], torch.tensor(7))]) == ([1, 2], torch.tensor(7))
    with pytest.raises(ConfigurationError, match="type Tensor"):
        joined([(torch.tensor(7),), (torch.tensor(8),)])


def test_joined_refuses_what_it_cannot_join():
    with pytest.raises(ConfigurationError, match="cannot join a generation result of type int"):
        joined([(1,), (2,)])
