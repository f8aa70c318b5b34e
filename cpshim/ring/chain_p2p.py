"""The state's point-to-point exchange along the chain (`cpshim.ring.carry_state`): a run's state to the next
run's rank, its gradient back, as autograd functions.

Sends are posted (isend), not blocking, both ways. A run that is sent a state from another rank takes it late
(Mamba's zero-started scan adds its part after running), so a blocking send would hold the sending rank idle
until then, instead of letting it run its next run; in backward a run's state gradient leaves early. A
forward's sends are waited for at the end of the layer's call (the next run's rank receives them within its
own call of that layer); the backward's are kept until complete. Receives block.
"""

from __future__ import annotations

import functools
from typing import Any


def send(state: Any, peer: int, tag: int, posted: list) -> Any:
    """Posts `state` to `peer` (appended to `posted`, to wait for); returns an empty token whose backward receives
    the state's gradient (the caller adds it to the layer's output, so that it runs)."""
    return send_function().apply(state, peer, tag, posted)


#: gradient sends posted in backward, kept until complete (their buffers with them)
_in_flight: list[Any] = []


class _Posted:
    """An isend and the float32 buffer it sends from, alive until it completes."""

    def __init__(self, work: Any, buffer: Any) -> None:
        self.work, self.buffer = work, buffer

    def wait(self) -> None:
        self.work.wait()

    def is_completed(self) -> bool:
        return bool(self.work.is_completed())


def _post(tensor: Any, peer: int, tag: int) -> _Posted:
    import torch.distributed as dist

    buffer = tensor.detach().float().contiguous()
    return _Posted(dist.isend(buffer, peer, tag=tag), buffer)


@functools.lru_cache(maxsize=1)
def send_function() -> Any:
    import torch
    import torch.distributed as dist

    class Send(torch.autograd.Function):
        """Forward: the state to the next run's rank (float32). Backward: its gradient back from there (tag + 1)."""

        @staticmethod
        def forward(ctx, tensor, peer, tag, posted):
            ctx.meta = (tensor.shape, tensor.dtype, peer, tag)
            posted.append(_post(tensor, peer, tag))
            return tensor.new_empty((0,))

        @staticmethod
        def backward(ctx, _):
            shape, dtype, peer, tag = ctx.meta
            g = torch.empty(shape, dtype=torch.float32)
            dist.recv(g, peer, tag=tag + 1)
            return g.to(dtype), None, None, None

    return Send


@functools.lru_cache(maxsize=1)
def receive_function() -> Any:
    import torch
    import torch.distributed as dist

    class Receive(torch.autograd.Function):
        """Forward: the state from the previous run's rank. Backward: its gradient sent back there."""

        @staticmethod
        def forward(ctx, anchor, shape, peer, tag):
            ctx.peer, ctx.tag, ctx.shape = peer, tag, shape
            t = torch.empty(shape, dtype=torch.float32, device=anchor.device)
            dist.recv(t, peer, tag=tag)
            return t

        @staticmethod
        def backward(ctx, g):  # unused: a gradient of 0; posted (the forward's reason, mirrored), settled later
            _in_flight[:] = [w for w in _in_flight if not w.is_completed()]
            _in_flight.append(_post(torch.zeros(ctx.shape) if g is None else g, ctx.peer, ctx.tag + 1))
            return None, None, None, None

    return Receive
