"""`Layout`: packing logical 2-D blocks into one [1, C, 1, W] tensor and back."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anekit.kernels.layout import Layout, LayoutError, Segment, round_up


def test_spatial_pack_unpack_round_trip_and_padding():
    lay = Layout.spatial([("x", 4, 8), ("wq_t", 4, 6), ("wk_t", 3, 5)])
    assert lay.shape == (1, 4, 1, 32)  # 19 columns padded to 32 (64-byte rows)
    assert [s.columns for s in lay.segments] == [(0, 8), (8, 14), (14, 19)]
    rng = np.random.default_rng(0)
    arrays = {s.name: rng.standard_normal(s.shape) for s in lay.segments}
    buf = lay.pack(arrays)
    assert buf.dtype == np.float16 and buf.shape == lay.shape
    back = lay.unpack(buf)
    for k, a in arrays.items():
        np.testing.assert_array_equal(back[k], a.astype(np.float16))
    # what no segment covers stays zero: the padding and the rows under the 3-row block
    covered = np.zeros((4, 32), bool)
    for s in lay.segments:
        covered[slice(*s.channels), slice(*s.columns)] = True
    assert np.all(buf[0, :, 0][~covered] == 0)
    # element (c, w) sits at flat index c·W + w (channel-major)
    assert buf.reshape(-1)[2 * 32 + 9] == np.float16(arrays["wq_t"][2, 1])


def test_stacked_is_a_channel_concat():
    lay = Layout.stacked([("o", 3), ("attn", 5)], width=32)
    a, b = np.arange(96.0).reshape(3, 32), -np.arange(160.0).reshape(5, 32)
    buf = lay.pack({"o": a, "attn": b}, dtype=np.float64)
    np.testing.assert_array_equal(buf[0, :, 0], np.concatenate([a, b]))


def test_unpack_returns_views_and_write_updates_in_place():
    lay = Layout.spatial([("x", 4, 32), ("w", 4, 32)])
    buf = lay.empty(np.float16)
    lay.write(buf, "w", np.full((4, 32), 2.0))
    views = lay.unpack(buf)
    assert np.shares_memory(views["x"], buf) and np.shares_memory(views["w"], buf)
    lay.write(buf, "x", np.ones((4, 32)))  # rewriting activations keeps the staged weights
    np.testing.assert_array_equal(views["x"], 1.0)
    np.testing.assert_array_equal(views["w"], 2.0)
    # pack into an existing buffer writes only what is given
    out = lay.pack({"x": np.zeros((4, 32))}, out=buf)
    assert out is buf
    np.testing.assert_array_equal(lay.view(buf, "w"), 2.0)
    # a transposed (strided) source is fine: staging Wᵀ needs no copy by the caller
    m = np.arange(128.0).reshape(32, 4)
    lay.write(buf, "w", m.T)
    np.testing.assert_array_equal(lay.view(buf, "w"), m.T)
    # [C, W] tensors unpack too
    assert lay.unpack(buf[0, :, 0])["w"].shape == (4, 32)


def test_fp32_to_fp16_rounds_to_nearest_even():
    lay = Layout.stacked([("a", 1)], width=32)
    vals = np.full((1, 32), 1.0 + 2.0**-11)  # exactly halfway between two fp16 values
    assert lay.pack({"a": vals})[0, 0, 0, 0] == np.float16(1.0)


def test_mixed_packing_and_describe():
    segs = [Segment("dy", (0, 8), (0, 32)), Segment("k", (0, 4), (32, 64)), Segment("v", (4, 8), (32, 64))]
    lay = Layout(segs)
    assert lay.shape == (1, 8, 1, 64)
    assert "k" in lay and "q" not in lay
    text = lay.describe()
    assert "[1, 8, 1, 64]" in text and "v" in text
    assert lay == Layout(segs) and hash(lay) == hash(Layout(segs))


@pytest.mark.parametrize(
    "segments, kwargs, match",
    [
        ([], {}, "at least one"),
        ([Segment("a", (0, 2), (0, 4)), Segment("a", (2, 4), (0, 4))], {}, "duplicate"),
        ([Segment("a", (0, 2), (0, 4)), Segment("b", (1, 3), (3, 6))], {}, "overlap"),
        ([Segment("a", (0, 2), (0, 40))], {"width": 32}, "outside"),
        ([Segment("a", (2, 2), (0, 4))], {}, "empty"),
    ],
)
def test_invalid_layouts(segments, kwargs, match):
    with pytest.raises(LayoutError, match=match):
        Layout(segments, **kwargs)


def test_clear_errors_on_bad_arrays():
    lay = Layout.spatial([("x", 4, 8), ("w", 4, 6)])
    with pytest.raises(LayoutError, match=r"'w' holds a 4 x 6 block.*got an array of shape \(6, 4\)"):
        lay.pack({"x": np.zeros((4, 8)), "w": np.zeros((6, 4))})
    with pytest.raises(LayoutError, match="missing 'w'"):
        lay.pack({"x": np.zeros((4, 8))})
    with pytest.raises(LayoutError, match="unknown segment"):
        lay.pack({"x": np.zeros((4, 8)), "w": np.zeros((4, 6)), "z": 0})
    with pytest.raises(LayoutError, match="no segment 'q'"):
        lay["q"]
    with pytest.raises(LayoutError, match="tensor has shape"):
        lay.unpack(np.zeros((1, 4, 1, 33)))
    with pytest.raises(LayoutError, match="buffer must be"):
        lay.write(np.zeros((1, 4, 1, 31)), "x", np.zeros((4, 8)))


@st.composite
def layouts(draw):
    """Random spatial layouts with a channel-stacked pair in the last column range."""
    n = draw(st.integers(1, 4))
    rows = draw(st.integers(1, 6))
    blocks = [(f"b{i}", draw(st.integers(1, rows)), draw(st.integers(1, 9))) for i in range(n)]
    lay = Layout.spatial(blocks, channels=rows)
    return lay


@settings(max_examples=40, deadline=None)
@given(layouts(), st.sampled_from([np.float16, np.float32, np.float64]), st.integers(0, 2**31))
def test_round_trip_property(lay, dtype, seed):
    rng = np.random.default_rng(seed)
    arrays = {s.name: rng.standard_normal(s.shape).astype(dtype) for s in lay.segments}
    buf = lay.pack(arrays, dtype=dtype)
    assert buf.shape == (1, lay.channels, 1, round_up(sum(s.shape[1] for s in lay.segments), 32))
    for k, v in lay.unpack(buf).items():
        np.testing.assert_array_equal(v, arrays[k])
    # rewriting one block leaves the others intact
    first = lay.segments[0]
    lay.write(buf, first.name, np.zeros(first.shape))
    for k, v in lay.unpack(buf).items():
        np.testing.assert_array_equal(v, 0 if k == first.name else arrays[k])
