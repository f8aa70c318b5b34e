"""The installed torch's schemas of the aten flash ops are what the provider binds from.

Runs on CPU builds too: a schema is registered on every build. Each torch cell of the matrix runs this
on its torch (2.2.2: philox names, no windows; 2.6.0: windows; 2.7.1+: rng_state; 2.12.1+:
block_table). The provider's calls through the real op parser and meta kernels:
tests/ring/test_providers.py; against every recorded schema without torch: tests/test_torch_schemas.py.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from cpshim.fingerprint import schemas  # noqa: E402
from cpshim.ring import aten_calls  # noqa: E402


def _meta(*shape):
    return torch.empty(*shape, device="meta", dtype=torch.bfloat16)

def test_live_schema_is_what_the_binding_reads():
    for comp in (aten_calls.FORWARD, aten_calls.BACKWARD):
        live = aten_calls.live(comp)
        assert live == schemas.parse(str(getattr(torch.ops.aten, comp[6:]).default._schema))
        assert schemas.hash_live(comp) == schemas.schema_hash(live)

def test_a_positional_call_past_the_star_is_refused_by_torch():
    """Negative control: the parser the tests above rely on does check the schema."""
    q = _meta(2, 16, 4, 8)
    with pytest.raises(RuntimeError, match="positional|schema|argument"):
        torch.ops.aten._flash_attention_forward(q, q, q, None, None, 16, 16, 0.0, True, False, 0.35)
