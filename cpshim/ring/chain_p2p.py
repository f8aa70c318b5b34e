"""The carry's point-to-point exchange (`cpshim.ring.carry_state`): one part of a run's carry (conv rows, state)
to the next run's rank, its gradient back, as autograd functions.

Sends are posted (isend), not blocking, both ways: a rank's one run can send its conv rows to the rank it also
receives its state from (zigzag at cp=2: rank 1's two chunks are one run, between rank 0's two), and a blocking
send there waits for a receive the peer posts only after its own send; the backward mirrors it. Receives block.
A forward's sends are waited for at the end of the layer's call (the next run's rank receives them within its own
call of that layer); the backward's are kept until complete.
"""

from __future__ import annotations

import functools
from typing import Any

from . import tripwires


class Outbox:
    """What a run leaves for the next run's rank, each part sent as soon as it exists (the conv rows from the
    cache's `update_conv_state`, before the run's core; the state after it); `rest` sends what is left and
    returns the sends' tokens, whose backward receives the parts' gradients; `posted`, the sends to wait for."""

    def __init__(self, peer: int, tag: int) -> None:
        self.peer, self.tag = peer, tag
        self.tokens: dict[int, Any] = {}
        self.posted: list[Any] = []

    def send(self, part: int, tensor: Any) -> None:
        if part in self.tokens:
            raise tripwires.TripwireError("cpshim ring mode: a recurrent mixer updated its conv state twice in one "
                                          "run of a sharded step: report this transformers release to cpshim")
        self.tokens[part] = send_function().apply(tensor, self.peer, self.tag + part, self.posted)

    def rest(self, carry: tuple) -> list[Any]:
        for part, tensor in enumerate(carry):
            if part not in self.tokens:
                self.send(part, tensor)
        return list(self.tokens.values())


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
        """Forward: one part of the carry to the next run's rank (float32). Backward: its gradient back from there
        (tag + 2)."""

        @staticmethod
        def forward(ctx, tensor, peer, tag, posted):
            ctx.meta = (tensor.shape, tensor.dtype, peer, tag)
            posted.append(_post(tensor, peer, tag))
            return tensor.new_empty((0,))

        @staticmethod
        def backward(ctx, _):
            shape, dtype, peer, tag = ctx.meta
            g = torch.empty(shape, dtype=torch.float32)
            dist.recv(g, peer, tag=tag + 2)
            return g.to(dtype), None, None, None

    return Send


@functools.lru_cache(maxsize=1)
def receive_function() -> Any:
    import torch
    import torch.distributed as dist

    class Receive(torch.autograd.Function):
        """Forward: one part of the carry from the previous run's rank. Backward: its gradient sent back there."""

        @staticmethod
        def forward(ctx, anchor, shape, peer, tag):
            ctx.peer, ctx.tag, ctx.shape = peer, tag, shape
            t = torch.empty(shape, dtype=torch.float32, device=anchor.device)
            dist.recv(t, peer, tag=tag)
            return t

        @staticmethod
        def backward(ctx, g):  # unused: a gradient of 0; posted (the forward's reason, mirrored), settled later
            _in_flight[:] = [w for w in _in_flight if not w.is_completed()]
            _in_flight.append(_post(torch.zeros(ctx.shape) if g is None else g, ctx.peer, ctx.tag + 2))
            return None, None, None, None

    return Receive
