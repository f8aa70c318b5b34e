"""`cpshim.ring.shrink`: a tiny config of any model type keeps what ring mode decides on, on every version.

The architecture table trains these configs; a shrink that dropped a layer type, a window or the head
layout would classify another model than the type's.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import ROOT

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig  # noqa: E402
from transformers.models.auto import modeling_auto  # noqa: E402

from cpshim.patches.accelerate_prepare_cp import non_full_attention_layers, text_config  # noqa: E402
from cpshim.ring import model_check  # noqa: E402
from cpshim.ring.shrink import OVERRIDES, VOCAB, shrink  # noqa: E402

TYPES = sorted(set(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
               | set(getattr(modeling_auto, "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", {})))
#: Families the table must always be able to build, on every version where they exist.
MUST_SHRINK = ("llama", "qwen2", "qwen3", "mistral", "mixtral", "gemma2", "gemma3_text", "gpt_oss", "deepseek_v3")


def _text(config):
    return text_config(config)


@pytest.mark.parametrize("model_type", [t for t in MUST_SHRINK if t in TYPES])
def test_the_parity_families_shrink(model_type):
    assert _text(shrink(model_type)).num_hidden_layers <= 4


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_type=st.sampled_from([t for t in TYPES if t not in OVERRIDES]))
def test_a_shrunk_config_keeps_what_ring_mode_decides_on(model_type):
    try:
        default = AutoConfig.for_model(model_type)
    except Exception:  # transformers' own default does not validate (Gemma 4 assistant on 5.24)
        return
    try:
        small = shrink(model_type)
    except Exception:  # the table's `not built`, with this error as the reason
        return
    assert set(non_full_attention_layers(small)) == set(non_full_attention_layers(default))
    d, s = _text(default), _text(small)
    if getattr(d, "layer_types", None) and len(set(d.layer_types)) <= 4:
        assert set(s.layer_types) == set(d.layer_types) and len(s.layer_types) == s.num_hidden_layers
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "sliding_window"):
        if isinstance(getattr(d, key, None), int):
            assert getattr(s, key) <= getattr(d, key), key
    if isinstance(getattr(d, "vocab_size", None), int):
        assert s.vocab_size <= VOCAB
        for key, value in s.to_dict().items():
            if key.endswith("token_id") and isinstance(value, int):
                assert value < s.vocab_size, key
    heads, kv = getattr(d, "num_attention_heads", None), getattr(d, "num_key_value_heads", None)
    if isinstance(heads, int) and isinstance(kv, int):  # MHA, GQA and MQA stay what they were
        assert (s.num_key_value_heads == s.num_attention_heads) == (kv == heads)
        assert (s.num_key_value_heads == 1) == (kv == 1)


def test_the_tables_config_verdicts_hold_on_its_transformers():
    """Where the installed transformers is the table's: a type the table ran (exact) passes the config rules,
    and a type it refused from the config still is."""
    results = json.loads((ROOT / "compat_matrix" / "architecture-runs.json").read_text())
    if results["transformers"] != transformers.__version__:
        pytest.skip(f"the table is of transformers {results['transformers']}")
    for row in results["rows"]:
        if row["verdict"] == "exact" or (row["verdict"] == "refused" and "Error:" not in row["reason"]):
            try:
                config = shrink(row["type"])
            except Exception:  # refused from its default config (the worker's fallback)
                config = AutoConfig.for_model(row["type"])
            code, lines = model_check.verdict(config)
            assert code == (row["verdict"] != "exact"), (row, lines)
