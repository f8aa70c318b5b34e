"""One process of bench/bench_ring_cp.py: a cpshim parity run (`cpshim.ring.parity.run_case`), instrumented.

    from bench._ring_cp_worker import main; main(cp, seq_len, steps, out_dir, hidden=None)

cp=1 is the single process with the same kernel provider and dtype (parity's `cpshim_reference`
attention key); cp=2 is one rank of a ring CP group (launched by `cpshim.ring.launch.run_ranks`).
The Trainer itself is built by `run_case` (with `hidden`, parity's config gets another hidden size);
this module only adds measurements to it:

- memory: at `on_train_begin` (torch/transformers/cpshim imported, model and Trainer built, before the
  first step) it records VmRSS and resets the kernel's high-water mark (`/proc/self/clear_refs` 5);
  after training it reads VmHWM. Peak minus post-import RSS is therefore the training's own peak.
  Without a writable clear_refs it falls back to ru_maxrss (which also covers import-time peaks).
  With `live_peak`, training also runs under torch's profiler with `profile_memory`: the peak of the running sum
  of its CPU allocation records (bytes allocated minus freed since training began) is the tensors' own peak,
  what `torch.cuda.max_memory_allocated` is on a GPU: glibc's retention of freed blocks is not in it.
  Always, `bench._heap_sampler.HeapAtPeak` reads glibc's heap at the highest sampled RSS: how much of the peak
  is memory freed but kept by the allocator.
- time: `on_step_begin`..`on_step_end` is one step (forward, backward, optimizer). cpshim's hook is the
  Trainer's `_prepare_context_parallel_inputs` as patched in ring mode (cpshim's dispatch, upstream's
  full-length key preparation, checks, padding, sharding, the same-batch all_gather), timed per call
  with perf_counter around the bound method; the per-step tripwires that run outside it
  (`check_local_length` per attention call, `check_all_ran` at the end of the step context) are
  timed too and added.

Writes `<out_dir>/<cp>-<rank>.json`.
"""

from __future__ import annotations

import gc
import json
import os
import re
import resource
import time
from typing import Any


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else -1


def _live_peak_bytes(prof: Any) -> int:
    """Peak of the CPU allocator's live bytes over the profiled span, from the profiler's `[memory]` records."""
    from torch._C._autograd import DeviceType

    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak


def _fused_head_tile_bytes(trainer: Any) -> int | None:
    """The workspace TRL's fused log-prob head allocates per call (`mm_buf`): TOKEN_CHUNK_SIZE tokens x the vocab
    chunk, in the compute dtype, whatever the vocab (32768 columns for parity's 96 words) and the sequence (from
    4096 tokens on). None for other trainers, or where the installed TRL has no such head."""
    try:
        from trl.kernels.chunked_logprob import TOKEN_CHUNK_SIZE
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE
    except ImportError:
        return None
    if type(trainer).__name__ != "DPOTrainer":
        return None
    return TOKEN_CHUNK_SIZE * _CHUNKED_LOGPROB_CHUNK_SIZE * (2 if trainer.args.bf16 or trainer.args.fp16 else 4)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Timer:
    """Wraps a callable; accumulates perf_counter seconds into `self.acc[key]`."""

    def __init__(self) -> None:
        self.acc: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, key: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.acc[key] = self.acc.get(key, 0.0) + time.perf_counter() - t0
                self.calls[key] = self.calls.get(key, 0) + 1

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    def take(self) -> tuple[dict[str, float], dict[str, int]]:
        acc, calls = self.acc, self.calls
        self.acc, self.calls = {}, {}
        return acc, calls


def _with_hidden(parity: Any, hidden: int) -> None:
    """Parity's tiny Llama with another hidden size (intermediate 2x, 4 heads / 2 kv heads kept)."""
    base = parity._config

    def config() -> Any:
        c = base()
        c.hidden_size, c.intermediate_size = hidden, 2 * hidden
        c.head_dim = hidden // c.num_attention_heads
        return c

    parity._config = config  # run_case looks it up at call time


GEMMA3_LAYERS = ["sliding_attention"] * 5 + ["full_attention"]  # Gemma 3's pattern: 5 sliding : 1 full
LFM2_LAYERS = ["conv", "conv", "full_attention"] * 2  # LFM2's pattern (1.2B: 10 conv : 6 full, kernel 3)
QWEN3_5_LAYERS = ["linear_attention"] * 3 + ["full_attention"]  # Qwen3.5's pattern: 3 linear : 1 full
BAMBA_LAYERS = QWEN3_5_LAYERS  # Mamba-2 : attention, 3 : 1
CHAINED = ("qwen3_5", "bamba")  # models with recurrent layers: the state's chain, or head shards (Gated DeltaNet)


def _count_halo(rec: dict, timer: "_Timer") -> None:
    """Bytes the sliding (or conv) layers receive per step (halo rows forward, their gradients backward), next to
    what an all-gather of the same rows (and a reduce-scatter of their gradients) would move to this rank."""
    import torch.distributed as dist

    from cpshim.ring import sliding

    exchange = sliding._exchange

    timed = timer.wrap("halo_exchange", exchange)  # per step, with the tripwires: part of cpshim's share

    def counted(x, outgoing, incoming, group):
        # an untimed barrier first: the exchange's own wall would include waiting for the slower rank (the two
        # ranks' imbalance, which the ring's exchanges also wait out), not the cost of moving the halo
        t0 = time.perf_counter()
        dist.barrier(group=group)
        rec["halo_wait_s"] = rec.get("halo_wait_s", 0.0) + time.perf_counter() - t0
        got = timed(x, outgoing, incoming, group)
        rec["halo_bytes"] = rec.get("halo_bytes", 0) + sum(t.numel() * t.element_size() for t in got.values())
        others = dist.get_world_size(group) - 1  # an all-gather brings every other rank's shard
        rec["gather_bytes"] = rec.get("gather_bytes", 0) + others * x.numel() * x.element_size()
        return got

    sliding._exchange = counted


