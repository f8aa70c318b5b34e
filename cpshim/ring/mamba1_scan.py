"""Mamba-1 (Jamba, Mamba, Falcon-Mamba, Zamba) under CP: upstream's scan, started from the carried state.

Upstream's full-sequence scan (`mamba_selective_scan`, or mamba-ssm's `selective_scan_fn` it dispatches to)
always starts from a zero state; its cache path reads the conv rows in chunked prefill, but not the SSM state.
The recurrence is linear in the state: h_t = dA_t * h_{t-1} + dB_t u_t, so a run started from h0 has
h_t = h0_t + (dA_1 ... dA_t) * h0, where h0_t is the zero-started state and the product is
exp(A * (dt_1 + ... + dt_t)) (dt after its bias and softplus, as upstream computes it). Its output
y_t = C_t . h_t is gated by silu(z) like the rest, and the D skip does not see the state. So cpshim runs
upstream's scan from zero and adds h0's part to the output and to the final state: exact, differentiable in h0
(the chain's backward returns its gradient), costing one (batch, channels, length, d_state) tensor per run, the
size of upstream's own discretized A. The conv rows and the state travel as for Mamba-2
(`cpshim.ring.carry_state`); the scan is swapped in the mixer's module only for the run's call.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def started_from(module_name: str, scan_name: str, state: Any) -> Iterator[None]:
    """Within: the module's `scan_name` starts from `state` (batch, channels, d_state), or, for Zamba's one
    scan per Mamba head, from `state[:, head]` (batch, heads, head channels, d_state) at the head-th call."""
    home = sys.modules[module_name]
    scan = home.__dict__[scan_name]
    parts = iter(state.unbind(1) if state.dim() == 4 else (state,))
    setattr(home, scan_name, lambda *args, **kwargs: _scan_from(scan, next(parts), *args, **kwargs))
    try:
        yield
    finally:
        setattr(home, scan_name, scan)


def _scan_from(scan: Any, h0: Any, u: Any, dt: Any, A: Any, B: Any, C: Any, D: Any = None, z: Any = None,
               delta_bias: Any = None, delta_softplus: bool = False, return_last_state: bool = False,
               **kwargs: Any) -> Any:
    """Upstream's scan from a zero state, plus h0's part. u, dt, z: (b, d, l); A: (d, n); B, C: (b, n, l)."""
    import torch
    import torch.nn.functional as F

    out, last = scan(u, dt, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                     return_last_state=True, **kwargs)
    step = dt.float() if delta_bias is None else dt.float() + delta_bias.float()[..., None]
    if delta_softplus:
        step = F.softplus(step)
    carried = torch.exp(A.float()[None, :, None, :] * step.cumsum(-1)[..., None]) * h0.float()[:, :, None, :]
    y = (carried * C.float().transpose(1, 2)[:, None]).sum(-1)
    if z is not None:
        y = y * F.silu(z.float())
    out = out + y.to(out.dtype)
    last = last + carried[:, :, -1].to(last.dtype)
    return (out, last) if return_last_state else out
