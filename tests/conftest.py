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
