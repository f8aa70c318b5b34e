"""The rank launcher behind `cpshim demo`, the benchmarks and the multi-process tests."""

from __future__ import annotations

import time

import pytest

from cpshim.ring.launch import run_ranks

pytestmark = pytest.mark.multiproc
pytest.importorskip("torch.distributed", reason="the ranks use torch.distributed (gloo)")

INIT = "import os, sys, torch.distributed as dist\ndist.init_process_group('gloo')\nrank = dist.get_rank()\n"


def test_ranks_return_their_stdout_and_skip_interpreter_finalization():
    # an atexit handler never runs: the epilogue ends the group and leaves with os._exit
    code = INIT + "import atexit\natexit.register(print, 'finalized')\nprint('rank', rank, dist.get_world_size())"
    outs = run_ranks(code, 2, timeout=120)
    assert [o.split() for o in outs] == [["rank", "0", "2"], ["rank", "1", "2"]]


def test_a_failing_rank_ends_its_blocked_peer_and_is_reported():
    code = INIT + "if rank == 1:\n    raise ValueError('rank one broke')\ndist.barrier()\n"
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as e:
        run_ranks(code, 2, timeout=120, failed_grace_s=3)
    assert time.monotonic() - t0 < 60  # the peer stuck in the barrier was killed, not waited for
    msg = str(e.value)
    assert "rank 1 exited 1" in msg and "ValueError: rank one broke" in msg and "did not finish" not in msg


def test_output_larger_than_a_pipe_does_not_block_a_collective():
    # 1 MiB on stderr from rank 1 before the barrier rank 0 waits in (a pipe holds 64 KiB)
    code = INIT + "if rank == 1:\n    sys.stderr.write('x' * (1 << 20))\ndist.barrier()\nprint('done')\n"
    assert [o.strip() for o in run_ranks(code, 2, timeout=120)] == ["done", "done"]


def test_a_hung_rank_is_killed_at_the_deadline():
    code = INIT + "if rank == 1:\n    import time; time.sleep(600)\ndist.barrier()\n"
    with pytest.raises(RuntimeError, match="did not finish within 8s"):
        run_ranks(code, 2, timeout=8)
