"""Recurrent mixers under CP (Gated DeltaNet, Mamba-2, Mamba-1, RG-LRU): the state passed along the sequence.

Both mixers are in_proj, a depthwise causal conv1d of k taps, a recurrence whose state carries everything
before a position (the gated delta rule: heads x k_head_dim x v_head_dim per row; Mamba-2's SSD: heads x
head_dim x d_state), a gated norm, out_proj. So the run of positions a rank holds needs exactly two things
from before it: the k conv input rows and the state. Upstream's forward already takes both from its cache
(chunked prefill, transformers >= 5.21: the conv reads the cached rows, `chunk_gated_delta_rule` /
`mamba2_chunk_scan` start from the cached state), so cpshim hands each run a one-run cache holding what the
run before it left, and runs upstream's own forward and kernels. Each patch names, as data in its variant's
`info["carry"]`, the module attributes that give the state's shape (the receiver allocates from it) and, where
not `conv_kernel_size`, the conv's taps.

Which exchange, and why:
  * The conv rows: the conv input is per token (in_proj of the mixer's input), so each run gets the k - 1 mixer
    input rows before it as a halo (`sliding.plan` / `sliding.halo`: one batch of point-to-point sends at the
    layer's start, the gradient sent back reversed, as for LFM2's short convolutions) and computes the rows
    itself, running upstream's forward on them alone (`_conv_rows`). In parallel on every rank; their gradient
    returns when both ranks finish the layer's backward, not mid-way.
  * The state follows the sequence (a chain: rank 0's first chunk, then the next chunk's owner, ...; under
    zigzag a rank's two chunks are far apart), point to point, once per layer call, the gradient back along the
    chain (`cpshim.ring.chain_p2p`, posted sends). O(state) per run boundary, no sequence data.
      - Mamba-1 and Mamba-2 (a patch naming its scan, `info["scan"]`): the recurrence is linear in the state, so
        each run scans from zero and adds the state's part after (`cpshim.ring.linear_scans`); a state from
        another rank is received only then. The group's scans run side by side; a run waits only for the
        previous run's correction, a product far cheaper than a scan, and in backward the state's gradient
        leaves early (the correction is the run's last op).
      - Gated DeltaNet / KDA and RG-LRU: the core starts from the state, so the runs' cores follow one another
        over the group. Their parallel form (per-run d_k x d_k transitions composed by a prefix over the group,
        each run's output corrected by q_t P_t h0) would need the WY factors inside upstream's kernel;
        re-running upstream's core from h0 with zero values costs a whole extra core per run, no faster at
        cp=2: not built.
  * Gated DeltaNet / KDA with every head count divisible by cp (the patch names them, `info["head_shards"]`):
    no state travels; the core runs over the whole sequence for heads / cp of the heads on each rank, an
    all-to-all to head shards and back (`cpshim.ring.head_shards`, which says why). Measured side by side on
    the bench's Qwen3.5 at 16k tokens, cp=2 (bench/bench_ring_cp.py --model qwen3_5 [--deltanet-core chain]):
    the chain's exchanges and waits 19.9 % of a step, the all-to-all's 2.6 %; memory per rank 0.51x / 0.58x of
    one process (the core's backward over the whole sequence peaks higher); step wall 0.56x / 0.55x on 2 CPU
    cores, where the torch core's per-chunk loop, not its heads, sets the cost.
Attention and MLP layers stay parallel.
Packed documents (varlen) are refused: the state would have to restart at each boundary. RecurrentGemma's block
keeps its cache in module attributes, not a cache object: its patch's run call (`info["run"]`) is
`cpshim.ring.rg_lru.run`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any

from . import chain_p2p, head_shards, rg_lru, runtime, sliding, tripwires

_CACHE_NAMES = ("cache", "cache_params", "past_key_values")


class RunCache:
    """The one-run cache upstream's forward reads and writes (the recurrent-layer cache API of transformers
    >= 5.21): `conv`/`state` what the previous run left (None at the sequence start), `conv_out`/`state_out`
    what this run leaves for the next."""

    def __init__(self, conv: Any, state: Any) -> None:
        self.conv, self.state = conv, state
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
    plan = sliding.plan(step.global_len, step.cp, step.rank, step.strategy,
                        int(getattr(module, info["carry"].get("kernel", "conv_kernel_size"))))
    rows = sliding.halo(hidden_states, plan, step.group) if plan.halo_len or plan.send else None
    halo = {run.local: run for run in plan.runs}
    runs = chain(step.global_len, step.cp, step.rank, step.strategy)
    for _local, _start, length, *_ in runs:
        if length < 2:
            raise tripwires.TripwireError(f"cpshim ring mode: {name} got a run of {length} token (transformers "
                                          "decodes one token from its cache): use sequences of at least 4 * cp tokens")
    convs = {local: None if rows is None or not halo[local].halo else
             _conv_rows(call, module, run_call, rows[:, halo[local].at:halo[local].at + halo[local].halo], kwargs)
             for local, *_ in runs}
    sends: list[Any] = []
    posted: list[Any] = []
    if head_shards.applies(module, info, step.cp):
        outs, rest = _by_heads(call, module, hidden_states, runs, convs, kwargs, step, name)
    else:
        outs, rest = _along_chain(call, module, run_call, hidden_states, runs, convs, kwargs, step, sends, posted)
    for work in posted:  # each received by the next run's rank within its own call of this layer
        work.wait()
    out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    if rows is not None:  # the halo's backward returns the rows' gradients, on a rank that only sends them too
        sends.append(rows[:, :0])
    for token in sends:  # each send's backward (the state's gradient from the next run) runs with the output's
        out = out + token.sum()
    step.ran.add(id(module))
    return (out, *rest) if rest else out


def _along_chain(call: Any, module: Any, run_call: Any, hidden: Any, runs: tuple, convs: dict, kwargs: dict,
                 step: Any, sends: list, posted: list) -> tuple[list, tuple]:
    """Each run from the state the run before it left, received from its rank; the state it leaves posted to the
    next run's rank (`sends`: tokens whose backward receives its gradient)."""
    info = call.variant.info
    outs, state, rest = [], None, ()
    layer = int(getattr(module, "layer_idx", 0))
    for local, _start, length, origin, dest, i in runs:
        if origin not in (None, "here"):
            state = _receive_state(module, info, hidden, origin, step.group, _tag(layer, i - 1))
        elif origin is None:
            state = None
        got, (_, state) = run_call(call, module, hidden, local, length, (convs[local], state), kwargs)
        got, rest = (got[0], got[1:]) if isinstance(got, tuple) else (got, ())
        outs.append(got)
        if dest is not None:
            sends.append(chain_p2p.send(state, _peer(step.group, dest), _tag(layer, i), posted))
    return outs, rest


