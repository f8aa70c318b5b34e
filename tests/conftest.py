from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(scope="session")
def upstream_installed():
    missing = [m for m in ("torch", "transformers", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install -e '.[hf,test]')")
