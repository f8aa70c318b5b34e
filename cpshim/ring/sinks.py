"""Attention sinks (gpt-oss `s_aux`): one more logit per head in each query's softmax, with no value.

The ring, or a halo run, gives each query its output `o` and log-sum-exp `lse` over the keys it sees.
The sink joins once per query, after every key has been merged: lse' = logaddexp(lse, s) and
o' = o * exp(lse - lse'). That is exact, since the sink adds a term to the denominator and none to the
numerator. The backward is the kernels' own, run with (o', lse') in place of (o, lse). They recompute
P' = exp(scores - lse'), the probabilities with the sink in the denominator, and delta =
rowsum(dout * o'), which together make the softmax gradient over [scores, sink] at the keys. The sink's
own gradient is -sum over queries of P'_sink * delta. Nothing extra crosses the ring.
"""

from __future__ import annotations

from typing import Any


def _per_query(lse: Any) -> Any:
    """Kernel lse, (b, h, s) or varlen (h, total), as (b, s, h, 1) / (total, h, 1): next to the output."""
    return lse.transpose(-1, -2).unsqueeze(-1)


def merge(out: Any, lse: Any, sinks: Any) -> tuple[Any, Any]:
    """(o', lse') in the layouts of (out, lse); sinks (h,). A query that saw no key (lse +inf, the kernels'
    convention) gets the sink alone: output 0."""
    import torch

    q_lse = _per_query(lse).float()
    q_lse = torch.where(q_lse == float("inf"), torch.full_like(q_lse, float("-inf")), q_lse)
    merged = torch.logaddexp(q_lse, sinks.float().view(-1, 1))
    new_out = (out.float() * torch.exp(q_lse - merged)).to(out.dtype)
    return new_out, merged.squeeze(-1).transpose(-1, -2).contiguous()


def grad(dout: Any, out: Any, lse: Any, sinks: Any) -> Any:
    """d loss / d sinks (h,), from the merged output and lse (`merge`'s) and the output's gradient."""
    import torch

    delta = (dout.float() * out.float()).sum(-1, keepdim=True)
    p_sink = torch.exp(sinks.float().view(-1, 1) - _per_query(lse).float())
    return -(p_sink * delta).reshape(-1, sinks.shape[0]).sum(0).to(sinks.dtype)
