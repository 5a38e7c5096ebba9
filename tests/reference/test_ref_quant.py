"""Quantization ops and compressed constants of the reference backend (mil-text.md §3.12)."""

from __future__ import annotations

import numpy as np
import pytest
from oracle_helpers import build, close, rng, run1

from anekit._coreml import mb, types
from anekit.backends.reference import compile as ref_compile


def _round_half_even(q: np.ndarray) -> np.ndarray:
    r = np.floor(q)
    return r + ((q - r > 0.5) | ((q - r == 0.5) & (r % 2 == 1)))


def test_quantize_rounds_half_to_even():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.49, -3.51], np.float32)
    got = run1(lambda x: mb.quantize(input=x, scale=np.float32(1.0), output_dtype="int8"), {"x": x})
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, [0, 2, 2, 0, -2, -2, 3, -4])


@pytest.mark.parametrize("numerics", ["exact", "ane"])
@pytest.mark.parametrize("dtype,lo,hi,zp", [("int8", -128, 127, -3), ("uint8", 0, 255, 128)])
def test_quantize_per_tensor_clips(numerics, dtype, lo, hi, zp):
    scale = 0.0625  # a power of two: x / scale is exact in fp32 too, so ties are real ties
    x = (rng(0).standard_normal((3, 40)) * 4).astype(np.float32)
    x[0, :6] = [1e3, -1e3, scale * 2.5, scale * 3.5, -scale * 0.5, scale * 126.5]  # clipped; ties
    zp_arr = np.array(zp, dtype=dtype)

    sdt = np.float16 if numerics == "ane" else np.float32  # scale shares input's dtype

    def fn(x):
        return mb.quantize(input=x, scale=sdt(scale), zero_point=zp_arr, output_dtype=dtype)

    inputs = {"x": x.astype(np.float16) if numerics == "ane" else x}
    got = run1(fn, inputs, numerics=numerics)
    r = _round_half_even(inputs["x"].astype(np.float64) / scale)
    np.testing.assert_array_equal(got, np.clip(r + zp, lo, hi))


def test_quantize_per_axis():
    x = (rng(1).standard_normal((2, 3, 4)) * 3).astype(np.float32)
    scale = np.array([0.1, 0.02, 0.5], np.float32)
    zp = np.array([0, 10, -5], np.int8)
    got = run1(
        lambda x: mb.quantize(input=x, scale=scale, zero_point=zp, axis=1, output_dtype="int8"), {"x": x}
    )
    q = x.astype(np.float64) / scale.astype(np.float64)[:, None]
    want = np.clip(_round_half_even(q) + zp.astype(np.float64)[:, None], -128, 127)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("axis", [None, 0, -1])
def test_dequantize(axis):
    q = rng(2).integers(-128, 128, (3, 4)).astype(np.int8)
    if axis is None:
        scale, zp = np.float32(0.25), np.int8(3)
        s, z = np.float64(scale), np.int64(zp)
    else:
        n = q.shape[axis]
        scale = np.linspace(0.1, 0.5, n).astype(np.float32)
        zp = np.arange(n, dtype=np.int8) - 1
        shape = [1, 1]
        shape[axis] = n
        s, z = scale.astype(np.float64).reshape(shape), zp.astype(np.int64).reshape(shape)
    kw = {} if axis is None else {"axis": axis}

    def fn(q):
        return mb.dequantize(input=q, scale=scale, zero_point=zp, **kw)

    prog = build(fn, {"q": (q.shape, types.int8)})
    out = ref_compile(prog, numerics="exact")(q=q)
    close(next(iter(out.values())), (q.astype(np.int64) - z) * s, rtol=1e-12)


