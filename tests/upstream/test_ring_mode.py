"""Ring mode in one process with the real Trainer: enable/disable, the report, and the refusals
that happen before any communication (multi-rank behaviour: tests/parity)."""

from __future__ import annotations


import importlib.util

import pytest

import cpshim

pytestmark = [pytest.mark.skipif(importlib.util.find_spec("ring_flash_attn") is None,
                                reason="needs ring-flash-attn (pip install 'cpshim[ring]')"), pytest.mark.needs_cp]


@pytest.fixture
def ring(cp, trainer):
    rep = cpshim.enable()
    trainer.model.config._attn_implementation = "sdpa"
    yield rep
    cpshim.disable()
    trainer.label_smoother = None


def test_enable_reports_what_is_bound(ring):
    assert ring.mode == "ring"
    info = cpshim.report().ring
    assert info["strategy"] == "zigzag" and info["provider"] == "reference"
    bound = info["bound"]["ring_flash_attn.zigzag_ring_flash_attn"]
    assert bound["_flash_attn_forward"].startswith("cpshim.ring.providers.reference")
    assert "bf" in info["compute"] or "bfloat16" in info["compute"]
    assert cpshim.disable().mode == "external"


def test_bad_enable_arguments(cp):
    with pytest.raises(cpshim.ConfigurationError, match="strategy"):
        cpshim.enable(strategy="spiral")
    with pytest.raises(cpshim.ConfigurationError, match="heads_k_stride"):
        cpshim.enable(heads_k_stride=0)


def _prepare(trainer, model, batch):
    return trainer._prepare_context_parallel_inputs(model, dict(batch))


def test_unroutable_attention_is_refused(trainer, ring, batch):
    trainer.model.config._attn_implementation = "flex_attention"
    with pytest.raises(cpshim.CpshimRuntimeError, match="attn_implementation='flex_attention'"):
        _prepare(trainer, trainer.model, batch)


def test_vision_language_batches_pass_the_checks_or_name_what_is_missing(trainer, ring, batch):
    """Qwen2-VL with an image batch passes the checks (in one process the CP group check stops it); packed rows
    (position_ids) and the varlen strategy are refused by name."""
    import torch
    from transformers import AutoModelForImageTextToText

    from cpshim.ring import parity_models, runtime

    model = AutoModelForImageTextToText.from_config(parity_models.config({"model": "qwen2_vl"}))
    image = {**batch, "pixel_values": torch.zeros(64, 24), "image_grid_thw": torch.tensor([[1, 8, 8]] * 2)}
    with pytest.raises(cpshim.CpshimRuntimeError, match="processes per CP group"):
        _prepare(trainer, model, image)
    with pytest.raises(cpshim.CpshimRuntimeError, match="vision-language batch with position_ids"):
        _prepare(trainer, model, {**image, "position_ids": torch.arange(16).expand(2, 16)})
    runtime.settings["strategy"] = "varlen"
    try:
        with pytest.raises(cpshim.CpshimRuntimeError, match="'varlen' \\(packed rows\\) is not supported"):
            _prepare(trainer, model, image)
    finally:
        runtime.settings["strategy"] = "zigzag"


def test_a_text_batch_of_a_vision_language_model_without_loss_kwargs_enters_at_its_decoder(trainer, ring, batch):
    """Qwen2.5-VL takes no loss kwargs: its text-only batches are sharded at the decoder's entry too (where the
    batch can carry the target count its loss needs); plain position_ids pass, packed ones are refused by name."""
    import torch
    from transformers import AutoModelForImageTextToText

    from cpshim.ring import parity_models, vlm

    model = AutoModelForImageTextToText.from_config(parity_models.config({"model": "qwen2_5_vl"}))
    saved = trainer.model_accepts_loss_kwargs
    trainer.model_accepts_loss_kwargs = False
    try:
        assert vlm.enters_at_decoder(trainer, model) and not vlm.enters_at_decoder(trainer, trainer.model)
        with pytest.raises(cpshim.CpshimRuntimeError, match="processes per CP group"):
            _prepare(trainer, model, {**batch, "position_ids": torch.arange(16).expand(2, 16)})
        packed = torch.cat([torch.arange(8), torch.arange(8)]).expand(2, 16)
        with pytest.raises(cpshim.CpshimRuntimeError, match="packed rows are not supported"):
            _prepare(trainer, model, {**batch, "position_ids": packed})
    finally:
        trainer.model_accepts_loss_kwargs = saved


