"""The reference backend's numerics: "ane" (fp16 storage, fp32 compute) and "exact" (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle_helpers import build, fp16_close, rng, run1, t64

from anekit._coreml import mb, types
from anekit.backends.reference import compile as ref_compile


def _h(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float16)


# -- storage dtypes and rounding -----------------------------------------------------------------


def test_storage_dtypes():
    x = _h([[1.0, 2.0]])
    assert run1(lambda x: mb.add(x=x, y=x), {"x": x}, numerics="ane").dtype == np.float16
    assert run1(lambda x: mb.add(x=x, y=x), {"x": x}, numerics="exact").dtype == np.float64


BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "real_div": torch.div}
UNARY = {
    "exp": torch.exp,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "sqrt": lambda t: torch.sqrt(torch.abs(t)),
    "softmax": lambda t: torch.softmax(t, -1),
    "gelu": F.gelu,
}


@pytest.mark.parametrize("name", sorted(BINARY))
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.sampled_from([1e-3, 1.0, 100.0]))
def test_binary_rounds_once_to_fp16(name, seed, scale):
    r = rng(seed)
    x = _h(r.standard_normal((4, 8)) * scale)
    y = _h(np.abs(r.standard_normal((4, 8))) + 0.5)
    got = run1(lambda x, y: getattr(mb, name)(x=x, y=y), {"x": x, "y": y}, numerics="ane")
    # One fp32 op then one rounding equals the correctly rounded fp16 result: no tolerance.
    fp16_close(got, BINARY[name](t64(x), t64(y)), ulps=0)


@pytest.mark.parametrize("name", sorted(UNARY))
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_unary_within_one_fp16_ulp(name, seed):
    x = _h(rng(seed).standard_normal((4, 16)) * 3)
    if name == "sqrt":
        x = np.abs(x)
    got = run1(lambda x: getattr(mb, name)(x=x), {"x": x}, numerics="ane")
    fp16_close(got, UNARY[name](t64(x)), ulps=1)


def test_layer_norm_in_fp16():
    x = _h(rng(1).standard_normal((2, 64)) * 5 + 3)
    g, b = _h(rng(2).standard_normal(64)), _h(rng(3).standard_normal(64))
    got = run1(
        lambda x: mb.layer_norm(x=x, axes=[-1], gamma=g, beta=b, epsilon=np.float16(1e-3)),
        {"x": x},
        numerics="ane",
    )
    want = F.layer_norm(t64(x), [64], t64(g), t64(b), float(np.float16(1e-3)))
    fp16_close(got, want, ulps=1)


# -- overflow ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn,x,want",
    [
        (lambda x: mb.mul(x=x, y=x), [300.0, -300.0, 255.0], [np.inf, np.inf, 65024.0]),
        (lambda x: mb.add(x=x, y=x), [65504.0, -65504.0, 1.0], [np.inf, -np.inf, 2.0]),
        (lambda x: mb.exp(x=x), [12.0, -20.0, 0.0], [np.inf, 0.0, 1.0]),  # e^-20 flushes below fp16's range
    ],
)
def test_fp16_overflow_is_inf(fn, x, want):
    got = run1(fn, {"x": _h(x)}, numerics="ane")
    np.testing.assert_array_equal(got, _h(want))
    exact = run1(fn, {"x": _h(x)}, numerics="exact")
    assert np.all(np.isfinite(exact))  # float64 keeps what fp16 storage cannot


def test_rounding_happens_after_every_op():
    x = _h([1.0, 2.0])

    def fn(x):
        return mb.sub(x=mb.add(x=x, y=np.float16(1e-4)), y=x)

    np.testing.assert_array_equal(run1(fn, {"x": x}, numerics="ane"), [0.0, 0.0])  # 1 + 1e-4 is 1 in fp16
    np.testing.assert_allclose(run1(fn, {"x": x}, numerics="exact"), float(np.float16(1e-4)), rtol=1e-12)


# -- wide accumulation ---------------------------------------------------------------------------


def _fp16_running_sum(v: np.ndarray) -> float:
    acc = np.float16(0)
    for e in v.astype(np.float16):
        acc = np.float16(acc + e)
    return float(acc)


def test_matmul_accumulates_in_fp32():
    # 3000 ones: an fp16 accumulator stalls at 2048 (2049 is not representable); fp32 reaches 3000,
    # which fp16 holds exactly. Likewise 1 + 1000 * 1e-4: fp16 never leaves 1.0.
    x = _h(np.ones((1, 3000)))
    y = _h(np.ones((3000, 1)))
    assert _fp16_running_sum(x[0] * y[:, 0]) == 2048.0
    np.testing.assert_array_equal(
        run1(lambda x, y: mb.matmul(x=x, y=y), {"x": x, "y": y}, numerics="ane"), [[3000]]
    )
    small = _h(np.r_[1.0, np.full(1000, 1e-4)])[None, :]
    assert _fp16_running_sum(small[0]) == 1.0
    got = run1(lambda x: mb.matmul(x=x, y=_h(np.ones((1001, 1)))), {"x": small}, numerics="ane")
    fp16_close(got, small.astype(np.float64).sum(keepdims=True), ulps=0)


@pytest.mark.parametrize("kernel", [1, 3])
def test_conv_accumulates_in_fp32(kernel):
    cin = 3000 // (kernel * kernel)  # 3000 or 333 * 9 = 2997 products of ones
    x = _h(np.ones((1, cin, 4, 4)))
    w = _h(np.ones((2, cin, kernel, kernel)))
    got = run1(lambda x: mb.conv(x=x, weight=w), {"x": x}, numerics="ane")
    assert np.all(got == cin * kernel * kernel)


# -- the 1x1 conv fast path ----------------------------------------------------------------------


def test_conv_1x1_is_a_single_matmul(monkeypatch):
    x = rng(0).standard_normal((2, 16, 3, 8))  # float64: "exact" numerics take it without a copy
    w = rng(1).standard_normal((4, 16, 1, 1)).astype(np.float32)
    prog = build(lambda x: mb.conv(x=x, weight=w), {"x": (x.shape, types.fp32)})
    kernel = ref_compile(prog, numerics="exact")
    calls = []
    real_matmul = np.matmul

    def spy(a, b, *args, **kw):
        calls.append((a, b))
        return real_matmul(a, b, *args, **kw)

    def forbidden(*args, **kw):
        raise AssertionError("the 1x1 conv path must not use einsum/tensordot/windows")

    monkeypatch.setattr(np, "matmul", spy)
    for name in ("einsum", "tensordot"):
        monkeypatch.setattr(np, name, forbidden)
    monkeypatch.setattr(np.lib.stride_tricks, "sliding_window_view", forbidden)
    out = next(iter(kernel(x=x).values()))
    monkeypatch.undo()
    assert len(calls) == 1
    a, b = calls[0]
    assert a.shape == (4, 16) and b.shape == (2, 16, 24)
    assert np.shares_memory(b, x)  # x reshaped, not copied
    np.testing.assert_allclose(
        out, np.einsum("oc,nchw->nohw", w[:, :, 0, 0].astype(np.float64), x), rtol=1e-12
    )
