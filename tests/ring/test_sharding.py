"""Sharding properties (hypothesis): shard/unshard is the identity, shards partition the sequence,
zigzag position_ids are the global positions permuted like the tokens, no label is lost at a shard
edge, and the llama3 varlen parameters give each local query exactly its document's causal keys."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cpshim.ring.errors import ShardingError
from cpshim.ring.sharding import (
    IGNORE_INDEX, STRATEGIES, build_position_ids, build_shift_labels, cu_seqlens_from_position_ids,
    llama3_local_params, multiple_for, packed_rows, pad_for_strategy, pad_position_ids, shard, shard_indices,
    shard_inputs, unshard,
)

RING = settings(max_examples=150)

strategy_st = st.sampled_from(STRATEGIES)
cp_st = st.integers(1, 8)


@RING
@given(strategy=strategy_st, cp=cp_st, k=st.integers(1, 6), batch=st.integers(1, 3), seq_dim=st.integers(0, 2))
def test_shard_then_unshard_is_identity(strategy, cp, k, batch, seq_dim):
    n = multiple_for(strategy, cp) * k
    shape = [batch, 3, 2]
    shape.insert(seq_dim, n)
    x = torch.randperm(int(torch.tensor(shape).prod())).reshape(shape)  # distinct values
    shards = [shard(x, seq_dim, r, cp, strategy) for r in range(cp)]
    assert all(s.shape[seq_dim] == n // cp for s in shards)
    assert torch.equal(unshard(shards, seq_dim, cp, strategy), x)
    assert torch.equal(unshard(torch.cat(shards, seq_dim), seq_dim, cp, strategy), x)  # all_gather + cat form


@RING
@given(strategy=strategy_st, cp=cp_st, k=st.integers(1, 6))
def test_shards_partition_positions(strategy, cp, k):
    n = multiple_for(strategy, cp) * k
    idx = torch.cat([shard_indices(n, r, cp, strategy) for r in range(cp)])
    assert torch.equal(idx.sort().values, torch.arange(n))


@RING
@given(cp=cp_st, k=st.integers(1, 6), batch=st.integers(1, 3), data=st.data())
def test_zigzag_position_ids_are_global_positions_permuted_like_tokens(cp, k, batch, data):
    n = 2 * cp * k
    tokens = torch.randint(0, 1000, (batch, n), generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
    pos = build_position_ids(batch, n)
    chunks = torch.arange(n).chunk(2 * cp)
    for r in range(cp):
        local_pos = shard(pos, 1, r, cp, "zigzag")
        expected = torch.cat([chunks[r], chunks[2 * cp - 1 - r]])  # independent statement of zigzag
        assert torch.equal(local_pos, expected.expand(batch, -1))
        assert torch.equal(tokens.gather(1, local_pos), shard(tokens, 1, r, cp, "zigzag"))


@RING
@given(strategy=strategy_st, cp=cp_st, n=st.integers(2, 70))
def test_shift_labels_built_before_sharding_keep_every_target(strategy, cp, n):
    labels = torch.randint(0, 50, (2, n))
    shift = pad_for_strategy(build_shift_labels(labels), 1, cp, strategy, IGNORE_INDEX)
    total = shift.shape[1]
    assert total % multiple_for(strategy, cp) == 0 and total - n < multiple_for(strategy, cp)
    targets = torch.full((2, total + 1), IGNORE_INDEX)
    targets[:, :n] = labels
    for r in range(cp):
        idx = shard_indices(total, r, cp, strategy)
        assert torch.equal(shard(shift, 1, r, cp, strategy), targets[:, idx + 1])  # token p predicts p + 1
    assert int((shift != IGNORE_INDEX).sum()) == 2 * (n - 1)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_unpadded_length_is_refused(strategy):
    with pytest.raises(ShardingError, match="pad"):
        shard(torch.zeros(1, multiple_for(strategy, 4) + 1), 1, 0, 4, strategy)
    with pytest.raises(ShardingError):
        shard(torch.zeros(1, 8), 1, 4, 4, strategy)  # rank outside the group
    with pytest.raises(ShardingError):
        shard(torch.zeros(1, 8), 1, 0, 2, "stripe")


doc_lengths = st.lists(st.integers(1, 12), min_size=1, max_size=8)


@RING
@given(docs=doc_lengths, rows=st.integers(1, 3))
def test_cu_seqlens_from_restarting_position_ids(docs, rows):
    row = torch.cat([torch.arange(n) for n in docs])
    cu = cu_seqlens_from_position_ids(row.expand(rows, -1))
    one = [0] + torch.tensor(docs).cumsum(0).tolist()
    want = sorted({r * one[-1] + c for r in range(rows) for c in one})
    assert cu.dtype == torch.int32 and cu.tolist() == want


@RING
@given(docs=doc_lengths, cp=cp_st, causal=st.booleans())
def test_llama3_params_give_each_query_its_document_keys(docs, cp, causal):
    """Independent check of the contiguous varlen split: with bottom-right alignment, local query at
    global position p of document [s, e) sees exactly keys [s, p] (causal) or [s, e) (not)."""
    total = sum(docs)
    pad = (-total) % cp
    docs = docs + ([pad] if pad else [])
    cu = torch.tensor([0] + torch.tensor(docs).cumsum(0).tolist(), dtype=torch.int32)
    n = int(cu[-1]) // cp
    start_of = torch.repeat_interleave(cu[:-1], torch.tensor(docs)).tolist()
    end_of = torch.repeat_interleave(cu[1:], torch.tensor(docs)).tolist()
    for r in range(cp):
        cu_q, cu_k, max_q, max_k, ks = llama3_local_params(cu, r, cp, causal)
        assert int(cu_q[0]) == 0 and int(cu_q[-1]) == n and len(cu_q) == len(cu_k)
        assert ks.stop - ks.start == int(cu_k[-1])
        assert max_q == int((cu_q[1:] - cu_q[:-1]).max()) and max_k == int((cu_k[1:] - cu_k[:-1]).max())
        for i in range(len(cu_q) - 1):
            qlen, klen = int(cu_q[i + 1] - cu_q[i]), int(cu_k[i + 1] - cu_k[i])
            kstart = ks.start + int(cu_k[i])
            for t in range(qlen):
                p = r * n + int(cu_q[i]) + t
                assert kstart == start_of[p]
                last = kstart + t + klen - qlen if causal else kstart + klen - 1
                assert last == (p if causal else end_of[p] - 1)


@RING
@given(docs=doc_lengths, cp=cp_st, rows=st.integers(1, 2))
def test_shard_inputs_varlen_packs_pads_and_keeps_document_positions(docs, cp, rows):
    row_pos = torch.cat([torch.arange(n) for n in docs])
    pos = row_pos.expand(rows, -1).clone()
    ids = torch.randint(1, 100, pos.shape)
    labels = ids.clone()
    parts = [shard_inputs(ids, rank=r, cp=cp, strategy="varlen", labels=labels, position_ids=pos) for r in range(cp)]
    full_pos = pad_position_ids(pos.reshape(1, -1), cp, "varlen")
    assert torch.equal(unshard([p.position_ids for p in parts], 1, cp, "varlen"), full_pos)
    assert torch.equal(parts[0].cu_seqlens, cu_seqlens_from_position_ids(full_pos))
    assert parts[0].global_len % cp == 0 and parts[0].padding == parts[0].global_len - ids.numel()
    ids_back = unshard([p.input_ids for p in parts], 1, cp, "varlen")
    assert torch.equal(ids_back[:, :ids.numel()], ids.reshape(1, -1))
    shift = unshard([p.shift_labels for p in parts], 1, cp, "varlen")
    assert torch.equal(shift[:, :ids.numel()], build_shift_labels(labels).reshape(1, -1))
    assert bool((shift[:, ids.numel():] == IGNORE_INDEX).all())


@RING
@given(strategy=st.sampled_from(["zigzag", "contiguous"]), cp=cp_st, n=st.integers(1, 40))
def test_shard_inputs_dense_positions_continue_through_padding(strategy, cp, n):
    ids = torch.randint(1, 100, (2, n))
    parts = [shard_inputs(ids, rank=r, cp=cp, strategy=strategy, labels=ids) for r in range(cp)]
    pos = unshard([p.position_ids for p in parts], 1, cp, strategy)
    assert torch.equal(pos, torch.arange(pos.shape[1]).expand(2, -1))
    assert parts[0].cu_seqlens is None


@RING
@given(length=st.integers(1, 12), data=st.data())
def test_packed_rows_follows_transformers_own_rule(length, data):
    """`packed_rows` (which makes zigzag/contiguous refuse a batch) says "several documents" exactly when
    transformers' find_packed_sequence_indices puts some token of the same position_ids in a later document
    than the first: documents of drawn lengths restarting at 0, an offset start, or arbitrary positions."""
    masking = pytest.importorskip("transformers.masking_utils")
    find = getattr(masking, "find_packed_sequence_indices", None)
    if find is None:
        pytest.skip("this transformers has no find_packed_sequence_indices")
    rows = []
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["docs", "offset", "any"]))
        if kind == "docs":
            docs = data.draw(st.lists(st.integers(1, length), min_size=1, max_size=4))
            row = [i for n in docs for i in range(n)][:length]
            row += list(range(length - len(row)))
        elif kind == "offset":
            start = data.draw(st.integers(0, 5))
            row = list(range(start, start + length))
        else:
            row = data.draw(st.lists(st.integers(0, 6), min_size=length, max_size=length))
        rows.append(row)
    pos = torch.tensor(rows)
    found = find(pos)  # 5.x: None for one document per row; 4.56-4.57 always return the sequence indices
    assert packed_rows(pos) == (found is not None and bool((found[:, -1] != 0).any()))
