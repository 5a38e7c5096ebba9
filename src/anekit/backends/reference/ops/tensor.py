"""Reference semantics: tensor ops (casts, shape and data movement, gathers, reductions, topk).

Data movement never converts dtypes: values keep their storage dtype and, where NumPy allows, come
back as views. No op here writes into an input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ..registry import OpContext, op, prepare

Array = np.ndarray


def _ints(a: Array | Sequence[int] | None) -> list[int]:
    return [] if a is None else [int(v) for v in np.asarray(a).ravel().tolist()]


def _axis(axis: Array | int, rank: int) -> int:
    """A single axis, negative counted from the end (mil-text.md §3.0 #6)."""
    a = int(axis)
    return a + rank if a < 0 else a


# -- casts (mil-text.md §3.1) -------------------------------------------------------------------


@op("cast")
def cast(ctx: OpContext, x: Array, dtype: str) -> Array:
    """The interpreter's `astype` to the declared dtype *is* the cast: floats truncate toward zero
    into integers, numbers become `x != 0` as bool, bools become 0/1 (mil-text.md §3.0 #8, §3.1)."""
    return x


@op("identity")
def identity(ctx: OpContext, x: Array) -> Array:
    return x


@op("shape")
def shape(ctx: OpContext, x: Array) -> Array:
    return np.array(x.shape, dtype=np.int32)


@op("range_1d")
def range_1d(ctx: OpContext, start: Array, end: Array, step: Array) -> Array:
    """NumPy's arange: start, start + step, ... while short of `end` (exclusive); ceil((end - start)
    / step) elements, none if that is not positive (iOS15 `range_1d`, its value_inference)."""
    values = [np.asarray(v) for v in (start, end, step)]
    for name, v in zip(("start", "end", "step"), values):
        if v.size != 1:
            raise ValueError(f"range_1d {name} must be a scalar, got shape {v.shape}")
    lo, hi, inc = (v.reshape(()) for v in values)
    if inc == 0:
        raise ValueError("range_1d step is 0: the sequence would never reach end")
    if lo.dtype.kind == "f" or hi.dtype.kind == "f" or inc.dtype.kind == "f":
        lo, hi, inc = (ctx.f(v) for v in (lo, hi, inc))
        if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(inc)):
            raise ValueError(f"range_1d needs finite start, end and step, got {lo}, {hi}, {inc}")
    n = max(0, math.ceil((float(hi) - float(lo)) / float(inc)))
    ctx.check_size((n,), "the range")
    return np.arange(lo, hi, inc)


# -- shape ops (mil-text.md §3.9) ----------------------------------------------------------------


@op("reshape")
def reshape(ctx: OpContext, x: Array, shape: Array) -> Array:
    """Row-major reshape; a 0 entry copies x's dim (only when the ranks match), one -1 is inferred."""
    dims = _ints(shape)
    if 0 in dims:
        if len(dims) != x.ndim:
            raise ValueError(f"reshape: a 0 in shape {dims} needs len(shape) == rank(x) = {x.ndim}")
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@prepare("reshape", "expand_dims", "squeeze")
def _prepare_reshape(ctx: OpContext, **fixed):
    """These ops return `x.reshape(dims)` with dims a function of x's shape alone: computed once per
    input shape by the implementation itself, then reused."""
    impl = {"reshape": reshape, "expand_dims": expand_dims, "squeeze": squeeze}[ctx.op.op_type]
    dims_of: dict[tuple[int, ...], tuple[int, ...]] = {}

    def run(x: Array) -> Array:
        dims = dims_of.get(x.shape)
        if dims is None:
            dims = dims_of[x.shape] = impl(ctx, x=x, **fixed).shape
        return x.reshape(dims)

    return run


@prepare("transpose")
def _prepare_transpose(ctx: OpContext, perm: Array):
    axes = tuple(_ints(perm))
    return lambda x: np.transpose(x, axes)


@op("transpose")
def transpose(ctx: OpContext, x: Array, perm: Array) -> Array:
    return np.transpose(x, _ints(perm))


@op("expand_dims")
def expand_dims(ctx: OpContext, x: Array, axes: Array) -> Array:
    # mil-text.md §3.9: axes are normalized against the OUTPUT rank, sorted, then inserted.
    out_rank = x.ndim + len(_ints(axes))
    dims = list(x.shape)
    for a in sorted(a + out_rank if a < 0 else a for a in _ints(axes)):
        dims.insert(a, 1)
    return x.reshape(dims)


