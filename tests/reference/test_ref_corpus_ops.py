"""Reference ops the real MIL corpus needs (lstm, palettized and sparse constants, range_1d), each
against an independent oracle: PyTorch for lstm, float64 decoders written here from coremltools'
op definitions (iOS16/constexpr_ops.py, iOS18/compression.py) for the constants, numpy.arange."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from coremltools.converters.mil.mil import get_new_symbol
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle_helpers import build, close, fp16_close, rng, run

from anekit._coreml import ct, mb, types
from anekit.backends.base import KernelInputError
from anekit.backends.reference import NUMERICS, OPS, OpContext, ProgramError, UnsupportedOp
from anekit.backends.reference import compile as ref_compile
from anekit.backends.reference.registry import VALUE_PRESERVING

SETTINGS = settings(max_examples=25, deadline=None)
EXACT = OpContext(NUMERICS["exact"], op=None)


# -- lstm ---------------------------------------------------------------------------------------


def _ifoz_to_torch(w: np.ndarray) -> np.ndarray:
    """coremltools lays gates out [input, forget, output, cell]; PyTorch [input, forget, cell, output]."""
    i, f, o, z = np.split(w, 4)
    return np.concatenate([i, f, z, o])


def _torch_lstm(x, h0, c0, w_ih, w_hh, b, direction, output_sequence, back=None):
    """The op's three outputs computed by torch.nn.LSTM in float64."""
    n_hidden = w_hh.shape[1]
    bidir = direction == "bidirectional"
    net = torch.nn.LSTM(x.shape[2], n_hidden, bias=True, bidirectional=bidir, dtype=torch.float64)
    params = {"": (w_ih, w_hh, b)}
    if bidir:
        params["_reverse"] = back
    with torch.no_grad():
        for suffix, (wi, wh, bb) in params.items():
            getattr(net, f"weight_ih_l0{suffix}").copy_(torch.from_numpy(_ifoz_to_torch(wi)))
            getattr(net, f"weight_hh_l0{suffix}").copy_(torch.from_numpy(_ifoz_to_torch(wh)))
            getattr(net, f"bias_ih_l0{suffix}").copy_(torch.from_numpy(_ifoz_to_torch(bb)))
            getattr(net, f"bias_hh_l0{suffix}").zero_()
    xt = torch.from_numpy(x)
    if direction == "reverse":  # processed from the end, emitted in processing order
        xt = torch.flip(xt, [0])
    dirs = 2 if bidir else 1
    h0t = torch.from_numpy(h0).reshape(x.shape[1], dirs, n_hidden).transpose(0, 1).contiguous()
    c0t = torch.from_numpy(c0).reshape(x.shape[1], dirs, n_hidden).transpose(0, 1).contiguous()
    with torch.no_grad():
        seq, (hn, cn) = net(xt, (h0t, c0t))
    if not output_sequence:
        seq = seq[-1:] if not bidir else torch.cat([seq[-1:, :, :n_hidden], seq[:1, :, n_hidden:]], -1)
    hn = hn.transpose(0, 1).reshape(x.shape[1], dirs * n_hidden)
    cn = cn.transpose(0, 1).reshape(x.shape[1], dirs * n_hidden)
    return seq.numpy(), hn.numpy(), cn.numpy()


def _lstm_case(seed, n_seq, batch, n_in, n_hidden, dirs):
    g = rng(seed)
    x = g.standard_normal((n_seq, batch, n_in))
    h0 = g.standard_normal((batch, dirs * n_hidden)) * 0.5
    c0 = g.standard_normal((batch, dirs * n_hidden)) * 0.5
    # weights are program constants, typed fp32: the oracle gets the same fp32-representable values
    weights = [
        tuple(
            (g.standard_normal(shape) * 0.5).astype(np.float32).astype(np.float64)
            for shape in ((4 * n_hidden, n_in), (4 * n_hidden, n_hidden), (4 * n_hidden,))
        )
        for _ in range(dirs)
    ]
    return x, h0, c0, weights