def _by_heads(call: Any, module: Any, hidden: Any, runs: tuple, convs: dict, kwargs: dict, step: Any, name: str
              ) -> tuple[list, tuple]:
    """Each run's forward stopped at the core to take its inputs, the core over the whole sequence for this rank's
    heads (`cpshim.ring.head_shards`), each run's forward again with its share of the output as the core's."""
    core = call.variant.info["head_shards"]["core"]
    home = type(module).__module__
    calls = []
    for local, _start, length, *_ in runs:
        cache = RunCache(convs[local], None)
        with runtime.swapped(home, core, head_shards.capture) as original:
            try:
                _run(call, module, hidden[:, local:local + length], cache, kwargs)
            except head_shards.Captured as taken:
                calls.append(taken.call)
            else:
                raise tripwires.TripwireError(f"cpshim ring mode: {name}'s forward did not call {core} on a sharded "
                                              "step (a kernel from the `kernels` hub or kernelize(), or a release "
                                              "cpshim does not know): load the model without hub kernels under ring "
                                              "CP, or report this transformers release to cpshim")
        _check_went_through(module, cache, False, left=("conv rows",))
    cores = head_shards.run_core(original, calls, [length for _, _, length, *_ in runs], step, name)
    outs, rest = [], ()
    for (local, _start, length, *_), out in zip(runs, cores):
        with runtime.swapped(home, core, head_shards.replay(out)):
            got = _run(call, module, hidden[:, local:local + length], RunCache(convs[local], None), kwargs)
        got, rest = (got[0], got[1:]) if isinstance(got, tuple) else (got, ())
        outs.append(got)
    return outs, rest