@op("squeeze")
def squeeze(ctx: OpContext, x: Array, axes: Array | None = None) -> Array:
    # mil-text.md §3.9: listed axes whose size is not 1 are silently kept (PyTorch behaviour).
    drop = {i for i, d in enumerate(x.shape) if d == 1}
    if axes is not None:
        drop &= {_axis(a, x.ndim) for a in _ints(axes)}
    return x.reshape([d for i, d in enumerate(x.shape) if i not in drop])


def _size_index(begin: list[int], size: list[int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    index = []
    for b, s, dim in zip(begin, size, shape):
        b = b + dim if b < 0 else b
        index.append(slice(b, None if s == -1 else b + s))
    return tuple(index)


@op("slice_by_size")
def slice_by_size(ctx: OpContext, x: Array, begin: Array, size: Array) -> Array:
    """x[b:b+s] per axis; a negative begin counts from the end, a size of -1 runs to the end."""
    return x[_size_index(_ints(begin), _ints(size), x.shape)]


@prepare("slice_by_size")
def _prepare_slice_by_size(ctx: OpContext, begin: Array, size: Array):
    b, s = _ints(begin), _ints(size)
    index_of: dict[tuple[int, ...], tuple[slice, ...]] = {}

    def run(x: Array) -> Array:
        index = index_of.get(x.shape)
        if index is None:
            index = index_of[x.shape] = _size_index(b, s, x.shape)
        return x[index]

    return run


def _flags(mask: Array | None, rank: int) -> list[bool]:
    return [False] * rank if mask is None else [bool(v) for v in np.asarray(mask).ravel().tolist()]


@op("slice_by_index")
def slice_by_index(
    ctx: OpContext,
    x: Array,
    begin: Array,
    end: Array,
    stride: Array | None = None,
    begin_mask: Array | None = None,
    end_mask: Array | None = None,
    squeeze_mask: Array | None = None,
) -> Array:
    """NumPy basic slicing per axis (mil-text.md §3.9). A masked begin/end is None (so a negative
    stride runs from the far end); a squeezed axis takes the single index begin (0 if masked)."""
    return x[_index_index(x.ndim, begin, end, stride, begin_mask, end_mask, squeeze_mask)]


def _index_index(rank, begin, end, stride, begin_mask, end_mask, squeeze_mask) -> tuple[int | slice, ...]:
    begins, ends = _ints(begin), _ints(end)
    strides = _ints(stride) or [1] * rank
    bm, em, sm = (_flags(m, rank) for m in (begin_mask, end_mask, squeeze_mask))
    index: list[int | slice] = []
    for i in range(rank):
        if sm[i]:
            index.append(0 if bm[i] else begins[i])
        else:
            index.append(slice(None if bm[i] else begins[i], None if em[i] else ends[i], strides[i]))
    return tuple(index)


@prepare("slice_by_index")
def _prepare_slice_by_index(
    ctx: OpContext, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None
):
    index_of: dict[int, tuple[int | slice, ...]] = {}

    def run(x: Array) -> Array:
        index = index_of.get(x.ndim)
        if index is None:
            index = index_of[x.ndim] = _index_index(
                x.ndim, begin, end, stride, begin_mask, end_mask, squeeze_mask
            )
        return x[index]

    return run


@op("concat")
def concat(ctx: OpContext, values: tuple[Array, ...], axis: Array, interleave: Array | bool = False) -> Array:
    """Join along `axis`. With interleave, output index k*N + i comes from input i at index k
    (mil-text.md §3.9): stack right after `axis`, then merge the two axes."""
    rank = values[0].ndim
    if rank == 0:  # scalars join into a vector, as coremltools infers
        return np.stack(values)
    a = _axis(axis, rank)
    if not bool(interleave):
        return np.concatenate(values, axis=a)
    stacked = np.stack(values, axis=a + 1)
    dims = list(values[0].shape)
    dims[a] *= len(values)
    return stacked.reshape(dims)


@op("split")
def split(
    ctx: OpContext,
    x: Array,
    axis: Array,
    num_splits: Array | None = None,
    split_sizes: Array | None = None,
) -> Array | tuple[Array, ...]:
    """Even split into `num_splits`, or pieces of `split_sizes`; several outputs come as a tuple."""
    a = _axis(axis, x.ndim)
    if split_sizes is not None:
        cuts = np.cumsum(_ints(split_sizes))[:-1]
    elif num_splits is not None:
        n = int(num_splits)
        if x.shape[a] % n:
            raise ValueError(f"split: num_splits {n} does not divide dim {x.shape[a]}")
        cuts = [x.shape[a] // n * i for i in range(1, n)]
    else:
        raise ValueError("split needs num_splits or split_sizes")
    parts = tuple(np.split(x, cuts, axis=a))
    return parts[0] if len(parts) == 1 else parts


@op("stack")
def stack(ctx: OpContext, values: tuple[Array, ...], axis: Array) -> Array:
    return np.stack(values, axis=int(axis))


@op("tile")
def tile(ctx: OpContext, x: Array, reps: Array) -> Array:
    r = _ints(reps)
    if any(v < 0 for v in r):
        raise ValueError(f"tile reps must not be negative, got {r}")
    n = max(len(r), x.ndim)
    dims = [1] * (n - x.ndim) + list(x.shape)
    ctx.check_size([d * v for d, v in zip(dims, [1] * (n - len(r)) + r)], "the tiled result")
    return np.tile(x, r)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


@op("pad")
def pad(
    ctx: OpContext, x: Array, pad: Array, mode: str = "constant", constant_val: Array | float = 0.0
) -> Array:
    """Pads the last len(pad)/2 dims; (pad[2k], pad[2k+1]) is (before, after) of dim rank-N+k."""
    p = _ints(pad)
    n = len(p) // 2
    if len(p) % 2 or n > x.ndim:
        raise ValueError(f"pad needs 2 entries for each of at most {x.ndim} dims, got {len(p)}")
    widths = [(0, 0)] * (x.ndim - n) + [(p[2 * k], p[2 * k + 1]) for k in range(n)]
    ctx.check_size([d + a + b for d, (a, b) in zip(x.shape, widths)], "the padded result")
    if mode not in _PAD_MODES:
        raise ValueError(f"pad mode must be one of {', '.join(_PAD_MODES)}, not {mode!r}")
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=np.asarray(constant_val).item())
    return np.pad(x, widths, mode=_PAD_MODES[mode])


@op("band_part")
def band_part(ctx: OpContext, x: Array, lower: Array | int = -1, upper: Array | int = -1) -> Array:
    """Keeps the band lower below / upper above the diagonal of the last two dims (negative = all)."""
    lo, up = int(lower), int(upper)
    m, n = x.shape[-2:]
    d = np.arange(m)[:, None] - np.arange(n)[None, :]  # row - column
    keep = ((lo < 0) | (d <= lo)) & ((up < 0) | (-d <= up))
    return np.where(keep, x, np.zeros((), dtype=x.dtype))


# -- gathers and select (mil-text.md §3.9) -------------------------------------------------------


def _check_indices(indices: Array, size: int) -> None:
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise IndexError(f"gather: indices out of range for a dimension of size {size}")


@op("gather")
def gather(
    ctx: OpContext,
    x: Array,
    indices: Array,
    axis: Array | int = 0,
    batch_dims: Array | int = 0,
    validate_indices: Array | bool = False,
) -> Array:
    """np.take with leading batch dims. Negative indices count from the end (the iOS16 rule; iOS17
    leaves them undefined, so this is one valid behaviour); out-of-range ones raise IndexError."""
    a = _axis(axis, x.ndim)
    b = int(batch_dims)
    idx = np.asarray(indices).astype(np.intp, copy=False)
    _check_indices(idx, x.shape[a])
    ctx.check_size(x.shape[:a] + idx.shape[b:] + x.shape[a + 1 :], "the gathered result")
    if b == 0:
        return np.take(x, idx, axis=a)
    batch = x.shape[:b]
    xs = x.reshape((-1,) + x.shape[b:])
    ids = idx.reshape((-1,) + idx.shape[b:])
    out = np.stack([np.take(xp, ip, axis=a - b) for xp, ip in zip(xs, ids)])
    return out.reshape(batch + out.shape[1:])


@op("gather_along_axis")
def gather_along_axis(
    ctx: OpContext, x: Array, indices: Array, axis: Array | int = 0, validate_indices: Array | bool = False
) -> Array:
    a = _axis(axis, x.ndim)
    idx = np.asarray(indices).astype(np.intp, copy=False)
    _check_indices(idx, x.shape[a])
    return np.take_along_axis(x, np.where(idx < 0, idx + x.shape[a], idx), axis=a)


@op("select")
def select(ctx: OpContext, cond: Array, a: Array, b: Array) -> Array:
    if not ctx.sizes_checked:
        ctx.check_size(np.broadcast_shapes(np.shape(cond), a.shape, b.shape), "the selected result")
    return np.where(cond, a, b)


# -- reductions (mil-text.md §3.8) --------------------------------------------------------------


def _red_axes(x: Array, axes: Array | None) -> tuple[int, ...] | None:
    """None (the default) reduces every axis."""
    return None if axes is None else tuple(_axis(a, x.ndim) for a in _ints(axes))


def _log_sum_exp(x: Array, axis: tuple[int, ...] | None, keepdims: bool) -> Array:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)  # all -inf (or an inf) along the axes: no shift
    s = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return s if keepdims else np.squeeze(s, axis=axis)


_REDUCTIONS: dict[str, Callable[[Array, tuple[int, ...] | None, bool], Array]] = {
    "reduce_sum": lambda x, a, k: np.sum(x, axis=a, keepdims=k),
    "reduce_mean": lambda x, a, k: np.mean(x, axis=a, keepdims=k),
    # np.max / np.min are these ufunc reductions behind a Python wrapper
    "reduce_max": lambda x, a, k: np.maximum.reduce(x, axis=a, keepdims=k),
    "reduce_min": lambda x, a, k: np.minimum.reduce(x, axis=a, keepdims=k),
    "reduce_prod": lambda x, a, k: np.prod(x, axis=a, keepdims=k),
    "reduce_sum_square": lambda x, a, k: np.sum(x * x, axis=a, keepdims=k),
    "reduce_l1_norm": lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k),
    "reduce_l2_norm": lambda x, a, k: np.sqrt(np.sum(x * x, axis=a, keepdims=k)),
    "reduce_log_sum": lambda x, a, k: np.log(np.sum(x, axis=a, keepdims=k)),
    "reduce_log_sum_exp": _log_sum_exp,
}


