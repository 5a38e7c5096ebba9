"""fp16 emulation in float32 storage, with integer bit operations.

The reference backend keeps every fp16-typed value as a float32 array whose values are exactly
representable in fp16 (the engine stores activations in fp16 and computes wider inside an op,
mil-text.md §5 #1). NumPy's own float32 <-> float16 casts run a scalar software path that is
slow (about 4 ns per element) and very slow (about 70 ns) for values that land on fp16 subnormals,
which gradients do all the time; these vectorised bit operations give identical results at a
fraction of the cost. Each function is tested against NumPy's casts over every fp16 bit pattern.
"""

from __future__ import annotations

import threading

import numpy as np

_ABS = np.uint32(0x7FFFFFFF)
_INF = np.uint32(0x7F800000)
_MIN_NORMAL = np.uint32(0x38800000)  # 2**-14, the smallest normal fp16
_MIN_NORMAL_F = np.float32(2.0**-14)
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


def _round_wide(x: np.ndarray) -> np.ndarray:
    """`round_fp16` of a float32 array holding values past 65504, infs or NaNs: a new array.

    For |x| in [2**e, 2**(e+1)), adding C = 2**(e+13) puts the fp16 ulp 2**(e-10) at float32's last
    kept bit, so `(|x| + C) - C` is |x| rounded to fp16's 11 significant bits, ties to even (IEEE 754
    round-to-nearest-even on the addition; both steps exact otherwise). Clamping e to [-14, 16] makes
    C = 2**-1 below the normal range (multiples of 2**-24, fp16's subnormal spacing) and keeps C
    finite for huge |x|. Results past 65504 become inf by two exact scalings through float32's
    overflow (x 2**112 overflows exactly from 2**16 up). Checked bit-exact against the integer-bit
    version it replaced over all 2**32 float32 patterns."""
    a = np.abs(x)
    c = a.view(np.uint32) & _EXP_BITS
    np.maximum(c, _MIN_NORMAL, out=c)
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


_SPLIT = np.float32(2.0**13 + 1)  # Veltkamp's splitting constant for 24 - 13 = 11 significant bits
_SPLIT_FLOOR = np.float32(0.75)
_SIGN = np.uint32(0x80000000)
_CAP = np.float32(2.0**17)
_MIN_REDUCE = np.minimum.reduce
#: bytes of one float32 block of the in-place rounding: two scratch blocks of this size (512 kB)
#: stay in a core's L2 cache with the block being rounded, and the ~8 NumPy calls per block cost
#: ~0.1 ns per element (measured: 1.0 ns/element per 512x512 array chunked, 1.4 unchunked)
_BLOCK_BYTES = 1 << 18
#: elements per pass of the in-place rounding
CHUNK = _BLOCK_BYTES // 4
_scratch = threading.local()


def _placed(n: int, dtype, offset: int) -> np.ndarray:
    """A new array of `n` elements whose data starts `offset` bytes past a 4 KiB boundary.

    x86 cores stall a load that follows a store to an address with the same low 12 bits (4K
    aliasing): arrays read and written in one pass at nearly equal offsets within a page run about
    twice slower (measured: 0.24 vs 0.12 ns per element for a subtraction). The scratch blocks and
    constants are placed 1 KiB apart within the page."""
    dt = np.dtype(dtype)
    buf = np.empty(n * dt.itemsize + 4096, np.uint8)
    start = (offset - buf.ctypes.data) % 4096
    return buf[start : start + n * dt.itemsize].view(dt)


def _blocks(n: int) -> tuple[np.ndarray, np.ndarray]:
    """This thread's two float32 scratch blocks (each binding may run on its own thread)."""
    got = getattr(_scratch, "blocks", None)
    if got is None:
        got = _scratch.blocks = (_placed(CHUNK, np.float32, 0), _placed(CHUNK, np.float32, 1024))
    return got[0][:n], got[1][:n]


# The splitting's floor as whole blocks: NumPy's maximum against an array runs vectorised (~0.1 ns
# per element), against a scalar it does not (~0.25-0.4). Read-only, shared by all threads.
_FLOOR = _placed(CHUNK, np.float32, 2048)
_FLOOR[...] = _SPLIT_FLOOR
#: 0.75 and -0.75 as bits: uint32 max raises non-negative t to 0.75 and leaves negative t (sign bit
#: set: larger as uint32) alone; int32 max raises negative t to -0.75 in magnitude (for negative
#: floats a larger int32 is a larger magnitude) and leaves non-negative t (int32 >= 0) alone
_FLOOR_POS = _FLOOR.view(np.uint32)
_FLOOR_NEG = _placed(CHUNK, np.float32, 3072)
_FLOOR_NEG[...] = -_SPLIT_FLOOR
_FLOOR_NEG = _FLOOR_NEG.view(np.int32)
#: int32 view of -2**-25: every x whose int32 view is at most this lies in [-2**-25, -0] and rounds
#: to -0, which the signed arithmetic would give as +0
_NEG_ZEROS = np.float32(-(2.0**-25)).view(np.int32)
for _c in (_FLOOR, _FLOOR_POS, _FLOOR_NEG):
    _c.flags.writeable = False


