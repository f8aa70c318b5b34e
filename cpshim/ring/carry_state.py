"""Recurrent mixers under CP (Gated DeltaNet, Mamba-2, Mamba-1, RG-LRU): the state passed along the sequence.

Both mixers are in_proj, a depthwise causal conv1d of k taps, a recurrence whose state carries everything
before a position (the gated delta rule: heads x k_head_dim x v_head_dim per row; Mamba-2's SSD: heads x
head_dim x d_state), a gated norm, out_proj. So the run of positions a rank holds needs exactly two things
from before it: the k conv input rows and the state. Upstream's forward already takes both from its cache
(chunked prefill, transformers >= 5.21: the conv reads the cached rows, `chunk_gated_delta_rule` /
`mamba2_chunk_scan` start from the cached state), so cpshim hands each run a one-run cache holding what the
run before it left, and runs upstream's own forward and kernels. Each patch names, as data in its variant's
`info["carry"]`, the module attributes that give the carry's shapes (the receiver allocates from them).

Which exchange, and why: the runs follow the sequence one after another (a chain: rank 0's first chunk,
then the next chunk's owner, ...; under zigzag a rank's two chunks are far apart), each sending its successor
the conv rows and the state, point to point, once per layer call; the backward sends their gradients back along
the chain. That moves O(state) per run boundary (no sequence data), is exact, and costs no extra compute. The
conv rows leave as soon as the run's conv has read its input (`RunCache.update_conv_state`), before its core
runs, so the next run never waits for a core to finish for them; sends are posted, not blocking
(`cpshim.ring.chain_p2p`). The state is another matter:
  * Mamba-1 and Mamba-2 (a patch naming its scan, `info["scan"]`): the recurrence is linear in the state, so each
    run scans from zero and adds the state's part after (`cpshim.ring.linear_scans`); a state from another rank
    is received only then. The group's scans run side by side; a run waits only for the previous run's
    correction, a product far cheaper than a scan. In backward, the state's gradient returns early (the
    correction is the run's last op), the conv rows' gradient only when the next run's backward reaches its
    conv (its first op): that wait remains.
  * Gated DeltaNet / KDA and RG-LRU: the core starts from the state, so the runs' cores follow one another over
    the group. Their parallel form (per-run d_k x d_k transitions composed by a prefix over the group, each
    run's output corrected by q_t P_t h0) would need the WY factors inside upstream's kernel; re-running
    upstream's core from h0 with zero values costs a whole extra core per run, no faster at cp=2: not built.
An all-to-all to head shards (Ulysses) would keep every core parallel but needs heads divisible by cp and moves
O(sequence) per layer. Attention and MLP layers stay parallel.
Packed documents (varlen) are refused: the state would have to restart at each boundary. RecurrentGemma's block
keeps its cache in module attributes, not a cache object: its patch's run call (`info["run"]`) is
`cpshim.ring.rg_lru.run`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any

from . import chain_p2p, rg_lru, runtime, sliding, tripwires

_CACHE_NAMES = ("cache", "cache_params", "past_key_values")


class RunCache:
    """The one-run cache upstream's forward reads and writes (the recurrent-layer cache API of transformers
    >= 5.21): `conv`/`state` what the previous run left (None at the sequence start), `conv_out`/`state_out`
    what this run leaves for the next; `outbox` sends the conv rows to the next run's rank as soon as they exist."""

    def __init__(self, conv: Any, state: Any, outbox: chain_p2p.Outbox | None = None) -> None:
        self.conv, self.state, self.outbox = conv, state, outbox
        self.conv_out: Any = None
        self.state_out: Any = None
        self.read: set[str] = set()

    def get_conv_state(self, layer_idx: int, state_idx: int = 0) -> Any:
        self.read.add("conv rows")
        return self.conv

    def get_recurrent_state(self, layer_idx: int, state_idx: int = 0) -> Any:
        if self.state is not None:
            self.read.add("recurrent state")
        return self.state

    def is_recording_past(self, layer_idx: int) -> bool:
        return False

    def get_recurrent_states_to_keep(self, layer_idx: int | None = None) -> int:
        """transformers >= 5.25 (speculative decoding): no intermediate states, as upstream's when not recording."""
        return 0

    def update_conv_state(self, rows: Any, layer_idx: int, state_idx: int = 0, conv_kernel_size: Any = None,
                          **kwargs: Any) -> Any:
        import torch

        full = rows if self.conv is None else torch.cat([self.conv, rows], dim=-1)
        self.conv_out = rg_lru.last_columns(full, int(conv_kernel_size))
        if self.outbox is not None:
            self.outbox.send(0, self.conv_out)
        return full

    def update_recurrent_state(self, state: Any, layer_idx: int, state_idx: int = 0, **kwargs: Any) -> Any:
        self.state_out = state
        return state


