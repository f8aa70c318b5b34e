"""`cpshim check --model`: what ring mode does with a model, from its config (the hook's own rules)."""

from __future__ import annotations

import pytest

import cpshim
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


def test_recurrent_mixers_say_how_their_cores_run(capsys, tmp_path):
    """Gated DeltaNet: by head shards for the cp sizes that divide its key and value heads, else the chain;
    Mamba-2: the state passed run to run (where transformers has the families and their patches apply)."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Qwen3_5TextConfig") or not cpshim.report()["qwen3-5-gated-deltanet"].variant:
        pytest.skip("Gated DeltaNet under ring CP needs transformers >= 5.21")
    transformers.Qwen3_5TextConfig(num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
                                   linear_num_key_heads=6, linear_num_value_heads=12).save_pretrained(tmp_path / "q")
    assert cli.main(["check", "--model", str(tmp_path / "q")]) == 0
    assert "cores by head shards (an all-to-all of their inputs and outputs) where cp divides 6 and 12 heads " \
           "(cp = 2, 3, 6), else along the state passed run to run" in capsys.readouterr().out
    assert cli.main(["check", "--model", "bamba"]) == 0
    assert "recurrent mixers with the state passed run to run" in capsys.readouterr().out


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