def test_the_decoder_entry_numbers_whole_rows_where_the_model_passes_no_positions():
    """A decoder called without position_ids would count each shard from 0: the entry hook gives it this
    rank's share of 0..L-1, as one process counts (zigzag, cp=2, rank 1: chunks 1 and 2 of 4)."""
    import torch

    from cpshim.ring import vlm
    from cpshim.ring.step import Step

    step = Step(cp=2, rank=1, group=None, strategy="zigzag", local_len=8, global_len=16, padding=0,
                heads_k_stride=1, ring_dtype="bfloat16", model=torch.nn.Linear(1, 1))
    _, kw = vlm._entry_hook(step, 2, 16)(torch.nn.Identity(), (), {"inputs_embeds": torch.zeros(2, 16, 4)})
    assert kw["inputs_embeds"].shape == (2, 8, 4)
    assert kw["position_ids"].tolist() == [list(range(4, 12))] * 2


def test_image_batches_of_an_unproven_vision_language_model_are_refused(trainer, ring, batch):
    """Gemma 3's decoder attends bidirectionally within an image (a causal ring does not): its image batches are
    refused by name; its text-only batches pass the checks."""
    import torch

    from cpshim.ring.shrink import build, shrink

    model = build(shrink("gemma3"))
    with pytest.raises(cpshim.CpshimRuntimeError, match="image batches of gemma3 are not proven exact"):
        _prepare(trainer, model, {**batch, "pixel_values": torch.zeros(2, 3, 32, 32)})
    with pytest.raises(cpshim.CpshimRuntimeError, match="processes per CP group"):
        _prepare(trainer, model, batch)


def test_eager_attention_passes_the_model_checks_and_attention_weights_are_refused(trainer, ring, batch):
    trainer.model.config._attn_implementation = "eager"
    with pytest.raises(cpshim.CpshimRuntimeError, match="processes per CP group"):
        _prepare(trainer, trainer.model, batch)
    with pytest.raises(cpshim.CpshimRuntimeError, match="output_attentions=True"):
        _prepare(trainer, trainer.model, {**batch, "output_attentions": True})
    trainer.model.config.output_attentions = True
    try:
        with pytest.raises(cpshim.CpshimRuntimeError, match="config.output_attentions=True"):
            _prepare(trainer, trainer.model, batch)
    finally:
        trainer.model.config.output_attentions = False


def test_eager_configs_read_sdpa_only_while_their_step_is_current(ring):
    """`cpshim.ring.eager`: the step's eager configs are routed while it is current, through nested steps (the
    backbone's) and back, and read "eager" again inside generation and after the step."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from cpshim.ring import runtime
    from cpshim.ring.step import Step

    sizes = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, attn_implementation="eager")
    model, other = LlamaForCausalLM(LlamaConfig(**sizes)), LlamaForCausalLM(LlamaConfig(**sizes))

    def step(m):
        return Step(cp=2, rank=0, group=None, strategy="zigzag", local_len=4, global_len=8, padding=0,
                    heads_k_stride=1, ring_dtype="bfloat16", model=m)

    outer = step(model)
    runtime.set_step(outer)
    try:
        assert model.config._attn_implementation == "sdpa"
        inner = step(model)  # built while the outer step routes the same config
        runtime.set_step(inner)
        assert inner.eager == outer.eager and model.config._attn_implementation == "sdpa"
        with runtime.generating():
            assert model.config._attn_implementation == "eager"
        assert model.config._attn_implementation == "sdpa"
        runtime.set_step(step(other))
        assert (model.config._attn_implementation, other.config._attn_implementation) == ("eager", "sdpa")
    finally:
        runtime.set_step(None)
    assert (model.config._attn_implementation, other.config._attn_implementation) == ("eager", "eager")


def test_softcap_needs_the_reference_kernels():
    from transformers import Gemma2Config

    from cpshim.ring.trainer_hook import config_problems

    assert config_problems(Gemma2Config(), 1, "reference") == []
    [problem] = config_problems(Gemma2Config(), 1, "torch_cuda")
    assert "attn_logit_softcapping=50.0" in problem and "torch_cuda" in problem


def test_sliding_window_model_passes_the_model_checks(trainer, ring, batch):
    """Sliding layers run a halo exchange (`cpshim.ring.sliding`): Mistral's window passes the model checks, so
    in one process the next check (no cp group) stops it; a layer type ring mode does not compute is refused
    by its name."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen3Config, Qwen3ForCausalLM

    sizes = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, attn_implementation="sdpa")
    model = MistralForCausalLM(MistralConfig(**sizes, sliding_window=8))
    with pytest.raises(cpshim.CpshimRuntimeError, match="processes per CP group"):
        _prepare(trainer, model, batch)
    chunked = Qwen3ForCausalLM(Qwen3Config(**sizes, layer_types=["chunked_attention", "full_attention"]))
    with pytest.raises(cpshim.CpshimRuntimeError, match="chunked_attention layers: ring mode computes only"):
        _prepare(trainer, chunked, batch)