@functools.lru_cache(maxsize=64)
def chain(global_len: int, cp: int, rank: int, strategy: str) -> tuple[tuple[int, int, int, Any, Any, int], ...]:
    """This rank's runs in sequence order: (local offset, start, length, where its carry comes from, where it
    goes, its index among all runs). Origin: None at the sequence start, "here" from this rank's previous run,
    else the group rank; destination: None when the next run is this rank's or there is none, else the group
    rank."""
    from . import sharding  # imports torch: the patch module is imported at apply(), before any model

    owners = sorted((start, r, local, length) for r in range(cp)
                    for local, start, length in sliding.runs_of(sharding.shard_indices(global_len, r, cp,
                                                                                        strategy).tolist()))
    out = []
    for i, (start, r, local, length) in enumerate(owners):
        if r != rank:
            continue
        origin = None if i == 0 else "here" if owners[i - 1][1] == rank else owners[i - 1][1]
        dest = owners[i + 1][1] if i + 1 < len(owners) and owners[i + 1][1] != rank else None
        out.append((local, start, length, origin, dest, i))
    return tuple(out)


@functools.lru_cache(maxsize=16)
def _cache_name(cls: Any) -> str:
    params = inspect.signature(inspect.unwrap(cls.forward)).parameters
    name = next((n for n in _CACHE_NAMES if n in params), None)
    if name is None:
        raise tripwires.TripwireError(f"cpshim ring mode: {cls.__name__}.forward takes no cache argument, so the state "
                                      "cannot be handed to it: report this transformers release to cpshim")
    return name