def main(cp: int, seq_len: int, steps: int, out_dir: str, hidden: int | None = None, trainer: str = "sft",
         model: str = "llama", window: int | None = None, deltanet_core: str = "heads",
         live_peak: bool = False, batch: int = 1) -> None:
    import torch
    import transformers
    from transformers import TrainerCallback

    import cpshim  # noqa: F401  (imported before the post-import measurement, as a user would)
    from bench._heap_sampler import HeapAtPeak
    from cpshim.ring import parity, tripwires

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if hidden:
        _with_hidden(parity, hidden)
    timer = _Timer()
    rec: dict[str, Any] = {"cp": cp, "seq_len": seq_len, "steps": []}
    # checks that run outside the hook, looked up as module attributes at call time
    tripwires.check_local_length = timer.wrap("check_local_length", tripwires.check_local_length)
    tripwires.check_all_ran = timer.wrap("check_all_ran", tripwires.check_all_ran)
    tripwires.check_same_batch = timer.wrap("check_same_batch", tripwires.check_same_batch)  # inside the hook

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            gc.collect()
            rec["post_import_rss_kib"] = _status_kib("VmRSS")
            rec["hwm_reset"] = _reset_hwm()
            rec["ru_maxrss_at_begin_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        def on_step_begin(self, args, state, control, **kwargs):
            timer.take()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            dt = time.perf_counter() - self.t0
            acc, calls = timer.take()
            rec["steps"].append({"step_s": dt, "parts_s": acc, "calls": calls})

    original_train = transformers.Trainer.train

    def train(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.add_callback(Probe())
        if cp > 1:  # the instance attribute shadows (and calls) the class's patched method
            bound = type(self)._prepare_context_parallel_inputs.__get__(self)
            self._prepare_context_parallel_inputs = timer.wrap("hook", bound)
        with HeapAtPeak() as heap:
            if not live_peak:
                result = original_train(self, *args, **kwargs)
            else:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                    result = original_train(self, *args, **kwargs)
                rec["live_peak_bytes"] = _live_peak_bytes(prof)
                rec["fixed_tile_bytes"] = _fused_head_tile_bytes(self)
        rec["heap_at_peak"] = heap.result()
        return result

    transformers.Trainer.train = train
    case = {"id": "bench", "strategy": "zigzag", "batch": batch, "seq_len": seq_len, "steps": steps,
            "output_dir": os.path.join(out_dir, f"trainer-{cp}")}
    if model == "gemma3":  # the windows come from the model's own sliding_window on both sides
        case.update(model="gemma3", window=window, layer_types=GEMMA3_LAYERS, upstream_masks=False)
    elif model == "lfm2":
        case.update(model="lfm2", layer_types=LFM2_LAYERS)
    elif model == "qwen3_5":
        case.update(model="qwen3_5", layer_types=QWEN3_5_LAYERS)
    elif model == "bamba":  # upstream's SSD chunk (256)
        case.update(model="bamba", layer_types=BAMBA_LAYERS, chunk=256)
    if model in ("gemma3", "lfm2", *CHAINED) and cp > 1:  # the recurrent layers' conv rows come from a halo too
        _count_halo(rec, timer)
    if model in CHAINED and cp > 1:  # the recurrent layers' state chain or all-to-all, waits included
        import torch.distributed as dist

        from cpshim.ring import chain_p2p, head_shards

        # Gated DeltaNet's core by head shards: its all-to-all, forward and backward (a collective: it waits for
        # the slower rank); `deltanet_core="chain"`: the state's chain instead, as for heads not divisible by cp
        head_shards._all_to_all = timer.wrap("head_exchange", head_shards._all_to_all)
        if deltanet_core == "chain":
            head_shards.applies = lambda *args: False

        # receives block; sends are posted (`_post`: isend, which the ring's P2POp must see unwrapped) and waited
        # for at the end of the layer's call (`_Posted.wait`)
        dist.recv = timer.wrap("chain_p2p", dist.recv)
        chain_p2p._post = timer.wrap("chain_p2p", chain_p2p._post)
        chain_p2p._Posted.wait = timer.wrap("chain_p2p", chain_p2p._Posted.wait)
    t0 = time.perf_counter()
    if trainer == "dpo":  # TRL's DPOTrainer, one chosen/rejected pair of seq_len tokens each (the backbone path)
        from tests.parity import _pref_worker

        result = _pref_worker.run_case({**case, "trainer": "dpo"}, cp, case["output_dir"])
    elif trainer == "grpo":  # TRL's GRPOTrainer: 2 prompts of seq_len/2 tokens (a group per rank), 2 completions
        from tests.parity import _rl_worker

        result = _rl_worker.run_case({**case, "trainer": "grpo", "batch": 4, "generations": 2}, cp,
                                     case["output_dir"])
    else:
        result = parity.run_case(case, cp)
    rec["run_case_s"] = time.perf_counter() - t0
    rec["peak_rss_kib"] = _status_kib("VmHWM") if rec.get("hwm_reset") else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss
    rec["final_rss_kib"] = _status_kib("VmRSS")
    rec["losses"] = result["losses"]
    rec["rank"] = result["rank"]
    rec["halo_bytes_per_step"] = rec.get("halo_bytes", 0) / max(1, steps)
    with open(os.path.join(out_dir, f"{cp}-{result['rank']}.json"), "w") as f:
        json.dump(rec, f)