def test_conv_layers_pass_where_their_family_patch_runs(trainer, ring, batch):
    """LFM2's conv layers run the `lfm2-short-conv` patch (`cpshim.ring.short_conv`): its model passes the model
    checks; conv layers in a family no patch computes are refused, naming the family and what to do."""
    from transformers import Lfm2Config, Lfm2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    sizes = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, attn_implementation="sdpa")
    lfm2 = Lfm2ForCausalLM(Lfm2Config(**sizes, layer_types=["conv", "full_attention"]))
    with pytest.raises(cpshim.CpshimRuntimeError, match="processes per CP group"):
        _prepare(trainer, lfm2, batch)
    config = Qwen3Config(**sizes)
    config.layer_types = ["conv", "full_attention"]  # set after the config's own validation (4.x checks the names)
    other = Qwen3ForCausalLM(config)
    with pytest.raises(cpshim.CpshimRuntimeError, match="qwen3 has conv layers that no cpshim patch computes.*"
                                                        "without cpshim.enable"):
        _prepare(trainer, other, batch)


def _recurrent_model(kind):
    import transformers

    sizes = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, attn_implementation="sdpa")
    if kind == "jamba-mamba1":
        return transformers.JambaForCausalLM(transformers.JambaConfig(
            **sizes, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
            num_experts=2, use_mamba_kernels=False))
    if kind == "recurrent-gemma-rg-lru":
        return transformers.RecurrentGemmaForCausalLM(transformers.RecurrentGemmaConfig(
            **{**sizes, "num_hidden_layers": 3, "attn_implementation": "eager"},  # 4.x has no sdpa for it
            lru_width=32, head_dim=8, attention_window_size=8))
    if kind == "qwen3-5-gated-deltanet":
        if not hasattr(transformers, "Qwen3_5TextConfig"):
            pytest.skip("no Qwen3.5 in this transformers")
        return transformers.Qwen3_5ForCausalLM(transformers.Qwen3_5TextConfig(
            **sizes, head_dim=8, linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=8,
            linear_value_head_dim=8, layer_types=["linear_attention", "full_attention"]))
    return transformers.BambaForCausalLM(transformers.BambaConfig(
        **sizes, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_expand=2, attn_layer_indices=[1]))


@pytest.mark.parametrize(("kind", "since"), [("qwen3-5-gated-deltanet", "5.21"), ("bamba-mamba2", "5.21"),
                                           ("jamba-mamba1", "5.21"), ("recurrent-gemma-rg-lru", "5.23")])
def test_recurrent_layers_pass_where_their_patch_runs_and_name_the_upgrade_below(trainer, ring, batch, kind, since):
    """Qwen3.5's Gated DeltaNet, Bamba's Mamba-2, Jamba's Mamba-1 (from transformers 5.21) and RecurrentGemma's
    RG-LRU (from 5.23, where its config names its layers `linear_attention`) run their patches
    (`cpshim.ring.carry_state`); below, their layers are refused, naming the release to upgrade to (4.x Jamba's
    config names no layer types, nor do RecurrentGemma's below 5.23: their convs, found in the modules)."""
    model = _recurrent_model(kind)
    applies = cpshim.report()[kind].variant is not None
    with pytest.raises(cpshim.CpshimRuntimeError,
                       match="processes per CP group" if applies else f"(transformers (to )?|on )>= {since}"):
        _prepare(trainer, model, batch)


