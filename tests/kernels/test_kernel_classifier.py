"""Classifier + cross-entropy kernels (`anekit.kernels.classifier`) against float64 NumPy oracles
written here, on the reference backend (exact numerics to ~1e-9, engine numerics within fp16
tolerance), plus layouts, FLOPs, chunk sizes, lint, determinism, and `requires_ane` checks of the
engine against the reference backend (not run without a Mac)."""

from __future__ import annotations

import numpy as np
import pytest

from anekit.backends.reference import compile as ref_compile
from anekit.engine_limits import MASK_VALUE, MAX_SPATIAL
from anekit.kernels.classifier import (
    MIN_CHUNK,
    PAD_LOGIT,
    classifier_backward,
    classifier_forward,
    default_vocab_chunk,
    vocab_chunks,
)
from anekit.mil import lint
from anekit.model import PRESETS

KERNELS = {"forward": classifier_forward, "backward": classifier_backward}


def oracle_forward(x, w):
    """Per token: max over the chunk's logits and Σ exp(logit - max), float64."""
    logits = w @ x
    m = logits.max(axis=0)
    return {"m": m[None, :], "s": np.exp(logits - m).sum(axis=0)[None, :]}


def oracle_backward(x, w, shift, scale_w, scale_x):
    """q = exp(W·x - shift) per token; dW = (q ⊙ scale_w)·xᵀ, dxᵀ = scale_x ⊙ (Wᵀ·q)ᵀ, float64."""
    q = np.exp(w @ x - shift[None, :])
    return {"dw": (q * scale_w[None, :]) @ x.T, "dx_t": (w.T @ q).T * scale_x[:, None]}


def operands(d, n, rows, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((d, n))
    w = rng.standard_normal((rows, d)) * (2.0 / np.sqrt(d))
    logits = w @ x
    shift = logits.max(axis=0) + rng.uniform(0.0, 0.5, n)  # q <= 1, as the host sends it
    scales = rng.uniform(0.5, 2.0, n) / n, rng.uniform(0.5, 1.0, n)
    return x, w, shift, scales


def pack(spec, x, w, shift=None, scales=None, dtype=np.float16):
    vc = spec.input_layout["w_t"].shape[1]
    w_t = np.zeros((x.shape[0], vc))
    w_t[:, : w.shape[0]] = w.T  # a last chunk's padding rows are zero
    arrays = {"x": x, "w_t": w_t}
    if shift is not None:
        arrays["shift"] = shift[None, :]
        arrays["scale_w"], arrays["scale_x"] = (a[None, :] for a in scales)
    return spec.input_layout.pack(arrays, dtype=dtype)


def run(spec, buf, numerics):
    return spec.output_layout.unpack(ref_compile(spec.program, numerics=numerics)(x=buf)["out"])


def rel_err(got, want):
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


@pytest.mark.parametrize("numerics", ["exact", "ane"])
@pytest.mark.parametrize("d,n,vc,valid", [(64, 32, 96, None), (96, 64, 128, 100), (32, 32, 64, 33)])
def test_forward_matches_oracle(numerics, d, n, vc, valid):
    rows = vc if valid is None else valid
    x, w, _, _ = operands(d, n, rows, seed=1)
    spec = classifier_forward(d, n, vc, valid)
    got = run(spec, pack(spec, x, w, dtype=np.float64 if numerics == "exact" else np.float16), numerics)
    want = oracle_forward(x, w)
    for k in ("m", "s"):
        if numerics == "exact":
            np.testing.assert_allclose(got[k], want[k], rtol=1e-9, err_msg=k)
        else:
            assert got[k].dtype == np.float16
            assert rel_err(got[k], want[k]) < 5e-3, k


@pytest.mark.parametrize("numerics", ["exact", "ane"])
@pytest.mark.parametrize("d,n,vc,valid", [(64, 32, 96, None), (96, 64, 128, 100), (32, 32, 64, 33)])
def test_backward_matches_oracle(numerics, d, n, vc, valid):
    rows = vc if valid is None else valid
    x, w, shift, scales = operands(d, n, rows, seed=2)
    spec = classifier_backward(d, n, vc, valid)
    buf = pack(spec, x, w, shift, scales, dtype=np.float64 if numerics == "exact" else np.float16)
    got = run(spec, buf, numerics)
    if numerics == "ane":  # the oracle on the fp16 operands the kernel saw
        x, w, shift, *scales = (np.asarray(a, np.float16).astype(np.float64) for a in (x, w, shift, *scales))
    want = oracle_backward(x, w, shift, *scales)
    assert got["dx_t"].shape == (n, d) and got["dw"].shape == (vc, d)
    assert np.all(got["dw"][rows:] == 0)  # padding rows: exp of the masked logits is exactly 0
    for k in ("dw", "dx_t"):
        g = got[k][:rows] if k == "dw" else got[k]
        if numerics == "exact":
            np.testing.assert_allclose(g, want[k], rtol=1e-9, atol=1e-12, err_msg=k)
        else:
            assert rel_err(g, want[k]) < 5e-3, k


def test_small_scales_keep_gradients_off_zero():
    """The scales multiply x and qᵀ·W, never the small probabilities q: with scales of 2^-12 dW and
    dx keep fp16 precision where q·scale would be subnormal."""
    d, n, vc = 64, 32, 64
    x, w, shift, _ = operands(d, n, vc, seed=3)
    scales = np.full(n, 2.0**-12), np.full(n, 2.0**-12)
    spec = classifier_backward(d, n, vc)
    got = run(spec, pack(spec, x, w, shift, scales), "ane")
    x, w = (np.asarray(a, np.float16).astype(np.float64) for a in (x, w))
    want = oracle_backward(x, w, shift, *scales)
    for k in ("dw", "dx_t"):
        assert rel_err(got[k], want[k]) < 5e-3, k


def test_layouts_and_flops():
    d, n, vc = 768, 256, 4000
    f = classifier_forward(d, n, vc)
    assert f.input_layout.shape == (1, d, 1, n + vc)
    assert f.input_layout["w_t"].columns == (n, n + vc)
    assert f.output_layout.names == ("m", "s") and f.output_layout.shape == (1, 2, 1, n)
    assert f.flops == 2 * vc * d * n
    b = classifier_backward(d, n, vc)
    assert b.input_layout.shape == (1, d + 3, 1, n + vc)
    rows = [b.input_layout[k].channels for k in ("shift", "scale_w", "scale_x")]
    assert rows == [(d, d + 1), (d + 1, d + 2), (d + 2, d + 3)]
    assert b.output_layout.names == ("dw", "dx_t") and b.output_layout.shape == (1, vc + n, 1, d)
    assert b.flops == 3 * 2 * vc * d * n
    assert classifier_forward(64, 32, 96, valid=50).input_layout.shape == (1, 64, 1, 128)


def test_only_a_partial_chunk_carries_the_mask():
    assert "pad_bias" not in classifier_forward(64, 32, 96).text()
    text = classifier_backward(64, 32, 96, valid=90).text()
    assert "pad_bias" in text
    # a masked logit less any max below 32,000 stays finite in fp16 (MASK_VALUE itself would not)
    assert np.isfinite(np.float16(PAD_LOGIT) - np.float16(32000))
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.float16(MASK_VALUE) - np.float16(32))


