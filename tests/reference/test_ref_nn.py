"""nn ops of the reference backend (conv, matmul, linear, softmax, norms, attention) against PyTorch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from oracle_helpers import close, rng, run1, t64

from anekit._coreml import mb
from anekit.backends.reference import NUMERICS, OPS, OpContext

SETTINGS = settings(max_examples=30, deadline=None)
TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _data(shape, seed=0, scale=1.0) -> np.ndarray:
    return (rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _spec_pads(pad_type, pad, in_sizes, kernel, strides, dilations):
    """(before, after) per spatial dim, written from mil-text.md §3.7 for the oracle."""
    out = []
    for i, (n, k, s, d) in enumerate(zip(in_sizes, kernel, strides, dilations)):
        if pad_type == "valid":
            out.append((0, 0))
        elif pad_type == "custom":
            out.append((pad[2 * i], pad[2 * i + 1]))
        else:
            span = (k - 1) * d + 1
            total = max(0, (math.ceil(n / s) - 1) * s + span - n)
            half = total // 2
            out.append((half, total - half) if pad_type == "same" else (total - half, half))
    return out


def _torch_conv(x, w, b, strides, pads, dilations, groups):
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad lists the last dim first
    tx = F.pad(t64(x), flat)
    return TORCH_CONV[x.ndim - 2](tx, t64(w), None if b is None else t64(b), strides, 0, dilations, groups)


# -- conv ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 16, 1, 64), (3, 8, 5, 7), (2, 6, 9)])
@pytest.mark.parametrize("pad_type", ["valid", "same", "custom"])
def test_conv_1x1(shape, bias, pad_type):
    cin = shape[1]
    w = _data((5, cin) + (1,) * (len(shape) - 2), seed=1)
    b = _data((5,), seed=2) if bias else None
    x = _data(shape)
    kw = {"bias": b} if bias else {}
    if pad_type == "custom":
        kw["pad"] = [0] * (2 * (len(shape) - 2))
    got = run1(lambda x: mb.conv(x=x, weight=w, pad_type=pad_type, **kw), {"x": x})
    close(
        got,
        _torch_conv(x, w, b, [1] * (len(shape) - 2), [(0, 0)] * (len(shape) - 2), [1] * (len(shape) - 2), 1),
    )


@st.composite
def conv_cases(draw):
    nsp = draw(st.sampled_from([1, 2, 2, 3]))
    groups = draw(st.sampled_from([1, 2, 3]))
    cin_g = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    cout_g = 1 if depthwise else draw(st.integers(1, 3))
    cin, cout = cin_g * groups, cout_g * groups
    maxk = 3 if nsp == 3 else 4
    kernel = draw(st.lists(st.integers(1, maxk), min_size=nsp, max_size=nsp))
    strides = draw(st.lists(st.integers(1, 3), min_size=nsp, max_size=nsp))
    dilations = draw(st.lists(st.integers(1, 2), min_size=nsp, max_size=nsp))
    sizes = draw(st.lists(st.integers(1, 8 if nsp < 3 else 5), min_size=nsp, max_size=nsp))
    pad_type = draw(st.sampled_from(["valid", "same", "same_lower", "custom"]))
    pad = draw(st.lists(st.integers(0, 2), min_size=2 * nsp, max_size=2 * nsp))
    n = draw(st.integers(1, 2))
    bias = draw(st.booleans())
    return n, cin, cout, sizes, kernel, strides, dilations, groups, pad_type, pad, bias


@SETTINGS
@given(case=conv_cases(), seed=st.integers(0, 999))
def test_conv_general(case, seed):
    n, cin, cout, sizes, kernel, strides, dilations, groups, pad_type, pad, bias = case
    pads = _spec_pads(pad_type, pad, sizes, kernel, strides, dilations)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    assume(all(s + a + b >= k for s, (a, b), k in zip(sizes, pads, span)))  # at least one output
    x = _data((n, cin, *sizes), seed)
    w = _data((cout, cin // groups, *kernel), seed + 1)
    b = _data((cout,), seed + 2) if bias else None
    kw = {"bias": b} if bias else {}
    got = run1(
        lambda x: mb.conv(
            x=x,
            weight=w,
            strides=strides,
            pad_type=pad_type,
            pad=pad,
            dilations=dilations,
            groups=groups,
            **kw,
        ),
        {"x": x},
    )
    close(got, _torch_conv(x, w, b, strides, pads, dilations, groups), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("pad_type,before,after", [("same", 1, 2), ("same_lower", 2, 1)])
def test_conv_same_odd_total_pad(pad_type, before, after):
    # k = 4, stride 1 on 5 -> total pad 3: `same` puts the extra one after, `same_lower` before (§3.7).
    x = _data((1, 1, 5))
    w = _data((1, 1, 4), seed=1)
    got = run1(lambda x: mb.conv(x=x, weight=w, pad_type=pad_type), {"x": x})
    xp = np.concatenate([np.zeros(before), x[0, 0].astype(np.float64), np.zeros(after)])
    want = [sum(w[0, 0, j] * xp[i + j] for j in range(4)) for i in range(5)]
    close(got[0, 0], want, rtol=1e-9)
    x2 = _data((1, 2, 5, 6))
    w2 = _data((3, 2, 4, 2), seed=3)
    got2 = run1(lambda x: mb.conv(x=x, weight=w2, pad_type=pad_type, strides=[1, 2]), {"x": x2})
    pads = [(before, after), (0, 0)]  # width 6, k 2, stride 2 -> total 0
    close(got2, _torch_conv(x2, w2, None, [1, 2], pads, [1, 1], 1), rtol=1e-9)


def test_conv_depthwise_2d():
    x = _data((1, 8, 6, 7))
    w = _data((8, 1, 3, 3), seed=1)
    got = run1(lambda x: mb.conv(x=x, weight=w, groups=8, pad_type="same"), {"x": x})
    close(got, _torch_conv(x, w, None, [1, 1], [(1, 1), (1, 1)], [1, 1], 8), rtol=1e-9)


def test_conv_dynamic_weight():
    x, w = _data((2, 4, 5, 5)), _data((6, 2, 3, 3), seed=1)
    got = run1(lambda x, w: mb.conv(x=x, weight=w, groups=2, strides=[2, 1]), {"x": x, "w": w})
    close(got, _torch_conv(x, w, None, [2, 1], [(0, 0), (0, 0)], [1, 1], 2), rtol=1e-9)


# -- matmul, linear ------------------------------------------------------------------------------


@st.composite
def matmul_cases(draw):
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    batch = draw(st.lists(st.integers(1, 3), max_size=3))
    bx = [draw(st.sampled_from([d, 1])) for d in batch]
    by = [draw(st.sampled_from([d, 1])) for d in batch]
    bx = bx[draw(st.integers(0, len(bx))) :]  # fewer leading dims broadcast too
    by = by[draw(st.integers(0, len(by))) :]
    tx, ty = draw(st.booleans()), draw(st.booleans())
    sx = bx + ([k, m] if tx else [m, k])
    sy = by + ([n, k] if ty else [k, n])
    return sx, sy, tx, ty


@SETTINGS
@given(case=matmul_cases(), seed=st.integers(0, 999))
def test_matmul(case, seed):
    sx, sy, tx, ty = case
    x, y = _data(sx, seed), _data(sy, seed + 1)
    got = run1(lambda x, y: mb.matmul(x=x, y=y, transpose_x=tx, transpose_y=ty), {"x": x, "y": y})
    a, b = t64(x), t64(y)
    if tx:
        a = a.transpose(-1, -2)
    if ty:
        b = b.transpose(-1, -2)
    close(got, torch.matmul(a, b), rtol=1e-9, atol=1e-12)


def test_matmul_rank1_x_and_const_y():
    x = _data((4,))
    y = _data((4, 3), seed=1)
    close(run1(lambda x: mb.matmul(x=x, y=y), {"x": x}), torch.matmul(t64(x), t64(y)))
    close(
        run1(lambda x: mb.matmul(x=x, y=y), {"x": _data((2, 5, 4))}),
        torch.matmul(t64(_data((2, 5, 4))), t64(y)),
    )


def test_matmul_rank1_y_direct():
    # coremltools' matmul type inference fails on a rank-1 y (IndexError), so check the op itself.
    ctx = OpContext(NUMERICS["exact"], op=None)
    x, y = _data((2, 3, 4)).astype(np.float64), _data((4,), seed=1).astype(np.float64)
    close(OPS["matmul"](ctx, x=x, y=y), torch.matmul(t64(x), t64(y)))
    close(OPS["matmul"](ctx, x=y, y=y), torch.matmul(t64(y), t64(y)))  # rank 1 @ rank 1: a scalar
    with pytest.raises(ValueError, match="rank-1"):
        OPS["matmul"](ctx, x=x, y=y, transpose_y=np.bool_(True))


def test_matmul_int32_exact():
    x = np.array([[2**20 + 1, 3], [-7, 2**21]], np.int32)
    y = np.array([[5, -1], [2, 9]], np.int32)
    got = run1(lambda x, y: mb.matmul(x=x, y=y), {"x": x, "y": y}, numerics="ane")
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, x.astype(np.int64) @ y.astype(np.int64))


@pytest.mark.parametrize("shape", [(6,), (3, 6), (2, 3, 6), (1, 2, 3, 6)])
@pytest.mark.parametrize("bias", [False, True])
def test_linear(shape, bias):
    x, w = _data(shape), _data((4, 6), seed=1)
    b = _data((4,), seed=2) if bias else None
    kw = {"bias": b} if bias else {}
    got = run1(lambda x: mb.linear(x=x, weight=w, **kw), {"x": x})
    close(got, F.linear(t64(x), t64(w), None if b is None else t64(b)), rtol=1e-9, atol=1e-12)


# -- softmax -------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [None, 0, 1, -1, -2])
def test_softmax(axis):
    x = _data((3, 4, 5), scale=4.0)
    x[0, 0, 0] = 1000.0  # stable: no overflow
    x[1, 1, :] = -1000.0
    kw = {} if axis is None else {"axis": axis}
    got = run1(lambda x: mb.softmax(x=x, **kw), {"x": x})
    close(got, torch.softmax(t64(x), dim=-1 if axis is None else axis), rtol=1e-9, atol=1e-300)


def test_softmax_rows_with_nan_and_inf():
    """Rows holding a NaN or all -inf come out NaN, as PyTorch's; rows with -inf entries (masks)
    or +-0 take the fast row maximum and still match PyTorch."""
    x = _data((6, 16), scale=4.0)
    x[0, 3] = np.nan
    x[1, :] = -np.inf
    x[2, 5:] = -np.inf
    x[3, :] = 0.0
    x[3, ::2] = -0.0
    x[4, 7] = np.inf
    got = run1(lambda x: mb.softmax(x=x, axis=-1), {"x": x})
    want = torch.softmax(t64(x), dim=-1).numpy()
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-9, atol=1e-300)


# -- normalization -------------------------------------------------------------------------------


@pytest.mark.parametrize("axes", [[-1], [1], [1, 2], [0, 2], [-3, -1], [0, 1, 2]])
@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm(axes, affine):
    x = _data((2, 3, 4), scale=3.0) + 1.5
    ax = sorted(a % 3 for a in axes)
    norm_shape = [x.shape[a] for a in ax]
    gamma, beta = _data(norm_shape, seed=1), _data(norm_shape, seed=2)
    kw = {"gamma": gamma, "beta": beta} if affine else {}
    got = run1(lambda x: mb.layer_norm(x=x, axes=axes, epsilon=np.float32(1e-3), **kw), {"x": x})
    # Oracle: move the normalized axes last, F.layer_norm over them, move back.
    rest = [a for a in range(3) if a not in ax]
    t = t64(x).permute(*rest, *ax)
    y = F.layer_norm(
        t, norm_shape, t64(gamma) if affine else None, t64(beta) if affine else None, float(np.float32(1e-3))
    )
    close(got, y.permute(*np.argsort(rest + ax).tolist()), rtol=1e-9, atol=1e-12)


def test_layer_norm_default_epsilon():
    x = _data((2, 8))
    got = run1(lambda x: mb.layer_norm(x=x, axes=[1]), {"x": x})
    close(got, F.layer_norm(t64(x), [8], eps=float(np.float32(1e-5))), rtol=1e-9)


def test_layer_norm_default_axes_direct():
    # coremltools cannot build layer_norm without axes (its default range() is not a const), so the
    # default (all axes, as a parsed MIL text may leave it) is checked on the op itself.
    x = _data((2, 3, 4)).astype(np.float64)
    got = OPS["layer_norm"](OpContext(NUMERICS["exact"], op=None), x=x)
    close(got, F.layer_norm(t64(x), [2, 3, 4], eps=1e-5), rtol=1e-9)


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (1, 3, 2, 2, 2)])
@pytest.mark.parametrize("affine", [False, True])
def test_batch_norm(shape, affine):
    x = _data(shape)
    mean, var = _data((3,), 1), np.abs(_data((3,), 2)) + 0.5
    gamma, beta = _data((3,), 3), _data((3,), 4)
    kw = {"gamma": gamma, "beta": beta} if affine else {}
    got = run1(
        lambda x: mb.batch_norm(x=x, mean=mean, variance=var, epsilon=np.float32(1e-3), **kw), {"x": x}
    )
    want = F.batch_norm(
        t64(x),
        t64(mean),
        t64(var),
        t64(gamma) if affine else None,
        t64(beta) if affine else None,
        False,
        0.0,
        float(np.float32(1e-3)),
    )
    close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 4, 5)])
def test_instance_norm(shape):
    x = _data(shape, scale=2.0) + 0.7
    gamma, beta = _data((3,), 3), _data((3,), 4)
    got = run1(lambda x: mb.instance_norm(x=x, gamma=gamma, beta=beta), {"x": x})
    want = F.instance_norm(t64(x), weight=t64(gamma), bias=t64(beta), eps=float(np.float32(1e-5)))
    close(got, want, rtol=1e-9, atol=1e-12)


def test_l2_norm():
    x = _data((2, 3, 4, 5))
    got = run1(lambda x: mb.l2_norm(x=x, epsilon=np.float32(1e-6)), {"x": x})
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64**2).sum(axis=(1, 2, 3), keepdims=True) + float(np.float32(1e-6)))
    close(got, want, rtol=1e-9)


# -- scaled_dot_product_attention ----------------------------------------------------------------


def _qkv(b=(2, 3), L=4, S=5, E=8, EV=6):
    return _data((*b, L, E), 1), _data((*b, S, E), 2), _data((*b, S, EV), 3)


def _sdpa_inputs(q, k, v):
    return {"q": q, "k": k, "v": v}


def test_sdpa_no_mask():
    q, k, v = _qkv()
    got = run1(
        lambda q, k, v: mb.scaled_dot_product_attention(query=q, key=k, value=v), _sdpa_inputs(q, k, v)
    )
    close(got, F.scaled_dot_product_attention(t64(q), t64(k), t64(v)), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mask_shape", [(4, 5), (3, 4, 5), (2, 1, 4, 5)])
def test_sdpa_float_mask(mask_shape):
    q, k, v = _qkv()
    mask = _data(mask_shape, 9, scale=2.0)
    mask[..., 0, 1] = -1e4

    def fn(q, k, v, m):
        return mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=m)

    got = run1(fn, {**_sdpa_inputs(q, k, v), "m": mask})
    close(
        got,
        F.scaled_dot_product_attention(t64(q), t64(k), t64(v), attn_mask=t64(mask)),
        rtol=1e-9,
        atol=1e-12,
    )


def test_sdpa_bool_causal_mask_and_ignore_flag():
    q, k, v = _qkv(S=4)
    causal = np.tril(np.ones((4, 4), bool))  # True = attend

    def fn(q, k, v):
        return mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=causal)

    got = run1(fn, _sdpa_inputs(q, k, v))
    want = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), attn_mask=torch.from_numpy(causal))
    close(got, want, rtol=1e-9, atol=1e-12)
    close(got, F.scaled_dot_product_attention(t64(q), t64(k), t64(v), is_causal=True), rtol=1e-9, atol=1e-12)
    # mil-text.md §3.11: the engine ignores the mask; the flag emulates it.
    ignored = run1(fn, _sdpa_inputs(q, k, v), ignore_sdpa_mask=True)
    close(ignored, F.scaled_dot_product_attention(t64(q), t64(k), t64(v)), rtol=1e-9, atol=1e-12)