def test_a_conv_mixer_the_config_does_not_name_is_refused_from_its_modules(trainer, ring, batch):
    """A model whose config names no conv or recurrent layer (here Bamba with `layer_types` wiped, as 4.x
    configs have none) is refused from its modules where its mixer's patch does not run, never trained with
    each shard's convolution and state on their own."""
    from transformers import BambaConfig, BambaForCausalLM

    from cpshim.ring import mixers

    model = BambaForCausalLM(BambaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, mamba_n_heads=4,
                                         mamba_d_head=16, mamba_d_state=8, attn_layer_indices=[1],
                                         attn_implementation="sdpa"))
    try:
        model.config.layer_types = None
    except AttributeError:  # 5.x maps layer_types to a layers_block_type property with no setter
        model.config.__class__ = type("BambaConfigWithoutLayerTypes", (type(model.config),),
                                      {"layers_block_type": None})
    assert model.config.layer_types is None
    active = cpshim.report()["bamba-mamba2"].variant is not None
    assert bool(mixers.unpatched_causal_convs(model)) != active
    if not active:
        with pytest.raises(cpshim.CpshimRuntimeError, match="causal convolution .*model.layers.0.mamba.conv1d in "
                                                            "BambaMixer"):
            _prepare(trainer, model, batch)


def test_label_smoothing_is_refused(trainer, ring, batch):
    from transformers.trainer_pt_utils import LabelSmoother

    trainer.label_smoother = LabelSmoother(epsilon=0.1)
    with pytest.raises(cpshim.CpshimRuntimeError, match="label_smoothing_factor"):
        _prepare(trainer, trainer.model, batch)


def test_batch_without_labels_takes_the_backbone_path(trainer, ring, batch):
    """A sequence-level trainer (TRL DPO/KTO, reward models) sends no labels, in training and in eval: none of
    the label checks applies (its heads and loss run on the whole sequence), so in one process the next
    check (no cp group) stops it, after the trainer checks of the backbone path."""
    import torch

    unlabeled = {"input_ids": batch["input_ids"]}
    trainer.label_smoother = object()  # a label-path refusal must not fire for a label-less batch
    try:
        for grad in (True, False):
            with torch.set_grad_enabled(grad), pytest.raises(cpshim.CpshimRuntimeError, match="processes per CP"):
                _prepare(trainer, trainer.model, unlabeled)
    finally:
        trainer.label_smoother = None


def test_generation_batch_is_refused(trainer, ring):
    """A raw generation batch (a list of prompt dicts) from a trainer whose generation cpshim does not split
    (this plain Trainer; TRL's GRPO/RLOO below 1.4): refused naming the trainer, not an AttributeError."""
    with pytest.raises(cpshim.CpshimRuntimeError, match="Trainer sent a list batch, not a dict of tensors"):
        trainer._prepare_context_parallel_inputs(trainer.model, [{"prompt": "t3 t4"}])


@pytest.mark.parametrize("key", ["pixel_values", "pixel_values_videos", "input_features"])
def test_vision_and_audio_batches_ring_mode_cannot_shard_are_refused_by_name(trainer, ring, batch, key):
    """A modality batch for a model without a text decoder to shard at (this Llama), or without labels (the
    backbone path of preference trainers): refused before sharding, naming the key."""
    import torch

    with pytest.raises(cpshim.CpshimRuntimeError, match=f"carries {key}, and LlamaForCausalLM has no text decoder"):
        _prepare(trainer, trainer.model, {**batch, key: torch.zeros(4, 8)})
    with pytest.raises(cpshim.CpshimRuntimeError, match=f"carries {key} and no labels"):
        _prepare(trainer, trainer.model, {"input_ids": batch["input_ids"], key: torch.zeros(4, 8)})
    text_only = {**batch, "pixel_values": None}  # a collator's empty slot is not an image
    with pytest.raises(cpshim.CpshimRuntimeError, match="processes per CP group"):
        _prepare(trainer, trainer.model, text_only)