@pytest.mark.parametrize(
    "args",
    [(48, 32, 64), (64, 40, 64), (64, 32, 70), (64, 32, 64, 0), (64, 32, 64, 65), (64, 32, MAX_SPATIAL)],
)
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_bad_shapes_are_refused(kernel, args):
    with pytest.raises(ValueError):
        KERNELS[kernel](*args)


def test_default_vocab_chunk():
    # Stories110M, one sequence of 256: the 2 MB logits tile bounds the chunk (4,096), evened out to 8 x 4,000
    assert default_vocab_chunk(768, 256, 32000) == 4000
    assert len(vocab_chunks(32000, 4000)) == 8
    # a small vocabulary: one chunk, rounded up to 64-byte rows
    assert default_vocab_chunk(192, 64, 512) == 512
    assert default_vocab_chunk(64, 32, 300) == 320
    for d, n, v in [(768, 2048, 32000), (1024, 256, 151936), (64, 8192, 1000), (768, 32, 32000)]:
        vc = default_vocab_chunk(d, n, v)
        assert vc % 32 == 0 and n + vc <= MAX_SPATIAL and (vc * n * 2 <= 2 * 2**20 or vc <= MIN_CHUNK)
        assert len(vocab_chunks(v, vc)) == -(-v // vc)
    # many tokens per call: the 2 MB logits bound (512 rows at N = 2048) gives way to MIN_CHUNK rows
    assert default_vocab_chunk(768, 2048, 32000) == 4000
    assert default_vocab_chunk(768, 8192, 32000) == 4000  # 32 MB logits; still under MAX_SPATIAL
    assert default_vocab_chunk(768, 14000, 32000) == 2304  # spatial cap 16,384 - 14,016, evened out
    assert vocab_chunks(300, 128) == [(0, 128), (128, 128), (256, 44)]


@pytest.mark.parametrize("name", ["stories110m", "tiny", "qwen3-0.6b"])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_lint_clean(name, kernel):
    cfg = PRESETS[name]
    n = cfg.seq_len
    vc = default_vocab_chunk(cfg.dim, n, cfg.vocab_size)
    for valid in (None, vc - 7):
        spec = KERNELS[kernel](cfg.dim, n, vc, valid)
        assert [f for f in lint(spec.program, chip="m4") if f.severity != "info"] == []
        assert list(spec.program.functions["main"].inputs) == ["x"]


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_program_text_is_deterministic(kernel):
    assert KERNELS[kernel](64, 32, 96, 90).text() == KERNELS[kernel](64, 32, 96, 90).text()


@pytest.mark.requires_ane
@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("d,n,vc,valid", [(768, 256, 4000, None), (192, 64, 544, 512), (64, 32, 96, 70)])
def test_engine_matches_reference(kernel, d, n, vc, valid):
    """The kernel on the Neural Engine against the reference backend's engine numerics (fp16
    storage, fp32 accumulation, ane-private-api.md §10.4): 2e-2 of the largest entry."""
    import anekit

    rows = vc if valid is None else valid
    x, w, shift, scales = operands(d, n, rows, seed=4)
    spec = KERNELS[kernel](d, n, vc, valid)
    buf = pack(spec, x, w, *((shift, scales) if kernel == "backward" else ()))
    want = run(spec, buf, "ane")
    with anekit.compile(spec.program, backend="ane") as k:
        got = spec.output_layout.unpack(k(x=buf)["out"])
    for name in spec.output_layout.names:
        w64 = np.asarray(want[name], np.float64)
        err = np.abs(np.asarray(got[name], np.float64) - w64).max() / max(np.abs(w64).max(), 1e-3)
        assert err < 2e-2, (name, err)
