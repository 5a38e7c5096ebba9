"""anekit.llm.predict: predicted decode speed, monotone in the right directions, counted like the
programs anekit.kernels.decoder builds, and dispatches as the Decoder makes them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from anekit.errors import AnekitError
from anekit.llm.plan import DecoderPlan
from anekit.llm.predict import (
    PUBLISHED_DECODE,
    Q4_SLOWDOWN,
    SHAPES,
    DecodeError,
    DecodeOptions,
    decode_program_cost,
    design_choices,
    matrix_bytes,
    predict_decode,
)
from anekit.model.config import ModelConfig
from anekit.perf.model import default_params

QWEN, LLAMA = SHAPES["qwen3-0.6b"], SHAPES["llama-3.2-1b"]


def test_shapes_match_the_published_configs():
    # Llama-3.2-1B: 1,235,814,400 parameters (tied head)
    assert LLAMA.n_params() == 1_235_814_400
    assert (LLAMA.n_layers, LLAMA.dim, LLAMA.n_heads, LLAMA.n_kv_heads, LLAMA.head_dim) == (
        16,
        2048,
        32,
        8,
        64,
    )
    assert LLAMA.rope_scaling.factor == 32.0 and LLAMA.tie_embeddings
    # Qwen3-0.6B: 0.6 B in all, 0.44 B without the embedding (its model card)
    assert (QWEN.n_layers, QWEN.dim, QWEN.q_dim, QWEN.kv_dim, QWEN.hidden_dim) == (28, 1024, 2048, 1024, 3072)
    assert round((QWEN.n_params() - QWEN.vocab_size * QWEN.dim) / 1e9, 2) == 0.44
    assert getattr(QWEN, "qk_norm", True) and QWEN.tie_embeddings


def test_matrix_bytes_per_format():
    assert matrix_bytes(64, 128, "fp16") == 64 * 128 * 2
    assert matrix_bytes(64, 128, "int8") == 64 * 128 + 64 * 2  # a scale per output channel
    assert matrix_bytes(64, 128, "int4") == 64 * 128 / 2 + 64 * 128 / 32 * 2  # a scale per 32 inputs


@pytest.mark.parametrize("cfg", [QWEN, LLAMA], ids=lambda c: c.name)
def test_weight_bytes_fall_with_the_format(cfg):
    plan = DecoderPlan(cfg.n_layers if cfg is LLAMA else 14, "fp32-host", 16384, 128)
    b = {
        q: predict_decode(cfg, quant=q, max_len=512, plan=plan).weight_bytes for q in ("fp16", "int8", "int4")
    }
    assert b["int4"] < b["int8"] < b["fp16"]
    assert b["fp16"] >= 2 * cfg.n_params() * 0.99  # every weight streamed once per token


def test_more_layers_per_program_fewer_dispatches_and_faster():
    preds = [
        predict_decode(QWEN, quant="int8", max_len=512, plan=DecoderPlan(n, "fp32-host", 16384, 128))
        for n in (1, 2, 7, 14)
    ]
    disp = [p.dispatches for p in preds]
    assert disp == [28 + 1, 14 + 1, 4 + 1, 2 + 1]
    ms = [p.ms_per_token for p in preds]
    assert ms == sorted(ms, reverse=True)


def test_longer_cache_reads_more_and_is_slower():
    a, b = (predict_decode(LLAMA, quant="int8", max_len=n) for n in (256, 4096))
    assert b.cache_bytes > a.cache_bytes and b.ms_per_token > a.ms_per_token


def test_time_at_least_the_bytes_at_the_bandwidth():
    p = predict_decode(LLAMA, quant="fp16", chip="m4", max_len=512)
    cp = default_params().chip("m4")
    floor = (p.weight_bytes + p.cache_bytes) / (cp.bandwidth_gbs * 1e6) + p.dispatches * cp.dispatch_ms
    assert p.ms_per_token >= floor
    assert p.kind == "predicted" and p.tokens_per_s == pytest.approx(1000 / p.ms_per_token)


def test_int4_carries_the_published_q4_penalty():
    plan = DecoderPlan(16, "fp16", 16384, 128)
    i8 = predict_decode(LLAMA, quant="int8", max_len=512, plan=plan)
    i4 = predict_decode(LLAMA, quant="int4", max_len=512, plan=plan)
    disp = i8.dispatches * default_params().chip("m4").dispatch_ms
    assert i4.ms_per_token - disp == pytest.approx((i8.ms_per_token - disp) * Q4_SLOWDOWN, rel=1e-6)
    pub = DecodeOptions(quant_rates="published")
    f16 = predict_decode(LLAMA, quant="fp16", max_len=512, plan=plan)
    i8p = predict_decode(LLAMA, quant="int8", max_len=512, plan=plan, options=pub)
    assert i8p.ms_per_token > f16.ms_per_token  # Q8 at 97.4 % of FP16's rate


def test_design_toggles_cost_what_they_should():
    plan = DecoderPlan(14, "fp32-host", 16384, 128)
    base = predict_decode(QWEN, quant="int8", max_len=1024, plan=plan)
    for opts in (
        DecodeOptions(gqa_repeat=True),
        DecodeOptions(cache_in_place=False),
        DecodeOptions(classifier_programs="per-chunk"),
    ):
        assert (
            predict_decode(QWEN, quant="int8", max_len=1024, plan=plan, options=opts).ms_per_token
            > base.ms_per_token
        )
    per_chunk = predict_decode(
        QWEN, quant="int8", max_len=1024, plan=plan, options=DecodeOptions(classifier_programs="per-chunk")
    )
    assert per_chunk.dispatches == 2 + plan.n_vocab_chunks(QWEN.vocab_size)


def test_design_choice_table_rows():
    rows = design_choices(LLAMA, quant="int8", max_len=512)
    choices = {r["choice"] for r in rows}
    assert {
        "layers per program",
        "no GQA head repeat",
        "weights",
        "residual between programs",
        "classifier chunking",
        "cache written in place",
        "decode width",
    } <= choices
    for r in rows:
        assert r["tok_s_ours"] > 0 and r["tok_s_alternative"] > 0
    assert (
        PUBLISHED_DECODE["llama-3.2-1b"][0]["tok_s"] == 50.2
        and PUBLISHED_DECODE["qwen3-0.6b"][0]["tok_s"] == 75.0
    )


@pytest.mark.parametrize(
    "kw",
    [dict(quant="int3"), dict(max_len=0), dict(max_len=True)],
)
def test_bad_arguments(kw):
    with pytest.raises(DecodeError) as e:
        predict_decode(LLAMA, **kw)
    assert isinstance(e.value, AnekitError)


def test_bad_options():
    for kw in (dict(width=0), dict(mac_kind="fft"), dict(quant_rates="x"), dict(classifier_programs="two")):
        with pytest.raises(DecodeError):
            DecodeOptions(**kw)


def test_uncalibrated_chip_named():
    with pytest.raises(AnekitError):
        predict_decode(LLAMA, chip="m2", max_len=64)


# -- the analytical count against the real programs --------------------------------------------------


def _weights(cfg, seed=0):
    rng = np.random.default_rng(seed)
    w = {k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in cfg.param_shapes().items()}
    for k in w:
        if k.endswith("norm"):
            w[k] = np.ones_like(w[k]) + 0.1 * rng.standard_normal(w[k].shape).astype(np.float32)
    return w


SMALL = ModelConfig(
    "small",
    dim=128,
    hidden_dim=256,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    head_dim=32,
    vocab_size=96,
    seq_len=64,
)


@pytest.mark.parametrize("quant", ["fp16", "int8", "int4"])
def test_counted_like_the_built_program(quant):
    kd = pytest.importorskip("anekit.kernels.decoder")
    from anekit.perf.count import count_ops, summarize

    w = _weights(SMALL)
    names = ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3")
    layers = [{n: w[f"layers.{i}.{n}"] for n in names} for i in range(2)]
    prog = kd.group_program(
        SMALL,
        iter(layers),
        width=32,
        max_len=64,
        n_layers=2,
        first_layer=0,
        quant=quant,
        residual="fp32-host",
    )
    real = count_ops(prog.program)
    mine, _ = decode_program_cost(SMALL, range(2), quant=quant, max_len=64, residual="fp32-host")
    r, m = summarize(real.ops), summarize(mine.ops)
    assert m["conv"] == r["conv"] and m["matmul"] == r["matmul"]
    assert (mine.input_bytes, mine.output_bytes) == (real.input_bytes, real.output_bytes)
    assert mine.weight_bytes == pytest.approx(real.weight_bytes, rel=0.01)
    assert m["vector"] == pytest.approx(r["vector"], rel=0.2)


def test_dispatches_match_the_decoders_program_calls(monkeypatch):
    dec_mod = pytest.importorskip("anekit.llm.decoder")
    from anekit.backends.reference.interpreter import ReferenceKernel

    cfg = replace(SMALL, n_layers=3)
    calls = []
    # every evaluation of a reference program, through a kernel or a binding, passes here once
    orig = ReferenceKernel._execute

    def counting(self, stored, inputs):
        calls.append(1)
        return orig(self, stored, inputs)

    for plan in (DecoderPlan(1, "fp32-host", 32, 32), DecoderPlan(2, "fp16", 96, 32)):
        dec = dec_mod.Decoder(cfg, _weights(cfg), backend="reference", max_len=64, plan=plan)
        try:
            dec.prefill([1, 2, 3])
            calls.clear()
            monkeypatch.setattr(ReferenceKernel, "_execute", counting)
            dec.decode(4)
            monkeypatch.undo()
        finally:
            dec.close()
        assert len(calls) == predict_decode(cfg, plan=plan, max_len=64).dispatches


# -- anekit estimate --decode ------------------------------------------------------------------------


def _cli(*args):
    from typer.testing import CliRunner

    from anekit.cli import app

    return CliRunner(env={"COLUMNS": "200"}).invoke(app, ["estimate", *args])


def test_estimate_decode_prints_the_prediction_labelled():
    r = _cli("llama-3.2-1b", "--decode", "--weights", "int8", "--chip", "m4")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "not a measurement" in text and "dispatches per token" in text and "published: 50.2 tok/s" in text
    want = predict_decode(LLAMA, quant="int8", chip="m4", max_len=512)
    assert f"{want.tokens_per_s:.1f}" in text


def test_estimate_decode_json_and_sources(tmp_path):
    import json

    from anekit.model.io import hf_config

    r = _cli("qwen3-0.6b", "--decode", "--weights", "int4", "--max-len", "1024", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["kind"] == "predicted" and d["quant"] == "int4" and d["max_len"] == 1024 and d["published"]
    assert d["tokens_per_s"] == pytest.approx(1000 / d["ms_per_token"])
    # a Hugging Face directory (config.json only) and a config file give the same prediction
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(hf_config(LLAMA)))
    a = json.loads(_cli(str(hf), "--decode", "--json").output)
    b = json.loads(_cli("llama-3.2-1b", "--decode", "--json").output)
    assert a["ms_per_token"] == pytest.approx(b["ms_per_token"]) and a["dispatches"] == b["dispatches"]
    toml = tmp_path / "m.toml"
    toml.write_text('preset = "tiny"\n')
    assert _cli(str(toml), "--decode").exit_code == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope", "--decode"], "not a model name"),
        (["tiny", "--decode", "--weights", "int3"], "int3"),
        (["tiny", "--decode", "--chip", "m2"], "calibration"),
    ],
)
def test_estimate_decode_refusals(args, message):
    r = _cli(*args)
    assert r.exit_code == 1 and message in " ".join(r.output.split())