@pytest.mark.parametrize("strategy", ["zigzag", "contiguous", "varlen"])
def test_packed_rows_need_the_varlen_strategy(trainer, cp, batch, strategy):
    """position_ids restarting inside a row without a mask (TRL's padding_free, packing collators): one process
    keeps the documents apart (transformers' block mask, flash varlen), zigzag/contiguous would not."""
    import torch

    cpshim.enable(strategy=strategy)
    try:
        trainer.model.config._attn_implementation = "sdpa"
        packed = {**batch, "position_ids": torch.cat([torch.arange(10), torch.arange(6)]).expand(2, 16)}
        want = "strategy='varlen'" if strategy != "varlen" else "processes per CP group"
        with pytest.raises(cpshim.CpshimRuntimeError, match=want):
            _prepare(trainer, trainer.model, packed)
        with pytest.raises(cpshim.CpshimRuntimeError, match="processes per CP group"):  # one document per row
            _prepare(trainer, trainer.model, {**batch, "position_ids": torch.arange(16).expand(2, 16)})
        padded = {**packed, "attention_mask": torch.ones(2, 16, dtype=torch.long)}  # a mask: restarts are padding
        padded["attention_mask"][:, 10:] = 0
        with pytest.raises(cpshim.CpshimRuntimeError, match="processes per CP group"):
            _prepare(trainer, trainer.model, padded)
    finally:
        cpshim.disable()


def test_heads_k_stride_must_divide_kv_heads(trainer, cp, batch):
    cpshim.enable(heads_k_stride=3)
    try:
        with pytest.raises(cpshim.CpshimRuntimeError, match="heads_k_stride=3"):
            _prepare(trainer, trainer.model, batch)
    finally:
        cpshim.enable()
        cpshim.disable()


def test_single_process_cp_is_a_clear_error(trainer, ring, batch):
    with pytest.raises(cpshim.CpshimRuntimeError, match="processes per CP group"):
        _prepare(trainer, trainer.model, batch)


def test_kv_cache_is_refused(trainer, ring, batch):
    with pytest.raises(cpshim.CpshimRuntimeError, match="use_cache=False"):
        _prepare(trainer, trainer.model, {**batch, "use_cache": True})


def test_keys_registered_after_enable_are_routed_per_lookup(ring):
    """Hub kernels register at model load, after enable(): routing decides at each lookup, and only while a
    sharded step is in flight in the calling thread (outside, the lookup is upstream's own value)."""
    import threading

    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from cpshim.ring import runtime

    def late_kernel(module, query, key, value, attention_mask, **kwargs):
        return query.transpose(1, 2), None

    AttentionInterface.register("late_hub_kernel", late_kernel)
    upstream_sdpa = AttentionInterface._global_mapping["sdpa"]
    assert not runtime.ROUTING.open
    assert ALL_ATTENTION_FUNCTIONS["late_hub_kernel"] is late_kernel
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is upstream_sdpa
    runtime.set_step(object())
    try:
        assert runtime.ROUTING.open
        for key in ("late_hub_kernel", "sdpa"):
            routed = ALL_ATTENTION_FUNCTIONS[key]
            assert routed is not AttentionInterface._global_mapping[key]
            assert routed.__wrapped__ is AttentionInterface._global_mapping[key]
        assert ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]() is None  # no mask built for a sharded step
        seen = []  # another thread, no step of its own: upstream's value, though the gate is open
        thread = threading.Thread(target=lambda: seen.append(ALL_ATTENTION_FUNCTIONS["sdpa"]))
        thread.start()
        thread.join()
        assert seen == [upstream_sdpa]
    finally:
        runtime.set_step(None)
    assert not runtime.ROUTING.open and ALL_ATTENTION_FUNCTIONS["sdpa"] is upstream_sdpa
    cpshim.revert()
    assert ALL_ATTENTION_FUNCTIONS["late_hub_kernel"] is late_kernel  # revert restores plain lookups


def test_strict_failure_holds_the_routing_gate_open(upstream):
    """A gated patch that must raise on every call (strict policy) cannot let a closed gate skip it."""
    from cpshim import lifecycle
    from cpshim.ring import runtime

    st = lifecycle._states["attention-dispatch"]
    lifecycle._raise_on_call(st, cpshim.UnsupportedVersionError("test"))
    try:
        assert runtime.ROUTING.open
    finally:
        lifecycle._raise_on_call(st, None)
    assert not runtime.ROUTING.open