def forward(call: Any, module: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
    """Impl of the `*-gated-deltanet`, `*-mamba2`, `*-mamba1` and `*-rg-lru` patches: upstream's forward outside
    sharded steps (the gate is closed then). Each run's call is the patch's `info["run"]` (default: through a
    one-run cache)."""
    step = runtime.current_step()
    if step is None or id(module) in step.outside:
        return call.original(hidden_states, *args, **kwargs)
    import torch

    info = call.variant.info
    name = tripwires.check_mixer_call(step, module, args, hidden_states.shape[1], info.get(
        "varlen_why", "is a recurrent layer, whose state would have to restart at each packed document"))
    run_call = _RUNS[info.get("run", "cache")]
    kwargs["attention_mask"] = None  # right padding only: zeroed rows follow every real token
    outs, sends, posted, carry, rest = [], [], [], (None, None), ()
    layer = int(getattr(module, "layer_idx", 0))
    for local, _start, length, origin, dest, i in chain(step.global_len, step.cp, step.rank, step.strategy):
        if length < 2:
            raise tripwires.TripwireError(f"cpshim ring mode: {name} got a run of {length} token (transformers "
                                          "decodes one token from its cache): use sequences of at least 4 * cp tokens")
        if origin not in (None, "here"):
            carry = _receive(module, info, hidden_states, origin, step.group, _tag(layer, i - 1))
        elif origin is None:
            carry = (None, None)
        outbox = None if dest is None else chain_p2p.Outbox(_peer(step.group, dest), _tag(layer, i))
        got, carry = run_call(call, module, hidden_states, local, length, carry, kwargs, outbox)
        got, rest = (got[0], got[1:]) if isinstance(got, tuple) else (got, ())
        outs.append(got)
        if outbox is not None:
            sends.extend(outbox.rest(carry))
            posted.extend(outbox.posted)
    for work in posted:  # each received by the next run's rank within its own call of this layer
        work.wait()
    out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    for token in sends:  # each send's backward (the carry's gradient from the next run) runs with the output's
        out = out + token.sum()
    step.ran.add(id(module))
    return (out, *rest) if rest else out


def _through_cache(call: Any, module: Any, hidden: Any, local: int, length: int, carry: tuple, kwargs: dict,
                   outbox: chain_p2p.Outbox | None = None) -> tuple[Any, tuple]:
    """One run through upstream's cache API: a one-run cache holding the carry (a patch naming its scan gets the
    state through the scan instead: `cpshim.ring.linear_scans`); what the run left, out."""
    info = call.variant.info
    scan = info.get("scan")
    conv, state = carry
    cache = RunCache(conv, None if scan else state, outbox)
    name = _cache_name(type(module))  # type: ignore[arg-type]
    kwargs = {k: v for k, v in kwargs.items() if k not in _CACHE_NAMES}
    with _scan_started(module, info, state, cache):
        out = call.original(hidden[:, local:local + length], **{name: cache}, **kwargs)
    _check_went_through(module, cache, state is not None)
    return out, (cache.conv_out, cache.state_out)


def _check_went_through(module: Any, cache: RunCache, stated: bool) -> None:
    """The run read the carry it was given and left one: a forward that goes around the cache API (a hub kernel
    swapped in by `kernels`' kernelize, a runtime that keeps the conv state itself, a changed release) would
    otherwise restart each run from zeros without failing. A scan swapped by `linear_scans` counts as the state's
    read."""
    given = {"conv rows": cache.conv is not None, "recurrent state": stated}
    unread = [what for what, there in given.items() if there and what not in cache.read]
    unleft = [what for what, out in (("conv rows", cache.conv_out), ("recurrent state", cache.state_out))
              if out is None]
    if unread or unleft:
        what = (f"did not read the carried {' and '.join(unread)}" if unread
                else f"left no {' and '.join(unleft)} in the cache")
        raise tripwires.TripwireError(
            f"cpshim ring mode: {type(module).__name__}'s forward {what} on a sharded step, so its run would not "
            "continue the one before it. Its forward does not go through transformers' cache API (a kernel from "
            "the `kernels` hub or kernelize(), or a release cpshim does not know): load the model without hub "
            "kernels under ring CP, or report this transformers release to cpshim")


def _scan_started(module: Any, info: dict, state: Any, cache: RunCache) -> Any:
    """Mamba-1's and Mamba-2's scans (the patch names the scan, `info["scan"]`, and its `scan_form`) run from zero
    and get the carry's state (a tensor, or a pending receive) added by `cpshim.ring.linear_scans` within the
    run's call; the other mixers read it from the cache."""
    if info.get("scan") is None or state is None:
        return contextlib.nullcontext()
    from . import linear_scans

    return linear_scans.started_from(type(module).__module__, info["scan"], info["scan_form"], state,
                                     lambda: cache.read.add("recurrent state"))


#: `info["run"]` of a patch -> how one run of the shard calls upstream's forward with the carry
_RUNS = {"cache": _through_cache, "rg-lru": rg_lru.run}


def _tag(layer: int, boundary: int) -> int:
    """A message tag per (layer, run boundary): +0/+1 conv rows and state forward, +2/+3 their gradients. Matching
    by tag, not by arrival order, so that the backward's order of sends over the group cannot pair a gradient
    with another boundary's."""
    return (layer * 4096 + boundary) * 4


def _peer(group: Any, r: int) -> int:
    import torch.distributed as dist

    return r if group is None else dist.get_global_rank(group, r)


def _receive(module: Any, info: dict, hidden: Any, src: int, group: Any, tag: int) -> tuple[Any, Any]:
    """The carry from the previous run's rank, shaped from the module's attributes the patch names (`carry`:
    conv channels, state dims; the conv's taps and module where they are not `conv_kernel_size` / `conv1d`), the
    conv rows in the dtype the conv input has (the autocast dtype, else the conv's). The conv rows now; the state
    now, or, for a patch naming its scan, as a pending receive its zero-started scan takes when it has run."""
    import torch

    carry, b = info["carry"], hidden.shape[0]
    conv_shape = (b, getattr(module, carry["conv"]), getattr(module, carry.get("kernel", "conv_kernel_size")))
    state_shape = (b, *(getattr(module, a) for a in carry["state"]))
    dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) \
        else getattr(module, carry.get("conv_module", "conv1d")).weight.dtype
    peer, grad = _peer(group, src), torch.is_grad_enabled()

    def receive(shape: tuple, part: int) -> Any:
        anchor = hidden.new_zeros((), requires_grad=grad)
        return chain_p2p.receive_function().apply(anchor, shape, peer, tag + part)

    conv = receive(conv_shape, 0).to(dtype)
    if info.get("scan") is not None:
        return conv, lambda: receive(state_shape, 1)
    return conv, receive(state_shape, 1)
