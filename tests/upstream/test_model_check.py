"""`cpshim check --model`: what ring mode does with a model, from its config (the hook's own rules)."""

from __future__ import annotations

import pytest

from cpshim import cli


@pytest.mark.parametrize("model_type, code, says", [
    ("llama", 0, "ring mode runs llama"),
    ("qwen2", 0, "ring mode runs qwen2"),
    ("gemma2", 0, "attention logit softcap 50.0: computed by cpshim's reference kernels"),
    ("gemma3_text", 0, "sliding-window layers by a halo exchange"),
    ("mistral", 0, "sliding-window layers by a halo exchange"),
    ("gpt_oss", 0, "sliding-window layers by a halo exchange"),
    ("qwen2_vl", 0, "the vision tower runs unsharded and the text decoder"),
    ("vit", 1, "not a causal language model"),
])
def test_model_types_get_the_hooks_verdict(capsys, model_type, code, says):
    assert cli.main(["check", "--model", model_type]) == code
    assert says in capsys.readouterr().out


def test_a_local_config_and_its_layer_types(capsys, tmp_path):
    """Sliding layers run (a halo exchange); a layer type ring mode does not compute is refused by its type."""
    from transformers import Qwen3Config

    Qwen3Config(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"], use_sliding_window=True,
                sliding_window=16).save_pretrained(tmp_path / "sliding")
    assert cli.main(["check", "--model", str(tmp_path / "sliding" / "config.json")]) == 0
    assert "sliding-window layers by a halo exchange" in capsys.readouterr().out
    Qwen3Config(num_hidden_layers=2, layer_types=["chunked_attention", "full_attention"]).save_pretrained(
        tmp_path / "chunked")
    assert cli.main(["check", "--model", str(tmp_path / "chunked")]) == 1
    assert "chunked_attention layers" in capsys.readouterr().out
    Qwen3Config(num_hidden_layers=2).save_pretrained(tmp_path / "full")
    assert cli.main(["check", "--model", str(tmp_path / "full")]) == 0


def test_an_unknown_model_is_a_usage_error(capsys):
    assert cli.main(["check", "--model", "no_such_model_type"]) == 64
    err = capsys.readouterr().err
    assert "neither a local model directory nor a model type" in err and len(err) < 300


def test_a_refusal_the_table_met_at_run_time_is_said_from_the_config(capsys):
    """BART passes the config rules, but its forward takes no position_ids (found when the architecture table ran
    it): on the table's transformers, `check --model bart` refuses with that reason."""
    import transformers

    import cpshim.compat

    row = cpshim.compat.architecture("bart")
    if row.transformers != transformers.__version__:
        pytest.skip(f"the table is of transformers {row.transformers}")
    assert cli.main(["check", "--model", "bart"]) == 1
    out = capsys.readouterr().out
    assert "REFUSES bart" in out and "takes no position_ids" in out and "found when the architecture table ran" in out