@SETTINGS
@given(
    n_seq=st.integers(1, 5),
    batch=st.integers(1, 3),
    n_in=st.integers(1, 5),
    n_hidden=st.integers(1, 5),
    direction=st.sampled_from(["forward", "reverse", "bidirectional"]),
    output_sequence=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_lstm_matches_torch(n_seq, batch, n_in, n_hidden, direction, output_sequence, seed):
    dirs = 2 if direction == "bidirectional" else 1
    x, h0, c0, weights = _lstm_case(seed, n_seq, batch, n_in, n_hidden, dirs)
    (w_ih, w_hh, b), back = weights[0], weights[-1]
    extra = {}
    if dirs == 2:
        extra = dict(weight_ih_back=back[0], weight_hh_back=back[1], bias_back=back[2])

    def fn(x, h, c):
        return mb.lstm(
            x=x, initial_h=h, initial_c=c, weight_ih=w_ih, weight_hh=w_hh, bias=b,
            direction=direction, output_sequence=output_sequence, **extra,
        )  # fmt: skip

    got = run(fn, {"x": x, "h": h0, "c": c0})
    want = _torch_lstm(x, h0, c0, w_ih, w_hh, b, direction, output_sequence, back)
    for g_, w_ in zip(got, want):
        close(g_, w_, rtol=1e-9, atol=1e-9)


def test_lstm_fp16_under_ane_numerics_rounds_its_outputs_once():
    """iOS17 allows fp16 lstm; the state is carried in fp32, each output rounded to fp16 once."""
    x, h0, c0, ((w_ih, w_hh, b),) = _lstm_case(7, 4, 2, 3, 6, 1)
    x16, h16, c16 = (a.astype(np.float16) for a in (x, h0, c0))
    w16 = [w.astype(np.float16) for w in (w_ih, w_hh, b)]

    def fn(x, h, c):
        return mb.lstm(
            x=x,
            initial_h=h,
            initial_c=c,
            weight_ih=w16[0],
            weight_hh=w16[1],
            bias=w16[2],
            output_sequence=True,
        )

    prog = build(fn, {k: (v.shape, types.fp16) for k, v in {"x": x16, "h": h16, "c": c16}.items()})
    out = ref_compile(prog, numerics="ane")(x=x16, h=h16, c=c16)
    want = _torch_lstm(*(a.astype(np.float64) for a in (x16, h16, c16, *w16)), "forward", True)
    for got, w_ in zip((out[v.name] for v in prog.functions["main"].outputs), want):
        fp16_close(got, w_, ulps=1)


def _manual_lstm(x, h, c, w_ih, w_hh, b, peep, clip, rec, cell, act):
    """The op's docstring equations, step by step, in float64 torch: the oracle for what
    torch.nn.LSTM cannot do (other activations, peepholes, a clipped cell state)."""
    fns = {
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "scaled_tanh": torch.tanh,  # alpha = beta = 1, coremltools' test_recurrent.py
        "relu": torch.relu,
        "linear": lambda v: v,
        "hard_sigmoid": lambda v: torch.clamp(0.2 * v + 0.5, 0.0, 1.0),
    }
    rec, cell, act = fns[rec], fns[cell], fns[act]
    t = {k: torch.from_numpy(v) for k, v in dict(w_ih=w_ih, w_hh=w_hh, b=b, p=peep, h=h, c=c).items()}
    wi, wf, wo, wz = torch.chunk(t["w_ih"], 4)
    ri, rf, ro, rz = torch.chunk(t["w_hh"], 4)
    bi, bf, bo, bz = torch.chunk(t["b"], 4)
    pi, pf, po = torch.chunk(t["p"], 3)
    h, c = t["h"], t["c"]
    outs = []
    for xt in torch.from_numpy(x):
        i = rec(xt @ wi.T + h @ ri.T + bi + pi * c)
        f = rec(xt @ wf.T + h @ rf.T + bf + pf * c)
        z = cell(xt @ wz.T + h @ rz.T + bz)
        c = f * c + i * z
        if clip is not None:
            c = torch.clamp(c, -clip, clip)
        o = rec(xt @ wo.T + h @ ro.T + bo + po * c)
        h = o * act(c)
        outs.append(h)
    return torch.stack(outs).numpy(), h.numpy(), c.numpy()


ACTS = ["sigmoid", "tanh", "scaled_tanh", "hard_sigmoid", "relu", "linear"]


@SETTINGS
@given(
    rec=st.sampled_from(ACTS),
    cell=st.sampled_from(ACTS),
    act=st.sampled_from(ACTS),
    clip=st.sampled_from([None, 0.3, 2.0]),
    peephole=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_lstm_activations_peepholes_and_clip(rec, cell, act, clip, peephole, seed):
    x, h0, c0, ((w_ih, w_hh, b),) = _lstm_case(seed, 4, 2, 3, 4, 1)
    peep = (
        rng(seed + 1).standard_normal(12).astype(np.float32).astype(np.float64) if peephole else np.zeros(12)
    )
    kw = {} if clip is None else {"clip": np.float32(clip)}

    def fn(x, h, c):
        return mb.lstm(
            x=x, initial_h=h, initial_c=c, weight_ih=w_ih, weight_hh=w_hh, bias=b, peephole=peep,
            output_sequence=True, recurrent_activation=rec, cell_activation=cell, activation=act, **kw,
        )  # fmt: skip

    got = run(fn, {"x": x, "h": h0, "c": c0})
    clip_at = None if clip is None else float(np.float32(clip))
    want = _manual_lstm(x, h0, c0, w_ih, w_hh, b, peep, clip_at, rec, cell, act)
    for g_, w_ in zip(got, want):
        close(g_, w_, rtol=1e-9, atol=1e-9)


def _lstm_args(**over):
    args = dict(
        x=np.zeros((2, 1, 3)),
        initial_h=np.zeros((1, 2)),
        initial_c=np.zeros((1, 2)),
        weight_ih=np.zeros((8, 3)),
        weight_hh=np.zeros((8, 2)),
    )
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over,error,match",
    [
        (dict(activation="gelu"), UnsupportedOp, "activation 'gelu'"),
        (dict(recurrent_activation="softplus"), UnsupportedOp, "recurrent_activation"),
        (dict(direction="sideways"), UnsupportedOp, "direction 'sideways'"),
        (dict(direction="bidirectional", initial_h=np.zeros((1, 4)), initial_c=np.zeros((1, 4))), ValueError,
         "weight_ih_back"),
        (dict(weight_hh=np.zeros((7, 2))), ValueError, r"weight_hh must be \[4\*H, H\]"),
        (dict(weight_ih=np.zeros((8, 4))), ValueError, r"weight_ih must be \[4\*H, I\]"),
        (dict(initial_h=np.zeros((2, 2))), ValueError, "initial_h must be"),
        (dict(x=np.zeros((2, 3))), ValueError, r"\[seq, batch, input\]"),
    ],
)  # fmt: skip
def test_lstm_refuses_what_the_definition_does_not_allow(over, error, match):
    with pytest.raises(error, match=match):
        OPS["lstm"](EXACT, **_lstm_args(**over))


def test_lstm_with_a_flexible_sequence_length():
    x, h0, c0, ((w_ih, w_hh, b),) = _lstm_case(3, 6, 1, 2, 3, 1)
    seq = get_new_symbol()

    def fn(x, h, c):
        return mb.lstm(
            x=x, initial_h=h, initial_c=c, weight_ih=w_ih, weight_hh=w_hh, bias=b, output_sequence=True
        )

    prog = build(fn, {"x": ((seq, 1, 2), types.fp32), "h": ((1, 3), types.fp32), "c": ((1, 3), types.fp32)})
    kernel = ref_compile(prog, numerics="exact")
    for n in (1, 6):
        out = kernel(x=x[:n], h=h0, c=c0)
        want = _torch_lstm(x[:n], h0, c0, w_ih, w_hh, b, "forward", True)
        close(out[prog.functions["main"].outputs[0].name], want[0], rtol=1e-9, atol=1e-9)


# -- palettized constants: constexpr_lut_to_dense ---------------------------------------------------


def _read_fields(packed: np.ndarray, bits: int, count: int) -> list[int]:
    """Field i = bits [i*bits, (i+1)*bits) of the byte string, least significant bit first: the
    packing the iOS16 docstring draws (its n_bits = 2, shape (5,) example is checked below)."""
    out = []
    for i in range(count):
        v = 0
        for k in range(bits):
            pos = i * bits + k
            v |= ((int(packed[pos // 8]) >> (pos % 8)) & 1) << k
        out.append(v)
    return out


def test_field_reader_matches_the_docstring_example():
    # | 01 10 11 00 | xx xx xx 11 |: i0 = 00, i1 = 11, i2 = 10, i3 = 01, i4 = 11
    assert _read_fields(np.array([0b01101100, 0b00000011], np.uint8), 2, 5) == [0, 3, 2, 1, 3]


@SETTINGS
@given(
    bits=st.sampled_from([1, 2, 4, 6, 8]),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    lut_dtype=st.sampled_from([np.float16, np.float32, np.int8, np.uint8]),
    seed=st.integers(0, 2**16),
)
def test_lut_to_dense_ios16(bits, shape, lut_dtype, seed):
    g = rng(seed)
    n = math.prod(shape)
    packed = g.integers(0, 256, -(-n * bits // 8)).astype(np.uint8)
    if np.dtype(lut_dtype).kind == "f":
        lut = g.standard_normal(1 << bits).astype(lut_dtype)
    else:
        lut = g.integers(-100, 100, 1 << bits).astype(np.int16).astype(lut_dtype)

    def fn():
        return mb.constexpr_lut_to_dense(indices=packed, lut=lut, shape=np.array(shape, np.uint32))

    prog = build(lambda: mb.identity(x=fn()), {}, opset=ct.target.iOS16)
    got = next(iter(ref_compile(prog, numerics="exact")().values()))
    want = np.array([lut[i] for i in _read_fields(packed, bits, n)], np.float64).reshape(shape)
    np.testing.assert_array_equal(got.astype(np.float64), want)


def _lut_oracle(idx: np.ndarray, lut: np.ndarray, vector_axis: int | None) -> np.ndarray:
    """iOS18: position p uses lut group p[d] // (S[d] / G[d]) per dim; a vector of V entries fills
    V consecutive positions along vector_axis (the docstring's cases 1 and 2)."""
    rank = idx.ndim
    groups, vsize = lut.shape[:rank], lut.shape[-1]
    shape = list(idx.shape)
    if vsize > 1:
        shape[vector_axis] *= vsize
    out = np.zeros(shape, np.float64)
    for p in np.ndindex(*idx.shape):
        g = tuple(p[d] // (idx.shape[d] // groups[d]) for d in range(rank))
        vec = lut[g + (int(idx[p]),)]
        for v in range(vsize):
            q = list(p)
            if vsize > 1:
                q[vector_axis] = p[vector_axis] * vsize + v
            out[tuple(q)] = vec[v]
    return out


NP_SUB = {1: types.np_uint1_dtype, 2: types.np_uint2_dtype, 3: types.np_uint3_dtype, 4: types.np_uint4_dtype,
          6: types.np_uint6_dtype, 8: np.uint8}  # fmt: skip


@SETTINGS
@given(
    bits=st.sampled_from([1, 2, 3, 4, 6, 8]),
    layout=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3)), min_size=1, max_size=3),
    vsize=st.integers(1, 3),
    data=st.data(),
)
def test_lut_to_dense_ios18_grouped_and_vector(bits, layout, vsize, data):
    """indices [G0*B0, G1*B1, ...] with a lut of G groups per dim, scalar or vector entries."""
    groups = [g for g, _ in layout]
    shape = [g * b for g, b in layout]
    seed = data.draw(st.integers(0, 2**16))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1)) if vsize > 1 else None
    g = rng(seed)
    idx = g.integers(0, 1 << bits, shape).astype(NP_SUB[bits])
    lut = g.standard_normal((*groups, 1 << bits, vsize)).astype(np.float32)
    kw = {} if axis is None else {"vector_axis": np.int32(axis)}
    prog = build(lambda: mb.identity(x=mb.constexpr_lut_to_dense(indices=idx, lut=lut, **kw)), {})
    got = next(iter(ref_compile(prog, numerics="exact")().values()))
    want = _lut_oracle(
        idx.astype(np.int64), lut.astype(np.float64), None if axis is None else axis % len(shape)
    )
    np.testing.assert_array_equal(got, want)


def test_lut_to_dense_docstring_case_2():
    """The iOS18 docstring's 1-bit vector example, vector_axis 1 and 2, written out by hand."""
    idx = np.array([[[0, 0], [1, 0]], [[1, 1], [0, 0]]]).astype(types.np_uint1_dtype)
    a, b = [1.0, 2.0, 3.0], [10.0, 20.0, 30.0]
    lut = np.array([a, b], np.float32).reshape(1, 1, 1, 2, 3)
    want = {
        1: [[[a[0], a[0]], [a[1], a[1]], [a[2], a[2]], [b[0], a[0]], [b[1], a[1]], [b[2], a[2]]],
            [[b[0], b[0]], [b[1], b[1]], [b[2], b[2]], [a[0], a[0]], [a[1], a[1]], [a[2], a[2]]]],
        2: [[a + a, b + a], [b + b, a + a]],
    }  # fmt: skip
    for axis, expected in want.items():

        def fn(axis=axis):
            return mb.identity(x=mb.constexpr_lut_to_dense(indices=idx, lut=lut, vector_axis=np.int32(axis)))

        got = next(iter(ref_compile(build(fn, {}), numerics="exact")().values()))
        np.testing.assert_array_equal(got, np.array(expected))


# -- sparse constants ---------------------------------------------------------------------------


@SETTINGS
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_sparse_to_dense_ios16(shape, seed):
    g = rng(seed)
    n = math.prod(shape)
    dense_mask = g.random(n) < 0.4
    packed = np.zeros(-(-n // 8), np.uint8)
    for i in np.flatnonzero(dense_mask):  # bit i of the output is bit i % 8 of byte i // 8
        packed[i // 8] |= 1 << (i % 8)
    nz = g.standard_normal(int(dense_mask.sum())).astype(np.float16)

    def fn():
        return mb.constexpr_sparse_to_dense(nonzero_data=nz, mask=packed, shape=np.array(shape, np.uint32))

    prog = build(lambda x: mb.add(x=x, y=fn()), {"x": (tuple(shape), types.fp16)}, opset=ct.target.iOS16)
    got = next(iter(ref_compile(prog, numerics="exact")(x=np.zeros(shape, np.float16)).values()))
    want = np.zeros(n)
    for k, i in enumerate(i for i in range(n) if (packed[i // 8] >> (i % 8)) & 1):
        want[i] = float(nz[k])
    np.testing.assert_array_equal(got, want.reshape(shape))


def _sparse_oracle(nz: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros(mask.shape)
    k = 0
    for p in np.ndindex(*mask.shape):  # row-major order, as "any data is packed and read"
        if mask[p]:
            out[p] = float(nz[k])
            k += 1
    return out


@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_sparse_to_dense_ios18(shape, seed):
    g = rng(seed)
    mask = g.random(shape) < 0.5
    mask.flat[0] = True  # at least one element
    nz = g.standard_normal(int(mask.sum())).astype(np.float32)
    m1 = mask.astype(types.np_uint1_dtype)
    prog = build(lambda: mb.identity(x=mb.constexpr_sparse_to_dense(nonzero_data=nz, mask=m1)), {})
    got = next(iter(ref_compile(prog, numerics="exact")().values()))
    np.testing.assert_array_equal(got, _sparse_oracle(nz, mask))


def test_lut_to_sparse_then_sparse_to_dense():
    """The iOS18 docstring's example: 1-bit indices on a [4, 6] mask, scalar and vector (axis 0)."""
    mask = np.array([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 1], [0, 1, 1, 0, 1, 0], [0, 0, 0, 1, 0, 0]])
    ind = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1])
    for lut, axis in (
        (np.array([2.0, 3.0]).reshape(1, 1, 2, 1), None),
        (np.array([[2.0, 2.5], [3.0, 3.5]]).reshape(1, 1, 2, 2), 0),
    ):
        kw = {} if axis is None else {"vector_axis": np.int32(axis)}

        def fn(lut=lut, kw=kw):
            m, nz = mb.constexpr_lut_to_sparse(
                indices_mask=mask.astype(types.np_uint1_dtype), indices_nonzero_data=ind.astype(types.np_uint1_dtype),
                lut=lut.astype(np.float16), **kw,
            )  # fmt: skip
            return mb.identity(x=mb.constexpr_sparse_to_dense(nonzero_data=nz, mask=m))

        got = next(iter(ref_compile(build(fn, {}), numerics="exact")().values()))
        dense_idx = _sparse_oracle(ind, mask).astype(int)
        want = _lut_oracle(dense_idx, lut, axis)
        wide_mask = mask if axis is None else np.repeat(mask, 2, axis=0)
        np.testing.assert_array_equal(got, np.where(wide_mask != 0, want, 0.0))  # fmt: skip


def test_sparse_blockwise_shift_scale_then_sparse_to_dense():
    """The iOS18 docstring's example: per-column scale and offset on a [4, 4] sparse int8 tensor."""
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0]])
    nz = np.array([10, 11, 3, 4, 5, 6, 7, 8, 9], np.int8)
    scale = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
    offset = np.array([[1, 2, 3, 4]], np.int8)

    def fn():
        m, v = mb.constexpr_sparse_blockwise_shift_scale(
            data_mask=mask.astype(types.np_uint1_dtype), nonzero_data=nz, scale=scale, offset=offset
        )
        return mb.identity(x=mb.constexpr_sparse_to_dense(nonzero_data=v, mask=m))

    got = next(iter(ref_compile(build(fn, {}), numerics="exact")().values()))
    dense = _sparse_oracle(nz, mask)
    want = np.where(mask != 0, (dense - offset.astype(np.float64)) * scale.astype(np.float64), 0.0)
    close(got, want, rtol=1e-7)


def test_decompression_kinds_are_registered():
    for name in ("constexpr_lut_to_dense", "constexpr_sparse_to_dense"):
        assert name in OPS and name in VALUE_PRESERVING  # outputs are copies of lut / data entries
    for name in ("constexpr_lut_to_sparse", "constexpr_sparse_blockwise_shift_scale", "lstm", "range_1d"):
        assert name in OPS and name not in VALUE_PRESERVING


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: OPS["constexpr_lut_to_dense"](EXACT, indices=np.zeros(2, np.uint8), lut=np.zeros(8), shape=np.array([4])), "2, 4, 16, 64 or 256"),
        (lambda: OPS["constexpr_lut_to_dense"](EXACT, indices=np.zeros(3, np.uint8), lut=np.zeros(4), shape=np.array([4])), "take 1 bytes"),
        (lambda: OPS["constexpr_lut_to_dense"](EXACT, indices=np.array([[0, 5]]), lut=np.zeros((1, 1, 4, 1))), "past the lut"),
        (lambda: OPS["constexpr_lut_to_dense"](EXACT, indices=np.zeros((3, 2)), lut=np.zeros((2, 1, 4, 1))), "multiple"),
        (lambda: OPS["constexpr_lut_to_dense"](EXACT, indices=np.zeros((2, 2)), lut=np.zeros((1, 1, 4, 2))), "vector_axis"),
        (lambda: OPS["constexpr_sparse_to_dense"](EXACT, nonzero_data=np.zeros(3), mask=np.array([[1, 0], [0, 1]])), "sets 2"),
    ],
)  # fmt: skip
def test_decompression_refuses_inconsistent_data(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- range_1d -----------------------------------------------------------------------------------


def _range_program(dtype):
    def fn(a, b, c):
        return mb.range_1d(start=mb.squeeze(x=a), end=mb.squeeze(x=b), step=mb.squeeze(x=c))

    return build(fn, {k: ((1,), dtype) for k in "abc"})


@SETTINGS
@given(start=st.integers(-40, 40), end=st.integers(-40, 40), step=st.integers(-7, 7).filter(bool))
def test_range_1d_int32_is_arange(start, end, step):
    want = np.arange(start, end, step)
    kernel = ref_compile(_range_program(types.int32))
    args = {k: np.array([v], np.int32) for k, v in zip("abc", (start, end, step))}
    if want.size == 0:
        with pytest.raises(ProgramError, match="empty tensor"):
            kernel(**args)
        return
    (got,) = kernel(**args).values()
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


@SETTINGS
@given(
    start=st.floats(-20, 20, width=32),
    length=st.floats(0.5, 30, width=32),
    step=st.floats(0.25, 4, width=32),
    down=st.booleans(),
)
def test_range_1d_fp32_is_arange(start, length, step, down):
    end = np.float32(start - length if down else start + length)
    step = np.float32(-step if down else step)
    start = np.float32(start)
    want = np.arange(np.float64(start), np.float64(end), np.float64(step))
    (got,) = ref_compile(_range_program(types.fp32), numerics="exact")(
        a=np.array([start]), b=np.array([end]), c=np.array([step])
    ).values()
    assert got.shape == want.shape
    close(got, want, rtol=1e-6, atol=1e-5)


def test_range_1d_fp16_rounds_each_value_to_fp16():
    args = {k: np.array([v], np.float16) for k, v in zip("abc", (0.1, 3.0, 0.3))}
    (got,) = ref_compile(_range_program(types.fp16), numerics="ane")(**args).values()
    start, end, step = (float(v[0]) for v in args.values())
    fp16_close(got, np.arange(start, end, step))


def test_range_1d_with_a_constant_folds_at_compile_time():
    prog = build(lambda x: mb.add(x=x, y=mb.range_1d(start=np.int32(2), end=np.int32(9), step=np.int32(3))),
                 {"x": ((3,), types.int32)})  # fmt: skip
    (got,) = ref_compile(prog)(x=np.zeros(3, np.int32)).values()
    np.testing.assert_array_equal(got, [2, 5, 8])


def test_range_1d_step_zero_is_a_clear_error():
    kernel = ref_compile(_range_program(types.int32))
    with pytest.raises(ProgramError, match=r"range_1d.*step is 0"):
        kernel(a=np.array([0], np.int32), b=np.array([5], np.int32), c=np.array([0], np.int32))


def test_range_1d_empty_from_flexible_inputs_is_not_an_input_error():
    """Scalars carry no flexible dims: an empty range is the program's problem, not a size mismatch."""
    kernel = ref_compile(_range_program(types.int32))
    with pytest.raises(ProgramError) as info:
        kernel(a=np.array([5], np.int32), b=np.array([0], np.int32), c=np.array([1], np.int32))
    assert not isinstance(info.value, KernelInputError)
    assert "(range_1d, function 'main')" in str(info.value)
