"""fp16 emulation in float32 storage, with integer bit operations.

The reference backend keeps every fp16-typed value as a float32 array whose values are exactly
representable in fp16 (the engine stores activations in fp16 and computes wider inside an op,
mil-text.md §5 #1). NumPy's own float32 <-> float16 casts run a scalar software path that is
slow (about 4 ns per element) and very slow (about 70 ns) for values that land on fp16 subnormals,
which gradients do all the time; these vectorised bit operations give identical results at a
fraction of the cost. Each function is tested against NumPy's casts over every fp16 bit pattern.
"""

from __future__ import annotations

import numpy as np

_ABS = np.uint32(0x7FFFFFFF)
_INF = np.uint32(0x7F800000)
_MIN_NORMAL = np.uint32(0x38800000)  # 2**-14, the smallest normal fp16
_SUB_SCALE = np.float32(2.0**24)  # fp16 subnormals are multiples of 2**-24
_EXP_BITS = np.uint32(0x7F800000)
_C_CAP = np.uint32(0x47800000)  # 2**16: exponent clamp of the rounding constant's source
_C_SHIFT = np.uint32(13 << 23)  # x 2**13 on the exponent field
_MAX_HALF_F = np.float32(65504.0)
_OVER_UP = np.float32(2.0**112)
_OVER_DOWN = np.float32(2.0**-112)
_ZERO = np.float32(0.0)
_MAX_REDUCE = np.maximum.reduce
#: at most this many elements: rounded with NumPy's casts (each fp16 subnormal among them costs ~70 ns
#: there, so the bound keeps the worst case near the long path's cost)
_SMALL = 512


def round_fp16(x: np.ndarray) -> np.ndarray:
    """Round float32 `x` to the nearest fp16 value (ties to even), keeping float32 storage.

    Overflow gives ±inf as the engine does; NaN and inf pass through; results in the subnormal
    range are rounded to multiples of 2**-24. Equal to `x.astype(float16).astype(float32)`, and
    always a new array.

    The rounding is done by the FPU itself: for |x| in [2**e, 2**(e+1)), adding C = 2**(e+13) puts
    the fp16 ulp 2**(e-10) at float32's last kept bit, so `(|x| + C) - C` is |x| rounded to fp16's 11
    significant bits, ties to even (IEEE 754 round-to-nearest-even on the addition; both steps exact
    otherwise). Clamping e to [-14, 16] makes C = 2**-1 below the normal range (multiples of 2**-24,
    fp16's subnormal spacing) and keeps C finite for huge |x|. Results past 65504 become inf by two
    exact scalings through float32's overflow (x 2**112 overflows exactly from 2**16 up). About 8
    vectorised passes with no boolean masks, checked bit-exact against the integer-bit version it
    replaced over all 2**32 float32 patterns.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.size <= _SMALL:
        # Few elements: NumPy's own casts (2 calls) cost less than the 8 passes below; they equal
        # them bit for bit when nothing overflows or is NaN (checked over every float32 of fp16's
        # normal range and a sample of its subnormal one), and then warn about nothing.
        a = np.abs(x)
        if _MAX_REDUCE(a, axis=None) <= _MAX_HALF_F if a.size else False:
            return x.astype(np.float16).astype(np.float32)
    if x.ndim == 0:  # NumPy gives scalars, not arrays, for 0-d results: round it as a 1-vector
        return round_fp16(x.reshape(1)).reshape(())
    a = np.abs(x)
    top = _MAX_REDUCE(a, axis=None) if a.size else _ZERO  # ndarray.max, without its Python wrapper
    c = a.view(np.uint32) & _EXP_BITS
    np.maximum(c, _MIN_NORMAL, out=c)
    if not top <= _MAX_HALF_F:  # a value overflows, or an inf / NaN is present (rare)
        np.minimum(c, _C_CAP, out=c)
        c += _C_SHIFT
        cf = c.view(np.float32)
        # a signalling NaN raises "invalid" in the additions; NaNs are restored bit for bit below
        with np.errstate(invalid="ignore"):
            a += cf
            a -= cf
        with np.errstate(over="ignore"):  # the overflow is the point: no warning
            a *= _OVER_UP  # |a| >= 2**16 (fp16 overflow) overflows float32 to inf; the rest is exact
            a *= _OVER_DOWN
        np.copysign(a, x, out=a)
        nan = np.isnan(x)
        if nan.any():  # keep NaNs bit for bit (the additions would quiet a signalling one)
            np.copyto(a, x, where=nan)
        return a
    c += _C_SHIFT
    cf = c.view(np.float32)
    a += cf
    a -= cf
    np.copysign(a, x, out=a)
    return a


def to_half(x: np.ndarray) -> np.ndarray:
    """float32 values that are already fp16-representable (from `round_fp16`) as a float16 array,
    bit-exact, without NumPy's slow subnormal path."""
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    sign = ((bits >> np.uint32(16)) & np.uint32(0x8000)).astype(np.uint16)
    mag = bits & _ABS
    # normal: rebias the exponent (127 -> 15) and keep the top 10 mantissa bits
    normal = ((mag >> np.uint32(13)) - np.uint32((127 - 15) << 10)).astype(np.uint16)
    half = normal
    small = mag < _MIN_NORMAL
    if small.any():  # zero and subnormals: mantissa = |x| / 2**-24
        with np.errstate(invalid="ignore"):
            sub = np.rint(np.abs(x) * _SUB_SCALE).astype(np.uint16)
        half = np.where(small, sub, half)
    special = mag >= _INF
    if special.any():  # NaN / inf
        half = np.where(special, np.where(mag > _INF, np.uint16(0x7E00), np.uint16(0x7C00)), half)
    return (half | sign).view(np.float16)


#: Every fp16 bit pattern's float32 value, from NumPy's own cast: decoding is one table lookup.
_HALF_TO_FLOAT = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def from_half(h: np.ndarray) -> np.ndarray:
    """A float16 array as float32, bit-exact: a lookup in a 256 kB table of all 65,536 values, which
    avoids NumPy's slow per-element path for subnormals."""
    bits = np.asarray(h, dtype=np.float16).view(np.uint16)
    return np.take(_HALF_TO_FLOAT, bits)