def _register_reduction(name: str, fn: Callable[[Array, tuple[int, ...] | None, bool], Array]) -> None:
    def impl(ctx: OpContext, x: Array, axes: Array | None = None, keep_dims: Array | bool = False) -> Array:
        return fn(ctx.num(x), _red_axes(x, axes), bool(keep_dims))

    impl.__name__ = impl.__qualname__ = name
    op(name)(impl)

    def prepared(ctx: OpContext, axes: Array | None = None, keep_dims: Array | bool = False):
        keep = bool(keep_dims)
        axes_of: dict[int, tuple[int, ...] | None] = {}

        def run(x: Array) -> Array:
            if x.ndim not in axes_of:
                axes_of[x.ndim] = _red_axes(x, axes)
            return fn(ctx.num(x), axes_of[x.ndim], keep)

        return run

    prepare(name)(prepared)


for _name, _fn in _REDUCTIONS.items():
    _register_reduction(_name, _fn)


def _register_arg_reduction(name: str, fn, what: str) -> None:
    def impl(
        ctx: OpContext,
        x: Array,
        axis: Array | int = -1,
        keep_dims: Array | bool = False,
        output_dtype: str = "int32",
    ) -> Array:
        return fn(x, axis=_axis(axis, x.ndim), keepdims=bool(keep_dims))

    impl.__doc__ = f"Index of the first {what} along `axis` (ties: the lowest index)."
    op(name)(impl)


_register_arg_reduction("reduce_argmax", np.argmax, "maximum")
_register_arg_reduction("reduce_argmin", np.argmin, "minimum")


# -- topk (mil-text.md §3.14) -------------------------------------------------------------------


@op("topk")
def topk(
    ctx: OpContext,
    x: Array,
    k: Array | int = 1,
    axis: Array | int = -1,
    ascending: Array | bool = False,
    sort: Array | bool = True,
    return_indices: Array | bool = True,
    output_indices_dtype: str = "int32",
) -> Array | tuple[Array, Array]:
    """The k largest (smallest if ascending) along `axis`, sorted, ties broken by the lower index;
    k = -1 takes the whole axis (iOS17). Returns (values, indices), or values alone."""
    a = _axis(axis, x.ndim)
    n = x.shape[a] if int(k) == -1 else int(k)
    key = x.astype(np.float64 if x.dtype.kind == "f" else np.int64)
    order = np.argsort(key if bool(ascending) else -key, axis=a, kind="stable")
    idx = np.take(order, np.arange(n), axis=a)
    values = np.take_along_axis(x, idx, axis=a)
    return (values, idx) if bool(return_indices) else values
