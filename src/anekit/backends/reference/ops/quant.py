"""Reference semantics: quantization ops and compressed constants (mil-text.md §3.12).

The constexpr ops have only constant inputs, so the interpreter evaluates them once at compile
time; they are ordinary functions of their inputs here.
"""

from __future__ import annotations

import math

import numpy as np

from ....mil.dtypes import dtype as mil_dtype
from ..registry import OpContext, op

Array = np.ndarray


def _along(param: Array, axis: Array | int | None, rank: int) -> Array:
    """A scalar param as is; a vector param shaped to broadcast along `axis` of a rank-`rank` array."""
    p = np.asarray(param)
    if p.ndim == 0 or p.ndim == rank:
        return p
    a = int(axis) if axis is not None else 0
    a = a + rank if a < 0 else a
    shape = [1] * rank
    shape[a] = p.size
    return p.reshape(shape)


@op("quantize")
def quantize(
    ctx: OpContext,
    input: Array,
    scale: Array,
    output_dtype: str,
    zero_point: Array | None = None,
    axis: Array | int | None = None,
) -> Array:
    """q = clip(round_half_even(input / scale) + zero_point, dtype range), int8 or uint8."""
    x = ctx.f(input)
    q = np.rint(x / _along(ctx.f(scale), axis, x.ndim))  # rint: round half to even
    if zero_point is not None:
        q += _along(zero_point, axis, x.ndim).astype(q.dtype)
    info = np.iinfo(mil_dtype(output_dtype).numpy)
    return np.clip(q, info.min, info.max).astype(mil_dtype(output_dtype).numpy)


def _dequantize(ctx: OpContext, data: Array, scale: Array, zero_point: Array | None, axis) -> Array:
    """scale * (data - zero_point), params broadcast along `axis`."""
    q = np.asarray(data).astype(ctx.float)
    if zero_point is not None:
        q -= _along(zero_point, axis, q.ndim).astype(ctx.float)
    q *= _along(ctx.f(scale), axis, q.ndim)
    return q


@op("dequantize")
def dequantize(
    ctx: OpContext,
    input: Array,
    scale: Array,
    zero_point: Array | None = None,
    axis: Array | int | None = None,
) -> Array:
    return _dequantize(ctx, input, scale, zero_point, axis)


@op("constexpr_affine_dequantize")
def constexpr_affine_dequantize(
    ctx: OpContext, quantized_data: Array, zero_point: Array, scale: Array, axis: Array | int
) -> Array:
    return _dequantize(ctx, quantized_data, scale, zero_point, axis)


