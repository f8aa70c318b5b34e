"""Left-padded rows under the ring (GRPO's prompts): rolled to right padding at the backbone's entry and back at
its exit (`cpshim.ring.layout.roll`). Hypothesis over batch, length, each row's padding before and after: the
rolled mask is right padding only, every real token keeps its position id, the keys a real token reaches
causally after the roll are exactly the real tokens up to it (what one process's padding mask allows), and
rolling back is the identity, gradient included."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cpshim.ring import layout
from cpshim.ring.sharding import build_position_ids


@st.composite
def padded_masks(draw):
    batch, length = draw(st.integers(1, 4)), draw(st.integers(2, 40))
    mask = torch.zeros(batch, length, dtype=torch.long)
    for row in range(batch):
        real = draw(st.integers(1, length))
        lead = draw(st.integers(0, length - real))
        mask[row, lead:lead + real] = 1
    return mask


@settings(max_examples=200)
@given(mask=padded_masks())
def test_roll_gives_right_padding_and_the_same_causal_keys(mask):
    batch, length = mask.shape
    lead = layout.left_padding(mask)
    if lead is None:
        assert not bool((mask[:, 0] == 0).any())
        return
    pos = build_position_ids(batch, length, mask.device)
    rolled_mask, rolled_pos = layout.roll(mask, lead), layout.roll(pos, lead)
    origin = layout.roll(torch.arange(length).expand(batch, length), lead)  # original index of each rolled slot
    for row in range(batch):
        real = int(mask[row].sum())
        assert rolled_mask[row, :real].all() and not rolled_mask[row, real:].any()  # right padding only
        assert torch.equal(rolled_pos[row, :real], pos[row][mask[row].bool()])  # each token's own position id
        for i in range(real):  # causal keys of rolled query i: slots 0..i
            keys = set(origin[row, : i + 1].tolist())
            assert keys == set(range(int(lead[row]), int(lead[row]) + i + 1))


@settings(max_examples=50)
@given(mask=padded_masks(), width=st.integers(1, 3))
def test_roll_back_is_the_identity_and_differentiable(mask, width):
    lead = layout.left_padding(mask)
    if lead is None:
        return
    x = torch.randn(*mask.shape, width, requires_grad=True)
    y = layout.roll(layout.roll(x, lead), -lead)
    assert torch.equal(y, x)
    (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
    assert torch.equal(x.grad, torch.arange(x.numel()).reshape(x.shape).float())
