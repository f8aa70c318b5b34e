"""Mamba-1 and Mamba-2 (SSD) under CP: upstream's scan run from a zero state, the carried state's part added after.

Both recurrences are linear in the state: h_t = dA_t * h_{t-1} + dB_t x_t, so a run started from h0 has
h_t = h0_t + (dA_1 ... dA_t) * h0, where h0_t is the zero-started state and the product is exp(A * (dt_1 + ...
+ dt_t)) (dt after its bias, softplus and clamp, as upstream computes it). The output C_t . h_t gains
C_t . (decay_t * h0) (Mamba-1 gates it by silu(z) like the rest); the D skip does not see the state; the final
state gains decay_L * h0. So cpshim runs upstream's own scan (or the kernel it dispatches to) from zero and adds
h0's part: exact, differentiable in h0, one (batch, length, heads, head_dim) product per run, far cheaper than
the scan.

Why this form, and not the state handed to the scan: h0 is read after the run's own scan. A run whose state
comes from another rank scans while that rank is still scanning the run before it, then waits only for the
state and adds its part (`cpshim.ring.carry_state` hands the scan a pending receive). The state still travels
point to point along the sequence, but the scans of the CP group run side by side instead of one after another.
Mamba-1's full-sequence scan (`mamba_selective_scan`, mamba-ssm's `selective_scan_fn`) takes no initial state
at all, so for it this is the only way. The scan is swapped in the mixer's module only for the run's call.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def started_from(module_name: str, scan_name: str, form: str, state: Any, read: Callable[[], None]
                 ) -> Iterator[None]:
    """Within: the module's `scan_name` (of `form`: "mamba1" or "ssd") starts from `state`, a tensor or a callable
    returning one (called once, after the first zero-started scan: the receive from the previous run's rank);
    for Zamba's one Mamba-1 scan per head, `state[:, head]` (batch, heads, head channels, d_state) at the
    head-th call. `read()` is called when the state is taken (the carry's tripwire counts it)."""
    from .runtime import swapped

    scan = sys.modules[module_name].__dict__[scan_name]
    add: Callable[..., Any] = _FORMS[form]
    got: list[Any] = []
    calls = itertools.count()

    def part(i: int) -> Any:
        if not got:
            got.append(state() if callable(state) else state)
            read()
        s = got[0]
        return s[:, i] if form == "mamba1" and s.dim() == 4 else s

    with swapped(module_name, scan_name, lambda *args, **kwargs: add(scan, part, next(calls), *args, **kwargs)):
        yield


def _mamba1_from(scan: Any, part: Any, call: int, u: Any, dt: Any, A: Any, B: Any, C: Any, D: Any = None,
                 z: Any = None, delta_bias: Any = None, delta_softplus: bool = False, return_last_state: bool = False,
                 **kwargs: Any) -> Any:
    """Mamba-1's scan from a zero state, plus h0's part. u, dt, z: (b, d, l); A: (d, n); B, C: (b, n, l)."""
    import torch
    import torch.nn.functional as F

    out, last = scan(u, dt, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                     return_last_state=True, **kwargs)
    h0 = part(call)
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


def _ssd_from(scan: Any, part: Any, call: int, hidden_states: Any, dt: Any, A: Any, B: Any, C: Any, chunk_size: int,
              D: Any = None, z: Any = None, dt_bias: Any = None, initial_states: Any = None, dt_softplus: bool = False,
              dt_limit: tuple[float, float] = (0.0, float("inf")), return_final_states: bool = False,
              **kwargs: Any) -> Any:
    """Mamba-2's chunked scan (`mamba2_chunk_scan`, mamba-ssm's `mamba_chunk_scan_combined`) from a zero state,
    plus h0's part. hidden_states: (b, l, h, p); dt: (b, l, h); A: (h,); B, C: (b, l, g, n); h0: (b, h, p, n)."""
    import torch
    import torch.nn.functional as F

    from .tripwires import TripwireError

    if initial_states is not None or z is not None:
        raise TripwireError("cpshim ring mode: a Mamba-2 mixer passed its scan "
                            f"{'an initial state' if initial_states is not None else 'a gate z'} on a sharded step, "
                            "which this transformers release did not when cpshim checked it: report it to cpshim")
    out, final = scan(hidden_states, dt, A, B, C, chunk_size, D=D, z=None, dt_bias=dt_bias, initial_states=None,
                      dt_softplus=dt_softplus, dt_limit=dt_limit, return_final_states=True, **kwargs)
    h0 = part(call)
    step = dt.float() if dt_bias is None else dt.float() + dt_bias.float()
    if dt_softplus:
        step = F.softplus(step)
    step = torch.clamp(step, min=dt_limit[0], max=dt_limit[1])
    decay = torch.exp(torch.cumsum(A.float() * step, dim=1))  # (b, l, h)
    heads, groups = hidden_states.shape[2], C.shape[2]
    Ch = C.float().repeat_interleave(heads // groups, dim=2)
    y = torch.einsum("blhn,bhpn->blhp", Ch, h0.float()) * decay[..., None]
    out = out + y.to(out.dtype)
    final = final + (decay[:, -1, :, None, None] * h0.float()).to(final.dtype)
    return (out, final) if return_final_states else out


_FORMS: dict[str, Callable[..., Any]] = {"mamba1": _mamba1_from, "ssd": _ssd_from}