def test_constexpr_affine_dequantize_feeds_an_op_and_an_output():
    qdata = rng(3).integers(0, 256, (4, 3)).astype(np.uint8)
    zp = np.array([128, 100, 0, 255], np.uint8)
    scale = np.array([0.5, 0.25, 0.125, 2.0], np.float32)

    def fn(x):
        w = mb.constexpr_affine_dequantize(quantized_data=qdata, zero_point=zp, scale=scale, axis=0)
        return mb.matmul(x=x, y=w, transpose_y=True), w

    x = rng(4).standard_normal((2, 3)).astype(np.float32)
    y, w = run1_all(fn, x)
    want_w = (qdata.astype(np.float64) - zp.astype(np.float64)[:, None]) * scale.astype(np.float64)[:, None]
    close(w, want_w, rtol=1e-12)
    close(y, x.astype(np.float64) @ want_w.T, rtol=1e-9)


def run1_all(fn, x):
    prog = build(fn, {"x": (x.shape, types.fp32)})
    out = ref_compile(prog, numerics="exact")(x=x)
    return [out[v.name] for v in prog.functions["main"].outputs]


def test_constexpr_affine_dequantize_scalar_params_fp16():
    qdata = np.array([[-128, -1, 0, 127]], np.int8)
    w = np.float16(0.1)

    def fn(x):
        c = mb.constexpr_affine_dequantize(quantized_data=qdata, zero_point=np.int8(-1), scale=w, axis=0)
        return mb.add(x=x, y=c)

    x = np.zeros((1, 4), np.float16)
    got = run1(fn, {"x": x}, numerics="ane")
    want = (qdata.astype(np.float64) + 1) * float(w)
    np.testing.assert_array_equal(got, want.astype(np.float16))


@pytest.mark.parametrize("with_offset", [False, True])
def test_constexpr_blockwise_shift_scale(with_offset):
    data = rng(5).integers(-128, 128, (4, 6)).astype(np.int8)
    scale = rng(6).uniform(0.1, 1.0, (2, 3)).astype(np.float32)  # blocks of 2 x 2
    offset = rng(7).integers(-5, 5, (2, 3)).astype(np.int8)
    kw = {"offset": offset} if with_offset else {}

    def fn(x):
        return mb.add(x=x, y=mb.constexpr_blockwise_shift_scale(data=data, scale=scale, **kw))

    got = run1(fn, {"x": np.zeros((4, 6), np.float32)})
    want = np.empty((4, 6))
    for i in range(4):
        for j in range(6):
            off = offset[i // 2, j // 2] if with_offset else 0
            want[i, j] = float(scale[i // 2, j // 2]) * (int(data[i, j]) - int(off))
    close(got, want, rtol=1e-12)


def test_constexpr_blockwise_per_row_fp16_scale():
    data = rng(8).integers(0, 16, (3, 8)).astype(np.uint8)
    scale = np.array([[0.5], [0.25], [2.0]], np.float16)  # one block per row

    def fn(x):
        return mb.mul(x=x, y=mb.constexpr_blockwise_shift_scale(data=data, scale=scale))

    got = run1(fn, {"x": np.ones((3, 8), np.float16)}, numerics="ane")
    np.testing.assert_array_equal(got, (data * scale.astype(np.float64)).astype(np.float16))


def test_constexpr_blockwise_int4_data():
    data = np.array([[-8, 7, 1, -1], [3, -3, 0, 5]], dtype=types.np_int4_dtype)
    scale = np.array([[0.5, 2.0], [0.25, 1.0]], np.float32)
    offset = np.array([[1, -2], [0, 3]], dtype=types.np_int4_dtype)

    def fn(x):
        return mb.add(x=x, y=mb.constexpr_blockwise_shift_scale(data=data, scale=scale, offset=offset))

    got = run1(fn, {"x": np.zeros((2, 4), np.float32)})
    want = [[0.5 * -9, 0.5 * 6, 2.0 * 3, 2.0 * 1], [0.25 * 3, 0.25 * -3, 1.0 * -3, 1.0 * 2]]
    close(got, want, rtol=1e-12)


def test_constexpr_cast():
    src = np.array([1.5, -2.25, 65504.0], np.float16)

    def fn(x):
        return mb.add(x=x, y=mb.constexpr_cast(source_val=src, output_dtype="fp32"))

    got = run1(fn, {"x": np.zeros(3, np.float32)}, numerics="ane")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, src.astype(np.float32))
