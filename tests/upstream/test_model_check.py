"""`cpshim check --model`: what ring mode does with a model, from its config (the hook's own rules)."""

from __future__ import annotations

import pytest

from cpshim import cli


@pytest.mark.parametrize("model_type, code, says", [
    ("llama", 0, "ring mode runs llama"),
    ("qwen2", 0, "ring mode runs qwen2"),
    ("gemma2", 1, "attn_logit_softcapping"),  # and sliding layers: both named
    ("qwen2_vl", 0, "batches with images"),
    ("vit", 1, "not a causal language model"),
])
def test_model_types_get_the_hooks_verdict(capsys, model_type, code, says):
    assert cli.main(["check", "--model", model_type]) == code
    assert says in capsys.readouterr().out


def test_a_local_config_and_its_layer_types(capsys, tmp_path):
    """A sliding layer in layer_types is refused by its type; the same model with full layers runs."""
    from transformers import Qwen3Config

    config = Qwen3Config(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"],
                         use_sliding_window=True, sliding_window=16)
    config.save_pretrained(tmp_path / "sliding")
    assert cli.main(["check", "--model", str(tmp_path / "sliding" / "config.json")]) == 1
    assert "sliding_attention layers" in capsys.readouterr().out
    Qwen3Config(num_hidden_layers=2).save_pretrained(tmp_path / "full")
    assert cli.main(["check", "--model", str(tmp_path / "full")]) == 0


def test_an_unknown_model_is_a_usage_error(capsys):
    assert cli.main(["check", "--model", "no_such_model_type"]) == 64
    err = capsys.readouterr().err
    assert "neither a local model directory nor a model type" in err and len(err) < 300
