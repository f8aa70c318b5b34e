from __future__ import annotations

import importlib.util

import pytest
from hypothesis import HealthCheck, settings

# Timing is the benchmarks' business (bench/), not the tests': no per-example deadline and no
# too-slow health check, so a CI machine running two matrix cells at once cannot fail a property test.
settings.register_profile("cpshim", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("cpshim")


@pytest.fixture(scope="session")
def upstream_installed():
    missing = [m for m in ("torch", "transformers", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install -e '.[hf,test]')")


def _cp_refusal() -> str | None:
    """Why cpshim refuses CP with the installed versions (a `uses` entry unsupported: torch < 2.6), or None."""
    from cpshim import lifecycle

    refused = lifecycle.refused_uses()
    return "; ".join(f"{pid}: {why}" for pid, why in refused) or None


def pytest_collection_modifyitems(config, items):
    """On a torch cpshim refuses CP on (tests/upstream/test_torch_refusal.py proves the refusal), the tests
    that run CP are skipped with that reason instead of failing inside accelerate's own refusal."""
    why = _cp_refusal()
    if why is None:
        return
    skip = pytest.mark.skip(reason=f"cpshim refuses CP here: {why}")
    for item in items:
        if item.get_closest_marker("needs_cp") or "cp" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)