@op("constexpr_blockwise_shift_scale")
def constexpr_blockwise_shift_scale(
    ctx: OpContext, data: Array, scale: Array, offset: Array | None = None
) -> Array:
    """scale[i / block] * (data[i] - offset[i / block]), block[d] = data.shape[d] / scale.shape[d]."""
    q = np.asarray(data).astype(ctx.float)
    s = ctx.f(scale)
    # View data as [s0, b0, s1, b1, ...] so each scale entry broadcasts over its block.
    split = tuple(v for sd, dd in zip(s.shape, q.shape) for v in (sd, dd // sd))
    q = q.reshape(split)
    expand = tuple(v for sd in s.shape for v in (sd, 1))
    if offset is not None:
        q -= np.asarray(offset).astype(ctx.float).reshape(expand)
    q *= s.reshape(expand)
    return q.reshape(np.shape(data))


@op("constexpr_cast")
def constexpr_cast(ctx: OpContext, source_val: Array, output_dtype: str) -> Array:
    """An fp16 constant up-cast; the interpreter's cast to the declared dtype does the work."""
    return source_val


# -- palettized and sparse constants (mil-text.md §3.12; coremltools iOS16/constexpr_ops.py and
#    iOS18/compression.py). Two forms share each name: the iOS16 one takes packed uint8 bytes and a
#    `shape`, the iOS18 one typed (unpacked) sub-byte tensors that carry the shape themselves.

_PALETTE_BITS = (1, 2, 4, 6, 8)  # iOS16: NUM_PALETTES is 2, 4, 16, 64 or 256


def _shape_param(ctx: OpContext, shape: Array) -> tuple[int, ...]:
    dims = tuple(int(d) for d in np.asarray(shape).ravel().tolist())
    ctx.check_size(dims, "the decompressed constant")
    return dims


def _unpack_lsb_first(packed: Array, bits: int, count: int) -> Array:
    """`count` unsigned `bits`-wide fields from bytes packed least significant bit first: field i
    starts at bit i * bits and may straddle two bytes (mil-text.md §2.5)."""
    raw = np.asarray(packed).astype(np.uint8, copy=False).ravel()
    need = -(-count * bits // 8)
    if raw.size != need:
        raise ValueError(f"{count} {bits}-bit fields take {need} bytes, the data has {raw.size}")
    planes = np.unpackbits(raw, count=count * bits, bitorder="little").reshape(count, bits)
    if bits < 8:  # widen each field to a byte, then read the byte back
        planes = np.concatenate([planes, np.zeros((count, 8 - bits), np.uint8)], axis=1)
    return np.packbits(planes, axis=1, bitorder="little").reshape(count)


def _lut_lookup(indices: Array, lut: Array, vector_axis: Array | int | None) -> Array:
    """iOS18 palettization: indices [*S] (values < NUM_PALETTES), lut [*G, NUM_PALETTES, VECTOR_SIZE]
    where block[d] = S[d] / G[d] positions share lut group S-position // block; with VECTOR_SIZE > 1
    each index becomes VECTOR_SIZE consecutive elements along `vector_axis`."""
    idx = np.asarray(indices)
    lut = np.asarray(lut)
    rank = idx.ndim
    groups, n_pal, vsize = _lut_shape(idx, lut)
    # indices as [G0, B0, G1, B1, ...]; the lut broadcast over each block: [G0, 1, G1, 1, ..., P, V]
    blocks = tuple(v for s, g in zip(idx.shape, groups) for v in (g, s // g))
    spread = tuple(v for g in groups for v in (g, 1)) + (n_pal, vsize)
    picked = np.take_along_axis(
        lut.reshape(spread), idx.reshape(blocks + (1, 1)).astype(np.intp), axis=2 * rank
    )  # [G0, B0, ..., 1, V]
    out = picked.reshape(idx.shape + (vsize,))
    if vsize == 1:
        return out.reshape(idx.shape)
    return _vectors_along(out, vector_axis)


def _lut_shape(idx: np.ndarray, lut: np.ndarray) -> tuple[tuple[int, ...], int, int]:
    """(groups G, NUM_PALETTES, VECTOR_SIZE) of an iOS18 lut, checked against the indices."""
    rank = idx.ndim
    if rank < 1 or lut.ndim != rank + 2:
        raise ValueError(f"lut must have rank(indices) + 2 = {rank + 2} dims, got shape {lut.shape}")
    groups, (n_pal, vsize) = lut.shape[:rank], lut.shape[rank:]
    if any(g == 0 or s % g for s, g in zip(idx.shape, groups)):
        raise ValueError(f"each indices dim {idx.shape} must be a multiple of the lut's {groups}")
    if idx.size and int(idx.max()) >= n_pal:
        raise ValueError(f"an index {int(idx.max())} is past the lut's {n_pal} entries")
    return groups, n_pal, vsize


def _vectors_along(out: np.ndarray, vector_axis: Array | int | None) -> Array:
    """[*S, V] -> S with dim `vector_axis` V times longer, each vector's elements consecutive."""
    rank, vsize = out.ndim - 1, out.shape[-1]
    if vector_axis is None:
        raise ValueError(f"a lut with vectors of {vsize} needs vector_axis")
    a = int(vector_axis) + rank if int(vector_axis) < 0 else int(vector_axis)
    if not 0 <= a < rank:
        raise ValueError(f"vector_axis {int(vector_axis)} is out of range for rank {rank}")
    shape = list(out.shape[:-1])
    shape[a] *= vsize
    return np.moveaxis(out, -1, a + 1).reshape(shape)


@op("constexpr_lut_to_dense")
def constexpr_lut_to_dense(
    ctx: OpContext,
    indices: Array,
    lut: Array,
    shape: Array | None = None,
    vector_axis: Array | int | None = None,
) -> Array:
    """iOS16 (`shape` given): lut[NUM_PALETTES] looked up by the log2(NUM_PALETTES)-bit fields packed
    in `indices`, reshaped to `shape`. iOS18: see `_lut_lookup`."""
    if shape is None:
        return _lut_lookup(indices, lut, vector_axis)
    table = np.asarray(lut).ravel()
    bits = int(table.size).bit_length() - 1
    if bits not in _PALETTE_BITS or table.size != 1 << bits:
        raise ValueError(f"lut has {table.size} entries; the iOS16 form takes 2, 4, 16, 64 or 256")
    dims = _shape_param(ctx, shape)
    return table[_unpack_lsb_first(indices, bits, math.prod(dims))].reshape(dims)


def _scatter(nonzero: Array, mask: Array) -> Array:
    """Zeros of mask's shape with `nonzero` written, in row-major order, where mask is set."""
    nz = np.asarray(nonzero).ravel()
    where = np.asarray(mask) != 0
    if int(where.sum()) != nz.size:
        raise ValueError(f"the mask sets {int(where.sum())} elements, nonzero_data has {nz.size}")
    out = np.zeros(where.shape, nz.dtype)
    out[where] = nz
    return out


@op("constexpr_sparse_to_dense")
def constexpr_sparse_to_dense(
    ctx: OpContext, nonzero_data: Array, mask: Array, shape: Array | None = None
) -> Array:
    """iOS16 (`shape` given): one mask bit per element, packed LSB first into uint8 bytes. iOS18:
    `mask` is a uint1 tensor of the output's shape. Set bits take the nonzero_data in order."""
    if shape is None:
        return _scatter(nonzero_data, mask)
    dims = _shape_param(ctx, shape)
    bits = _unpack_lsb_first(mask, 1, math.prod(dims))
    return _scatter(nonzero_data, bits).reshape(dims)


@op("constexpr_lut_to_sparse")
def constexpr_lut_to_sparse(
    ctx: OpContext,
    indices_mask: Array,
    indices_nonzero_data: Array,
    lut: Array,
    vector_axis: Array | int | None = None,
) -> tuple[Array, Array]:
    """iOS18: the palettization of `_lut_lookup` applied to a sparse tensor's set elements; returns
    (mask, nonzero values), the mask widened along vector_axis for vector palettes."""
    dense = _lut_lookup(_scatter(indices_nonzero_data, indices_mask), lut, vector_axis)
    mask = np.asarray(indices_mask)
    vsize = np.shape(lut)[-1]
    if vsize > 1:
        mask = np.repeat(mask, vsize, axis=int(vector_axis))
    return mask, dense[mask != 0]


@op("constexpr_sparse_blockwise_shift_scale")
def constexpr_sparse_blockwise_shift_scale(
    ctx: OpContext, data_mask: Array, nonzero_data: Array, scale: Array, offset: Array | None = None
) -> tuple[Array, Array]:
    """iOS18: `constexpr_blockwise_shift_scale` applied to a sparse tensor's set elements; returns
    (mask, nonzero values)."""
    dense = constexpr_blockwise_shift_scale(ctx, _scatter(nonzero_data, data_mask), scale, offset)
    return data_mask, dense[np.asarray(data_mask) != 0]
