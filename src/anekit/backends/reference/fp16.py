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

_SIGN = np.uint32(0x80000000)
_ABS = np.uint32(0x7FFFFFFF)
_INF = np.uint32(0x7F800000)
_MIN_NORMAL = np.uint32(0x38800000)  # 2**-14, the smallest normal fp16
_MAX_HALF = np.uint32(0x477FE000)  # 65504, the largest finite fp16
_KEEP = np.uint32(0xFFFFE000)  # sign, exponent and the 10 mantissa bits fp16 keeps
_SUB_SCALE = np.float32(2.0**24)  # fp16 subnormals are multiples of 2**-24
_SUB_UNIT = np.float32(2.0**-24)


def round_fp16(x: np.ndarray) -> np.ndarray:
    """Round float32 `x` to the nearest fp16 value (ties to even), keeping float32 storage.

    Overflow gives ±inf as the engine does; NaN and inf pass through; results in the subnormal
    range are rounded to multiples of 2**-24. Equal to `x.astype(float16).astype(float32)`.
    """
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    # add half an ulp of fp16 (plus the kept bit, for ties to even), then truncate: in place
    r = bits >> np.uint32(13)
    r &= np.uint32(1)
    r += np.uint32(0x0FFF)
    r += bits
    r &= _KEEP
    mag = r & _ABS
    big = mag > _MAX_HALF
    if big.any():  # rare: overflow to ±inf; NaN and inf left alone
        np.copyto(r, (bits & _SIGN) | _INF, where=big)
        np.copyto(r, bits, where=(bits & _ABS) >= _INF)
    result = r.view(np.float32)
    mag -= np.uint32(1)  # zero wraps around, so it does not count as subnormal
    small = mag < _MIN_NORMAL - np.uint32(1)
    if small.any():  # the subnormal range: multiples of 2**-24 (np.rint rounds ties to even)
        with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN elements are not selected
            sub = x * _SUB_SCALE
            np.rint(sub, out=sub)
            sub *= _SUB_UNIT
        np.copyto(result, sub, where=small)
    return result


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