def _run(call: Any, module: Any, rows: Any, cache: RunCache, kwargs: dict) -> Any:
    """Upstream's forward on `rows` with the one-run `cache` as its cache argument."""
    kwargs = {k: v for k, v in kwargs.items() if k not in _CACHE_NAMES}
    return call.original(rows, **{_cache_name(type(module)): cache}, **kwargs)  # type: ignore[arg-type]


def _conv_rows(call: Any, module: Any, run_call: Any, rows: Any, kwargs: dict) -> Any:
    """The conv rows the run before a run leaves (the conv input of its last k - 1 positions), from their mixer
    input rows (the halo): upstream's forward on them alone, from no carry; only the conv rows it leaves are kept
    (the conv input is per token), so their gradient returns through the halo."""
    _, (conv, _) = run_call(call, module, rows, 0, rows.shape[1], (None, None), kwargs)
    return conv


def _through_cache(call: Any, module: Any, hidden: Any, local: int, length: int, carry: tuple, kwargs: dict
                   ) -> tuple[Any, tuple]:
    """One run through upstream's cache API: a one-run cache holding the carry (a patch naming its scan gets the
    state through the scan instead: `cpshim.ring.linear_scans`); what the run left, out."""
    info = call.variant.info
    scan = info.get("scan")
    conv, state = carry
    cache = RunCache(conv, None if scan else state)
    with _scan_started(module, info, state, cache):
        out = _run(call, module, hidden[:, local:local + length], cache, kwargs)
    _check_went_through(module, cache, state is not None)
    return out, (cache.conv_out, cache.state_out)


def _check_went_through(module: Any, cache: RunCache, stated: bool,
                        left: tuple[str, ...] = ("conv rows", "recurrent state")) -> None:
    """The run read the carry it was given and left one: a forward that goes around the cache API (a hub kernel
    swapped in by `kernels`' kernelize, a runtime that keeps the conv state itself, a changed release) would
    otherwise restart each run from zeros without failing. A scan swapped by `linear_scans` counts as the state's
    read."""
    given = {"conv rows": cache.conv is not None, "recurrent state": stated}
    unread = [what for what, there in given.items() if there and what not in cache.read]
    unleft = [what for what, out in (("conv rows", cache.conv_out), ("recurrent state", cache.state_out))
              if out is None and what in left]
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
    """A message tag per (layer, run boundary): the state forward, +1 its gradient. Matching by tag, not by arrival
    order, so that the backward's order of sends over the group cannot pair a gradient with another boundary's;
    above every tag the other exchanges use (the ring's, the halos': 0), since a posted state can still be in
    flight when the receiving rank posts one of theirs."""
    return _TAG_BASE + (layer * 4096 + boundary) * 2


_TAG_BASE = 1 << 16


def _peer(group: Any, r: int) -> int:
    import torch.distributed as dist

    return r if group is None else dist.get_global_rank(group, r)


def _receive_state(module: Any, info: dict, hidden: Any, src: int, group: Any, tag: int) -> Any:
    """The state from the previous run's rank, shaped from the module's attributes the patch names
    (`carry["state"]`): received now, or, for a patch naming its scan, a pending receive its zero-started scan
    takes when it has run."""
    import torch

    shape = (hidden.shape[0], *(getattr(module, a) for a in info["carry"]["state"]))
    peer, grad = _peer(group, src), torch.is_grad_enabled()

    def receive() -> Any:
        anchor = hidden.new_zeros((), requires_grad=grad)
        return chain_p2p.receive_function().apply(anchor, shape, peer, tag)

    return receive if info.get("scan") is not None else receive()
