"""Ring CP needs torch >= 2.6: below it cpshim refuses by name, and so does accelerate itself.

Both sides are checked on every cell's torch: the refusal must be grounded (accelerate really cannot
build a CP config there, and DeviceMesh really lacks `_flatten` below 2.5), and on a torch it accepts,
cpshim must not refuse.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _release() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def test_cpshim_refuses_ring_cp_exactly_where_accelerate_cannot_build_a_cp_config():
    from accelerate import ParallelismConfig
    from torch.distributed.device_mesh import DeviceMesh

    import cpshim
    from cpshim import lifecycle

    refused = dict(lifecycle.refused_uses())
    try:
        ParallelismConfig(cp_size=2)
        accelerate_refuses = None
    except ValueError as e:
        accelerate_refuses = str(e)
    if _release() >= (2, 6):
        assert not refused and accelerate_refuses is None, (refused, accelerate_refuses)
        assert cpshim.report()["device-mesh"].support == "supported"
        return
    assert accelerate_refuses is not None and "2.6" in accelerate_refuses  # upstream's own reason
    assert set(refused) == {"device-mesh"} and "torch>=2.6" in refused["device-mesh"]
    assert hasattr(DeviceMesh, "_flatten") == (_release() >= (2, 5))
    with pytest.raises(cpshim.UnsupportedVersionError, match=r"device-mesh .*torch>=2\.6"):
        cpshim.enable()
    assert cpshim.report()["device-mesh"].support == "unsupported"
