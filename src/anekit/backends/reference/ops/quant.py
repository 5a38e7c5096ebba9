"""Reference semantics: quantization ops and compressed constants (mil-text.md §3.12).

The constexpr ops have only constant inputs, so the interpreter evaluates them once at compile
time; they are ordinary functions of their inputs here.
"""

from __future__ import annotations

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
