"""SwiGLU FFN kernels and the RMSNorm kernel against float64 NumPy oracles written here, on the
reference backend (exact numerics to ~1e-9, ANE numerics within fp16 tolerance), plus lint,
layouts and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from anekit.backends.reference import compile as ref_compile
from anekit.kernels import ffn_backward, ffn_forward, rmsnorm_forward
from anekit.mil import lint
from anekit.model import PRESETS, ModelConfig, preset

SMALL = ModelConfig(
    "small", dim=64, hidden_dim=160, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=64, seq_len=32
)
WIDE = ModelConfig(
    "wide", dim=128, hidden_dim=96, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=64, seq_len=32
)


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def oracle_forward(xn, w1, w3, w2):
    h1, h3 = w1 @ xn, w3 @ xn
    gate = h1 * sig(h1) * h3
    return {"y": w2 @ gate, "h1": h1, "h3": h3, "gate": gate}


def oracle_backward(xn, dy, w1, w3, w2):
    f = oracle_forward(xn, w1, w3, w2)
    h1, h3 = f["h1"], f["h3"]
    dgate = w2.T @ dy
    s = sig(h1)
    dh3 = dgate * h1 * s
    dh1 = dgate * h3 * (s + h1 * s * (1 - s))  # d/dh (h σ(h)) = σ + h σ (1 - σ)
    return {"dx": w1.T @ dh1 + w3.T @ dh3, "dh1": dh1, "dh3": dh3}, f


def setup(cfg, n_seq, seed):
    rng = np.random.default_rng(seed)
    D, H, N = cfg.dim, cfg.hidden_dim, n_seq * cfg.seq_len
    w1, w3 = rng.standard_normal((H, D)) / np.sqrt(D), rng.standard_normal((H, D)) / np.sqrt(D)
    w2 = rng.standard_normal((D, H)) / np.sqrt(H)
    return rng.standard_normal((D, N)), rng.standard_normal((D, N)), w1, w3, w2


def run(spec, arrays, numerics):
    x = spec.input_layout.pack(arrays, dtype=np.float64 if numerics == "exact" else np.float16)
    return spec.output_layout.unpack(ref_compile(spec.program, numerics=numerics)(x=x)["out"])


def rel_err(got, want):
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


@pytest.mark.parametrize(
    "cfg,n_seq", [(preset("tiny"), 2), (SMALL, 1), (WIDE, 3)], ids=["tiny", "small", "wide"]
)
@pytest.mark.parametrize("numerics", ["exact", "ane"])
def test_ffn_forward_and_backward(cfg, n_seq, numerics):
    xn, dy, w1, w3, w2 = setup(cfg, n_seq, seed=0)
    fwd = run(ffn_forward(cfg, n_seq=n_seq), {"xnorm": xn, "w1_t": w1.T, "w3_t": w3.T, "w2": w2}, numerics)
    want_b, want_f = oracle_backward(xn, dy, w1, w3, w2)
    h1, h3 = (fwd["h1"], fwd["h3"]) if numerics == "ane" else (want_f["h1"], want_f["h3"])
    bwd = run(
        ffn_backward(cfg, n_seq=n_seq),
        {"dy": dy, "h1": h1, "h3": h3, "w1": w1, "w3": w3, "w2_t": w2.T},
        numerics,
    )
    for got, want in ((fwd, want_f), (bwd, want_b)):
        assert set(got) == set(want)
        for k in want:
            if numerics == "exact":
                np.testing.assert_allclose(got[k], want[k], rtol=1e-9, atol=1e-12, err_msg=k)
            else:
                assert got[k].dtype == np.float16
                assert rel_err(got[k], want[k]) < 5e-3, k


def test_layouts_and_flops():
    cfg = preset("tiny")
    D, H, S = cfg.dim, cfg.hidden_dim, cfg.seq_len
    f = ffn_forward(cfg)
    assert f.input_layout.shape == (1, D, 1, S + 3 * H)
    assert f.output_layout.names == ("y", "h1", "h3", "gate")
    assert f.flops == 3 * 2 * D * H * S
    b = ffn_backward(cfg)
    assert b.input_layout.shape == (1, max(D, H), 1, 3 * S + 3 * D)
    assert b.input_layout["dy"].channels == (0, D) and b.input_layout["h1"].channels == (0, H)
    assert b.output_layout.names == ("dx", "dh1", "dh3")
    assert b.flops == 3 * 2 * D * H * S


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("kernel", [ffn_forward, ffn_backward])
def test_lint_clean_for_presets(name, kernel):
    spec = kernel(PRESETS[name], n_seq=1)
    assert [f for f in lint(spec.program, chip="m4") if f.severity != "info"] == []
    assert list(spec.program.functions["main"].inputs) == ["x"]


@pytest.mark.parametrize("kernel", [ffn_forward, ffn_backward])
def test_lint_clean_batched(kernel):
    assert [f for f in lint(kernel(preset("tiny"), n_seq=8).program, chip="m4") if f.severity != "info"] == []


@pytest.mark.parametrize("kernel", [ffn_forward, ffn_backward])
def test_program_text_is_deterministic(kernel):
    assert kernel(preset("tiny"), n_seq=4).text() == kernel(preset("tiny"), n_seq=4).text()


@pytest.mark.parametrize("numerics", ["exact", "ane"])
def test_rmsnorm_kernel(numerics):
    rng = np.random.default_rng(5)
    D, N, eps = 96, 64, 1e-5
    x, g = rng.standard_normal((D, N)), 1.0 + 0.1 * rng.standard_normal(D)
    spec = rmsnorm_forward(D, N, eps)
    assert spec.input_layout.width == 96  # N + 1 weight column, padded to a multiple of 32
    got = run(spec, {"x": x, "weight": g[:, None]}, numerics)["y"]
    want = x / np.sqrt((x * x).mean(axis=0, keepdims=True) + eps) * g[:, None]
    if numerics == "exact":
        # eps and 1/D are fp16 constants in the program: compare with those values
        eps16, inv16 = float(np.float16(eps)), float(np.float16(1.0 / D))
        exact = x / np.sqrt((x * x).sum(axis=0, keepdims=True) * inv16 + eps16) * g[:, None]
        np.testing.assert_allclose(got, exact, rtol=1e-9)
        assert rel_err(got, want) < 1e-3
    else:
        assert rel_err(got, want) < 5e-3
    ops = {op.op_type for op in spec.program.functions["main"].operations}
    assert "rsqrt" not in ops and "pow" in ops
    assert [f for f in lint(spec.program, chip="m4") if f.severity not in ("info",)] == []
