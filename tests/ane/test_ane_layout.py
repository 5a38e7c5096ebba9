"""Surface sizes, strides and packing (anekit.backends.ane.layout), against hand-computed bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anekit.backends.ane.layout import (
    LayoutError,
    Strides,
    match_strides,
    pack,
    parse_model_attributes,
    slot_order_warnings,
    surface_layout,
    surface_properties,
    unpack,
)
from anekit.backends.base import TensorSpec


def spec(shape, dtype="fp16", name="x"):
    return TensorSpec(name, tuple(shape), dtype)


# -- sizes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, dtype, nbytes",
    [
        ((1, 64, 1, 256), "fp16", 64 * 256 * 2),  # maderix's S=256 activation: C·S·2 (§1.5)
        ((1, 768, 1, 64), "fp16", 768 * 64 * 2),
        ((1, 16, 1, 32), "fp32", 16 * 32 * 4),  # fp32 I/O: C·S·4 (§1.8)
        ((1, 3, 1, 2560), "fp16", 3 * 2560 * 2),  # spatial-packed width (multiple of 32)
        ((4, 32), "fp16", 4 * 32 * 2),
    ],
)
def test_dense_sizes(shape, dtype, nbytes):
    lay = surface_layout(spec(shape, dtype))
    assert not lay.strided
    assert lay.nbytes == nbytes
    assert lay.dims == shape


@pytest.mark.parametrize("shape", [(1, 64, 1, 1), (1, 8, 1, 48), (1, 4, 1, 31), (1, 2, 1, 14593)])
def test_dense_rule_rejects_unaligned_innermost_dim(shape):
    with pytest.raises(LayoutError, match=r"multiple of 32 fp16 elements \(64 bytes\)") as e:
        surface_layout(spec(shape))
    assert "§1.7" in str(e.value) and repr("x") in str(e.value)


def test_dense_rule_counts_bytes_for_fp32():
    # 16 fp32 = 64 bytes passes, 8 fp32 = 32 bytes does not
    assert surface_layout(spec((1, 2, 1, 16), "fp32")).nbytes == 2 * 16 * 4
    with pytest.raises(LayoutError, match="multiple of 16 fp32 elements"):
        surface_layout(spec((1, 2, 1, 8), "fp32"))


@pytest.mark.parametrize(
    "bad, message",
    [
        (spec((1, None, 1, 32)), "flexible dimension"),
        (spec((1, 32, 1, 32), "int32"), "fp16 \\(or fp32\\) surfaces"),
        (spec((1, 32, 1, 32), "bool"), "fp16 \\(or fp32\\)"),
        (spec(()), "scalar"),
        (spec((1, 0, 1, 32)), "empty dimension"),
    ],
)
def test_unsupported_tensors(bad, message):
    with pytest.raises(LayoutError, match=message):
        surface_layout(bad)


def test_strided_sizes_and_strides():
    # The ports' case: [1, 64, 1, 1] fp16 with PlaneStride 64 and BatchStride 4096.
    lay = surface_layout(spec((1, 64, 1, 1)), Strides(plane=64, batch=4096, channels=64, type="Float16"))
    assert lay.strided
    assert lay.dims == (1, 64, 1, 1)
    assert lay.byte_strides == (4096, 64, 2, 2)
    assert lay.nbytes == 4096  # the surface is sized by BatchStride, as the ports do
    # without BatchStride: C planes
    lay = surface_layout(spec((1, 10, 1, 3)), Strides(plane=64))
    assert lay.nbytes == 640
    assert lay.byte_strides == (640, 64, 6, 2)
    # lower rank is read as [N, C, H, W] with leading ones
    lay = surface_layout(spec((10, 32)), Strides(plane=640))
    assert lay.dims == (1, 1, 10, 32) and lay.nbytes == 640  # one plane of 10 aligned rows
    assert lay.byte_strides == (640, 640, 64, 2)
    # with an explicit RowStride, rows are padded inside the plane
    lay = surface_layout(spec((1, 2, 3, 5)), Strides(plane=256, row=64))
    assert lay.byte_strides == (512, 256, 64, 2) and lay.nbytes == 512
    # batch > 1
    lay = surface_layout(spec((2, 2, 1, 4)), Strides(plane=64, batch=192))
    assert lay.nbytes == 384 and lay.byte_strides == (192, 64, 8, 2)


@pytest.mark.parametrize(
    "shape, strides, message",
    [
        ((1, 4, 1, 40), Strides(plane=64), "cannot hold a 1x40 plane"),  # 80 bytes > 64
        ((1, 4, 1, 8), Strides(plane=64, batch=128), "BatchStride 128 bytes cannot hold 4 planes"),
        ((1, 4, 1, 8), Strides(plane=64, channels=5), "Channels=5"),
        ((1, 4, 1, 8), Strides(plane=64, type="Float32"), "Type='Float32'"),
        ((1, 4, 3, 5), Strides(plane=256), "no RowStride"),
        ((1, 4, 2, 8), Strides(plane=64, row=8), "cannot hold a 2x8 plane"),  # RowStride < row bytes
        ((1, 1, 1, 4, 8), Strides(plane=64), "rank-5"),
    ],
)
def test_strides_that_cannot_hold_the_tensor(shape, strides, message):
    with pytest.raises(LayoutError, match=message):
        surface_layout(spec(shape), strides)


def test_aligned_rows_need_no_row_stride():
    lay = surface_layout(spec((1, 2, 3, 32)), Strides(plane=256))
    assert lay.byte_strides == (512, 256, 64, 2)


def test_surface_properties_are_the_flat_buffer_of_section_1_5():
    assert surface_properties(4096) == {
        "IOSurfaceWidth": 4096,
        "IOSurfaceHeight": 1,
        "IOSurfaceBytesPerElement": 1,
        "IOSurfaceBytesPerRow": 4096,
        "IOSurfaceAllocSize": 4096,
        "IOSurfacePixelFormat": 0,
    }
    with pytest.raises(LayoutError):
        surface_properties(0)


# -- packing ---------------------------------------------------------------------------------------
def test_dense_pack_is_channel_major():
    x = np.arange(2 * 32, dtype=np.float32).reshape(1, 2, 1, 32) / 8
    lay = surface_layout(spec(x.shape))
    buf = bytearray(lay.nbytes)
    pack(lay, x, buf)
    # element (c, s) at byte 2·(c·S + s), fp16 little-endian
    raw = np.frombuffer(bytes(buf), dtype="<f2")
    assert raw[0 * 32 + 5] == np.float16(5 / 8)
    assert raw[1 * 32 + 7] == np.float16((32 + 7) / 8)
    np.testing.assert_array_equal(unpack(lay, buf), x.astype(np.float16))


def test_strided_pack_writes_each_channel_at_its_plane_and_leaves_padding():
    x = (np.arange(3 * 5, dtype=np.float32).reshape(1, 3, 1, 5) + 1).astype(np.float16)
    lay = surface_layout(spec(x.shape), Strides(plane=64))
    buf = bytearray(b"\xee" * lay.nbytes)  # sentinel: padding must stay untouched
    pack(lay, x, buf)
    for c in range(3):
        row = np.frombuffer(bytes(buf[c * 64 : c * 64 + 10]), dtype="<f2")
        np.testing.assert_array_equal(row, x[0, c, 0])
        assert bytes(buf[c * 64 + 10 : (c + 1) * 64]) == b"\xee" * 54
    np.testing.assert_array_equal(unpack(lay, buf), x)


def test_pack_rounds_to_fp16_and_overflows_to_inf():
    x = np.array([1 / 3, 70000.0, -70000.0, np.nan] + [0.0] * 28, dtype=np.float64).reshape(1, 1, 1, 32)
    lay = surface_layout(spec(x.shape))
    buf = bytearray(lay.nbytes)
    pack(lay, x, buf)
    out = unpack(lay, buf)
    assert out.dtype == np.float16
    assert out[0, 0, 0, 0] == np.float16(1 / 3)
    assert np.isposinf(out[0, 0, 0, 1]) and np.isneginf(out[0, 0, 0, 2]) and np.isnan(out[0, 0, 0, 3])


def test_fp32_surfaces_keep_fp32():
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 1, 1, 16) / 3
    lay = surface_layout(spec(x.shape, "fp32"))
    buf = bytearray(lay.nbytes)
    pack(lay, x, buf)
    np.testing.assert_array_equal(np.frombuffer(bytes(buf), "<f4"), x.ravel())


def test_pack_checks_shape_and_buffer_size():
    lay = surface_layout(spec((1, 2, 1, 32)))
    with pytest.raises(LayoutError, match="got shape"):
        pack(lay, np.zeros((1, 2, 1, 31)), bytearray(lay.nbytes))
    with pytest.raises(LayoutError, match="holds 10 bytes"):
        pack(lay, np.zeros((1, 2, 1, 32)), bytearray(10))


@settings(max_examples=40, deadline=None)
@given(
    c=st.integers(1, 6),
    h=st.integers(1, 3),
    w=st.integers(1, 20),
    pad_row=st.integers(0, 3),
    pad_plane=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_strided_roundtrip_matches_an_independent_offset_formula(c, h, w, pad_row, pad_plane, seed):
    rs = w * 2 + pad_row * 2
    ps = (h - 1) * rs + w * 2 + pad_plane * 16
    x = np.random.default_rng(seed).standard_normal((1, c, h, w)).astype(np.float16)
    lay = surface_layout(spec(x.shape), Strides(plane=ps, row=rs))
    buf = bytearray(lay.nbytes)
    pack(lay, x, buf)
    for ci in range(c):
        for hi in range(h):
            for wi in range(w):
                off = ci * ps + hi * rs + wi * 2
                assert np.frombuffer(bytes(buf[off : off + 2]), "<f2")[0] == x[0, ci, hi, wi] or (
                    np.isnan(x[0, ci, hi, wi])
                )
    np.testing.assert_array_equal(unpack(lay, buf), x)


# -- modelAttributes -------------------------------------------------------------------------------
ATTRS = {
    "NetworkStatusList": [
        {
            "LiveInputList": [
                {"BatchStride": 4096, "PlaneStride": 64, "Channels": 64, "Type": "Float16", "Name": "x"}
            ],
            "LiveOutputList": [{"BatchStride": 2048, "PlaneStride": 64, "Channels": 32, "Type": "Float16"}],
        }
    ]
}


def test_parse_model_attributes():
    ins, outs = parse_model_attributes(ATTRS)
    assert ins == [Strides(plane=64, batch=4096, row=None, channels=64, type="Float16", name="x")]
    assert outs == [Strides(plane=64, batch=2048, row=None, channels=32, type="Float16", name=None)]


@pytest.mark.parametrize(
    "attrs",
    [None, {}, {"NetworkStatusList": []}, {"NetworkStatusList": [{}]}, {"Other": 1}],
)
def test_parse_model_attributes_absent(attrs):
    assert parse_model_attributes(attrs) == ([], [])


def test_parse_model_attributes_entry_without_plane_stride():
    ins, _ = parse_model_attributes(
        {"NetworkStatusList": [{"LiveInputList": [{"Channels": 4}, {"PlaneStride": 0}]}]}
    )
    assert ins == [None, None]


def test_match_strides_by_name_position_or_refuse():
    a, b = Strides(plane=64, name="b"), Strides(plane=128, name="a")
    assert match_strides(["a", "b"], [a, b]) == [b, a]  # by name
    p, q = Strides(plane=64), Strides(plane=128)
    with pytest.warns(UserWarning, match="by position, which is unverified"):
        assert match_strides(["a", "b"], [p, q]) == [p, q]  # unnamed: by position, with a warning
    with pytest.raises(LayoutError, match="1 unnamed inputs, the program declares 2"):
        match_strides(["a", "b"], [p])  # counts differ: refuse rather than guess
    assert match_strides(["a"], []) == [None]


def test_slot_order_warnings():
    assert slot_order_warnings([100], [50]) == []
    assert slot_order_warnings([10, 20, 30], [30, 20]) == []
    notes = slot_order_warnings([20, 10], [10, 30])
    assert len(notes) == 2 and "ascending" in notes[0] and "descending" in notes[1]
    assert len(slot_order_warnings([10, 10], [5])) == 1  # equal sizes are not strictly ascending