def _floors(n: int, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f, p, q = _FLOOR[:n], _FLOOR_POS[:n], _FLOOR_NEG[:n]
    if len(shape) != 1:
        f, p, q = f.reshape(shape), p.reshape(shape), q.reshape(shape)
    return f, p, q


def _round_block(src: np.ndarray, dst: np.ndarray) -> None:
    """Round float32 `src` to fp16 values into `dst` (same shape, at most `CHUNK` elements; may be
    `src` itself; any strides, e.g. rows of a wider array).

    Veltkamp's splitting: with t = x * (2**13 + 1), `t - (t - x)` is x rounded to 24 - 13 = 11
    significant bits, ties to even, using float32's own round-to-nearest-even. Raising |t| to at
    least 0.75 (sign kept) rounds |x| below 2**-14 at fp16's subnormal spacing 2**-24 instead (t - x
    then lies in ±[0.5, 1), where float32's spacing is 2**-24; 0.75 * 2**24 is even, so ties still go
    to even). Rounding is symmetric, so negative x give the mirror image, except that a result of
    zero comes out +0 where -0 is due: blocks holding some x in [-2**-25, -0] round |x| and put the
    sign back by bits. Infs and overflow: |x| capped at 2**17, rounded, and scaled through
    float32's overflow; a block with a NaN takes `_round_wide`. Checked bit-exact against the
    previous method (`_round_wide`, itself checked against NumPy's casts) over all 2**32 float32
    bit patterns."""
    n = src.size
    t, a = _blocks(n)
    if src.ndim != 1:
        t, a = t.reshape(src.shape), a.reshape(src.shape)
    floor, floor_pos, floor_neg = _floors(n, src.shape)
    low = _MIN_REDUCE(src.view(np.int32), axis=None)
    negative = low < 0  # any sign bit set (-0.0 included)
    top = _MAX_REDUCE(src, axis=None)
    if top <= _MAX_HALF_F and (
        not negative or (low > _NEG_ZEROS and _MIN_REDUCE(src, axis=None) >= -_MAX_HALF_F)
    ):
        np.multiply(src, _SPLIT, out=t)
        if negative:
            np.maximum(t.view(np.uint32), floor_pos, out=t.view(np.uint32))
            np.maximum(t.view(np.int32), floor_neg, out=t.view(np.int32))
        else:
            np.maximum(t, floor, out=t)
        np.subtract(t, src, out=a)
        np.subtract(t, a, out=dst)
        return
    src_bits = src.view(np.uint32)
    mag = src
    if negative:
        np.bitwise_and(src_bits, _ABS, out=a.view(np.uint32))
        mag = a
        top = _MAX_REDUCE(mag, axis=None)
    wide = not top <= _MAX_HALF_F  # overflow or inf (attention masks: -inf), or NaN
    if wide:
        if top != top:  # a NaN (NumPy's reductions propagate it): the general method, kept bit for bit
            dst[...] = _round_wide(src)
            return
        # |x| capped at 2**17 (finite, still overflowing fp16) so that the splitting stays finite
        np.minimum(mag, _CAP, out=a)
        mag = a
    np.multiply(mag, _SPLIT, out=t)
    np.maximum(t, floor, out=t)
    np.subtract(t, mag, out=a)
    np.subtract(t, a, out=a)  # |x| rounded
    if wide:  # past 65504 (rounded up to 2**16 or more) is fp16 overflow: inf, by float32's own
        a *= _OVER_UP  # |a| >= 2**16 overflows float32 to inf when scaled by 2**112; the rest is exact
        a *= _OVER_DOWN
    if not negative:
        dst[...] = a
        return
    dst_bits = dst.view(np.uint32)
    np.bitwise_and(src_bits, _SIGN, out=dst_bits)
    np.bitwise_or(dst_bits, a.view(np.uint32), out=dst_bits)


def round_fp16_(x: np.ndarray) -> np.ndarray:
    """Round a writable, C-contiguous float32 array to fp16 values in place (see `round_fp16`);
    returns `x`. For an op's fresh result: no second array is made."""
    flat = x.reshape(-1)
    n = flat.size
    if n <= _SMALL:
        flat[...] = round_fp16(flat)
        return x
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(0, n, CHUNK):
            block = flat[i : i + CHUNK]
            _round_block(block, block)
    return x


def round_fp16_into(src: np.ndarray, dst: np.ndarray) -> None:
    """Round float32 `src` (rows x columns, C-contiguous) into `dst`, a float32 array of the same
    shape with contiguous rows, e.g. a block of a wider bound input: no intermediate array."""
    rows, width = src.shape
    if src.size <= _SMALL:
        dst[...] = round_fp16(src)
        return
    step = max(1, CHUNK // width) if width <= CHUNK else 0
    with np.errstate(over="ignore", invalid="ignore"):
        if step:
            for r in range(0, rows, step):
                _round_block(src[r : r + step], dst[r : r + step])
            return
        for r in range(rows):  # rows longer than a block
            for c in range(0, width, CHUNK):
                _round_block(src[r, c : c + CHUNK], dst[r, c : c + CHUNK])


def round_fp16(x: np.ndarray) -> np.ndarray:
    """Round float32 `x` to the nearest fp16 value (ties to even), keeping float32 storage.

    Overflow gives ±inf as the engine does; NaN and inf pass through; results in the subnormal
    range are rounded to multiples of 2**-24. Equal to `x.astype(float16).astype(float32)`, and
    always a new array. Computed by float32 arithmetic in blocks (`_round_block`): NumPy's own
    casts run a scalar loop here (~2.5 ns per element, ~80 ns on subnormals).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.size <= _SMALL:
        # Few elements: NumPy's own casts (2 calls) cost less than the passes below; they equal
        # them bit for bit when nothing overflows or is NaN (checked over every float32 of fp16's
        # normal range and a sample of its subnormal one), and then warn about nothing.
        a = np.abs(x)
        if _MAX_REDUCE(a, axis=None) <= _MAX_HALF_F if a.size else False:
            return x.astype(np.float16).astype(np.float32)
        if x.ndim == 0:  # NumPy gives scalars, not arrays, for 0-d results: round it as a 1-vector
            return _round_wide(x.reshape(1)).reshape(())
        return _round_wide(x)
    out = np.empty(x.shape, np.float32)
    src = x.reshape(-1) if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(-1)
    flat = out.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(0, flat.size, CHUNK):
            _round_block(src[i : i + CHUNK], flat[i : i + CHUNK])
    return out


def _to_half_general(x: np.ndarray) -> np.ndarray:
    """`to_half` with infs and NaNs (NaN -> 0x7E00, sign kept), by masked selects."""
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


def to_half(x: np.ndarray) -> np.ndarray:
    """float32 values that are already fp16-representable (from `round_fp16`) as a float16 array,
    bit-exact, without NumPy's slow casts (~2.3 ns per element, ~80 on subnormals) and without
    masked selects."""
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    mag = bits & _ABS
    if mag.size and _MAX_REDUCE(mag, axis=None) >= _INF:  # inf or NaN (rare)
        return _to_half_general(x)
    # normal: rebias the exponent (127 -> 15) and keep the top 10 mantissa bits (below 2**-14 this
    # is at most the subnormal code, or wraps negative as int32)
    half = mag >> np.uint32(13)
    half -= np.uint32((127 - 15) << 10)
    # zero and subnormals: min(|x|, 2**-14) + 0.5 lies where float32's spacing is 2**-24, so its
    # bits past 0.5's count |x| / 2**-24 (rounded to even, as np.rint would, were x not fp16-exact);
    # at and above 2**-14 that is 0x400, at most the normal code: the larger of the two (as int32)
    # is the fp16 code, with no masked select (`np.where` costs ~7 ns per element on scattered masks)
    sub = np.minimum(mag.view(np.float32), _MIN_NORMAL_F)
    sub += np.float32(0.5)
    sub = sub.view(np.uint32)
    sub -= np.uint32(0x3F000000)
    np.maximum(half.view(np.int32), sub.view(np.int32), out=half.view(np.int32))
    half |= (bits >> np.uint32(16)) & np.uint32(0x8000)
    return half.astype(np.uint16).view(np.float16)


#: Every fp16 bit pattern's float32 value, from NumPy's own cast: decoding is one table lookup.
_HALF_TO_FLOAT = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


def from_half(h: np.ndarray) -> np.ndarray:
    """A float16 array as float32, bit-exact: a lookup in a 256 kB table of all 65,536 values, which
    avoids NumPy's slow per-element path for subnormals."""
    bits = np.asarray(h, dtype=np.float16).view(np.uint16)
    return np.take(_HALF_TO_FLOAT, bits)
