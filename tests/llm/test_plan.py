"""anekit.llm.plan: DecoderPlan validation, the plan's limits, and choose_plan's choices."""

from __future__ import annotations

import pytest

from anekit.engine_limits import DEFAULT_LOADED_PROGRAM_BUDGET, MAX_AXIS
from anekit.errors import AnekitError
from anekit.llm.plan import (
    FP16_RESIDUAL_MAX_LAYERS,
    DecoderPlan,
    PlanError,
    choose_plan,
    default_plan,
    program_count,
)
from anekit.llm.predict import SHAPES
from anekit.model.config import ModelConfig, preset


def test_plan_fields_kept():
    p = DecoderPlan(4, "fp32-host", 8192, 128)
    assert (p.layers_per_program, p.residual, p.vocab_chunk, p.prefill_chunk) == (4, "fp32-host", 8192, 128)
    assert p.n_groups(10) == 3 and p.n_vocab_chunks(20000) == 3


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(layers_per_program=0), "layers_per_program"),
        (dict(layers_per_program=True), "layers_per_program"),
        (dict(layers_per_program=2.0), "layers_per_program"),
        (dict(vocab_chunk=-1), "vocab_chunk"),
        (dict(vocab_chunk=MAX_AXIS + 1), "vocab_chunk"),
        (dict(prefill_chunk=0), "prefill_chunk"),
        (dict(residual="fp32"), "residual"),
        (dict(residual=None), "residual"),
    ],
)
def test_plan_rejects_bad_fields(kw, field):
    args = dict(layers_per_program=2, residual="fp16", vocab_chunk=1024, prefill_chunk=64) | kw
    with pytest.raises(PlanError, match=field) as e:
        DecoderPlan(**args)
    assert isinstance(e.value, AnekitError) and isinstance(e.value, ValueError)


def test_plan_error_is_an_llm_error():
    from anekit.llm.errors import LLMError

    assert issubclass(PlanError, LLMError)


def test_check_against_the_model():
    cfg = preset("tiny")  # 4 layers
    DecoderPlan(4, "fp16", 512, 64).check(cfg)
    with pytest.raises(PlanError, match="exceeds the model's 4 layers"):
        DecoderPlan(5, "fp16", 512, 64).check(cfg)
    deep = ModelConfig(
        "deep", dim=64, hidden_dim=128, n_layers=200, n_heads=2, n_kv_heads=2, vocab_size=64, seq_len=64
    )
    with pytest.raises(PlanError, match="loaded programs"):
        DecoderPlan(1, "fp32-host", 64, 64).check(deep)
    wide = ModelConfig(
        "wide", dim=8192, hidden_dim=32768, n_layers=4, n_heads=64, n_kv_heads=8, vocab_size=64, seq_len=64
    )
    with pytest.raises(PlanError, match="2 GiB"):
        DecoderPlan(4, "fp32-host", 64, 64).check(wide, "fp16")
    with pytest.raises(PlanError, match="width limit"):
        DecoderPlan(1, "fp16", 32, 64).check(
            ModelConfig(
                "v",
                dim=64,
                hidden_dim=64,
                n_layers=1,
                n_heads=2,
                n_kv_heads=2,
                vocab_size=32 * 600,
                seq_len=64,
            )
        )


def test_program_count_as_the_decoder_counts():
    decoder = pytest.importorskip("anekit.llm.decoder")
    for cfg in (preset("tiny"), SHAPES["qwen3-0.6b"], SHAPES["llama-3.2-1b"]):
        for plan in (DecoderPlan(1, "fp16", 4096, 32), DecoderPlan(3, "fp32-host", 8192, 128)):
            for max_len in (32, 512):
                assert program_count(cfg, plan, max_len) == decoder.program_count(cfg, plan, max_len)


@pytest.mark.parametrize("name", ["tiny", "stories110m", "qwen3-0.6b", "llama-3.2-1b"])
@pytest.mark.parametrize("quant", ["fp16", "int8", "int4"])
def test_choose_plan_fits_the_model_and_the_engine(name, quant):
    cfg = SHAPES[name] if name in SHAPES else preset(name)
    plan = choose_plan(cfg, quant=quant, chip="m4", max_len=512)
    plan.check(cfg, quant)
    assert program_count(cfg, plan, 512) <= DEFAULT_LOADED_PROGRAM_BUDGET
    if plan.residual == "fp32-host":
        assert plan.layers_per_program <= FP16_RESIDUAL_MAX_LAYERS
    assert plan.prefill_chunk <= 512


def test_choose_plan_reasoned_choices():
    # 28 layers: past the ~16 layers an fp16 residual between dispatches survived (§10.4)
    qwen = choose_plan(SHAPES["qwen3-0.6b"], quant="int8", max_len=512)
    assert qwen.residual == "fp32-host" and qwen.layers_per_program == 14  # two balanced groups
    # 16 layers at dim 2048: everything in one program, the residual never leaves it
    llama = choose_plan(SHAPES["llama-3.2-1b"], quant="int8", max_len=512)
    assert llama.residual == "fp16" and llama.layers_per_program == 16
    # a short context caps the prefill chunk
    assert choose_plan(preset("tiny"), max_len=40).prefill_chunk == 40


def test_default_plan_without_the_cost_model():
    plan = default_plan(SHAPES["qwen3-0.6b"], quant="fp16", max_len=256)
    assert plan.residual == "fp32-host" and plan.layers_per_program == FP16_RESIDUAL_MAX_LAYERS
    plan.check(SHAPES["qwen3-0.6b"])


def test_unknown_weights_refused():
    with pytest.raises(AnekitError, match="int3"):
        choose_plan(preset("tiny"), quant="int3")


def test_engine_shape_limits():
    cfg = SHAPES["qwen3-0.6b"]
    # 32 layers' caches of 2 x 1024 channels each would pass the 65536-channel axis of one input
    wide = ModelConfig(
        "w", dim=1024, hidden_dim=2048, n_layers=40, n_heads=8, n_kv_heads=8, vocab_size=64, seq_len=64
    )
    with pytest.raises(PlanError, match="axis limit"):
        DecoderPlan(40, "fp16", 64, 64).check(wide)
    assert choose_plan(wide, max_len=64).layers_per_program * 2 * wide.kv_dim <= MAX_AXIS
    # a long cache leaves less room for the prefill chunk in the packed input's width
    with pytest.raises(PlanError, match="width limit"):
        DecoderPlan(14, "fp32-host", 50656, 128).check(cfg, "fp16", max_len=16300)
    plan = choose_plan(cfg, max_len=16300)
    plan.check(cfg, "fp16", max_len=16300)
    assert plan.prefill_chunk < 128


def test_input_shape_as_the_kernels_lay_it_out():
    kd = pytest.importorskip("anekit.kernels.decoder")
    from anekit.llm.plan import group_input_shape

    for cfg in (preset("tiny"), SHAPES["qwen3-0.6b"], SHAPES["llama-3.2-1b"]):
        for layers, width, max_len in ((1, 32, 64), (3, 128, 512), (14, 32, 4096)):
            assert group_input_shape(cfg, layers, width, max_len) == kd.group_input_shape(
                cfg, layers, width, max_len
            )
