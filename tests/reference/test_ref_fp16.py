"""The bit-level fp16 emulation against NumPy's own float16 casts (the oracle), exhaustively."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from anekit.backends.reference.fp16 import from_half, round_fp16, to_half

ALL_HALVES = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-equal, except that any NaN matches any NaN."""
    nan = np.isnan(a.astype(np.float32))
    return bool(
        np.array_equal(nan, np.isnan(b.astype(np.float32)))
        and np.array_equal(a[~nan].view(np.uint8), b[~nan].view(np.uint8))
    )


def test_from_half_matches_numpy_on_every_fp16():
    assert same(from_half(ALL_HALVES), ALL_HALVES.astype(np.float32))


def test_to_half_matches_numpy_on_every_fp16():
    assert same(to_half(ALL_HALVES.astype(np.float32)), ALL_HALVES)


def test_round_fp16_on_every_value_and_every_midpoint():
    values = ALL_HALVES.astype(np.float32)
    assert same(round_fp16(values), values)
    finite = np.sort(values[np.isfinite(values)].astype(np.float64))
    mids = ((finite[1:] + finite[:-1]) / 2).astype(np.float32)  # exact ties: round half to even
    with np.errstate(over="ignore"):
        assert same(round_fp16(mids), mids.astype(np.float16).astype(np.float32))
        beyond = np.array(
            [65504, 65519.99, 65520, 1e5, -65520, -3e38, 2.0**-25, 2.0**-26, -(2.0**-25)], np.float32
        )
        assert same(round_fp16(beyond), beyond.astype(np.float16).astype(np.float32))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(1, 300), elements=st.floats(width=32, allow_nan=True)))
def test_round_fp16_matches_numpy_on_any_float32(x):
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    assert same(round_fp16(x), want)


@pytest.mark.parametrize("scale", [1e-9, 1e-6, 1e-4, 1.0, 3e4, 1e6])
def test_round_fp16_on_gradient_like_magnitudes(scale):
    x = (np.random.default_rng(0).standard_normal(10_000) * scale).astype(np.float32)
    with np.errstate(over="ignore"):
        assert same(round_fp16(x), x.astype(np.float16).astype(np.float32))


def test_to_half_without_specials_matches_numpy_on_every_finite_fp16():
    """An array with no inf or NaN takes the select-free path: every finite fp16 value, shuffled."""
    finite = ALL_HALVES[np.isfinite(ALL_HALVES)]
    finite = finite[np.random.default_rng(0).permutation(finite.size)]
    assert same(to_half(finite.astype(np.float32)), finite)
