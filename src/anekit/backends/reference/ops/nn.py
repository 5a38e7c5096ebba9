"""Reference semantics: nn ops (conv, matmul, linear, softmax, normalizations, attention).

Every product runs on compute-dtype operands (`ctx.f`), so under "ane" numerics matmul and conv
accumulate in fp32 and are rounded to fp16 once, by the interpreter, as the engine's wider
accumulator does (mil-text.md §3.0 #8, §5 #1).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..registry import FRESH_RESULT, OpContext, op, prepare

Array = np.ndarray


def _ints(a: Array | None, n: int, default: int) -> list[int]:
    return [default] * n if a is None else np.asarray(a).ravel().tolist()


# -- conv (mil-text.md §3.7) ---------------------------------------------------------------------


def conv_pads(
    pad_type: str,
    pad: Array | None,
    in_sizes: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: list[int],
    dilations: list[int],
) -> list[tuple[int, int]]:
    """(before, after) padding of each spatial dim."""
    n = len(kernel)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        p = _ints(pad, 2 * n, 0)
        return [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    if pad_type in ("same", "same_lower"):
        pads = []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
            dk = (k - 1) * d + 1
            total = max(0, s * math.ceil(size / s) - size + dk - s)
            small, big = total // 2, total - total // 2
            # mil-text.md §3.7: `same` puts the odd extra pad AFTER (bottom/right heavy, as
            # coremltools' NN backend maps it); `same_lower` puts it before.
            pads.append((small, big) if pad_type == "same" else (big, small))
        return pads
    raise ValueError(f"conv pad_type must be valid, same, same_lower or custom, not {pad_type!r}")


def _conv_general(x: Array, w: Array, strides: list[int], dilations: list[int], groups: int) -> Array:
    """Cross-correlation of an already padded x: windows by stride tricks, one contraction."""
    n, c = x.shape[:2]
    nsp = x.ndim - 2
    cout, kernel = w.shape[0], w.shape[2:]
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    win = sliding_window_view(x, span, axis=tuple(range(2, 2 + nsp)))  # [N, C, *positions, *span]
    pick = tuple(slice(None, None, s) for s in strides) + tuple(slice(None, None, d) for d in dilations)
    win = win[(slice(None), slice(None)) + pick]  # [N, C, *out, *kernel]
    out = win.shape[2 : 2 + nsp]
    if groups == 1:
        k_axes = list(range(2 + nsp, 2 + 2 * nsp))
        y = np.tensordot(win, w, axes=([1, *k_axes], [1, *range(2, 2 + nsp)]))  # [N, *out, Cout]
        return np.moveaxis(y, -1, 1)
    o_ix = "".join(chr(ord("p") + i) for i in range(nsp))
    k_ix = "".join(chr(ord("u") + i) for i in range(nsp))
    wg = w.reshape((groups, cout // groups) + w.shape[1:])
    xg = win.reshape((n, groups, c // groups) + win.shape[2:])
    y = np.einsum(f"ngc{o_ix}{k_ix},gdc{k_ix}->ngd{o_ix}", xg, wg, optimize=True)
    return y.reshape((n, cout) + out)


@op("conv")
def conv(
    ctx: OpContext,
    x: Array,
    weight: Array,
    bias: Array | None = None,
    strides: Array | None = None,
    pad_type: str = "valid",
    pad: Array | None = None,
    dilations: Array | None = None,
    groups: Array | int = 1,
) -> Array:
    """N-D (1-3 spatial dims) grouped cross-correlation, weight [Cout, Cin/groups, *K]."""
    w = ctx.f(weight)
    kernel = w.shape[2:]
    nsp = len(kernel)
    s = _ints(strides, nsp, 1)
    g = int(groups)
    if (
        g == 1
        and kernel == (1,) * nsp
        and s == [1] * nsp
        and not (pad_type == "custom" and pad is not None and np.any(pad))
    ):
        # 1x1, stride 1, no padding (any pad_type gives 0 here), one group: a single GEMM,
        # W[Cout, Cin] @ X[N, Cin, H*W] (mil-text.md §3.7, maderix "linear as 1x1 conv").
        n, c = x.shape[:2]
        y = np.matmul(w.reshape(w.shape[:2]), ctx.f(x).reshape(n, c, -1))  # w[:, :, 0, 0], a view
        if bias is not None:
            y += ctx.f(bias)[:, None]
        return y.reshape((n, w.shape[0]) + x.shape[2:])
    d = _ints(dilations, nsp, 1)
    xf = ctx.f(x)
    pads = conv_pads(pad_type, pad, xf.shape[2:], kernel, s, d)
    if not ctx.sizes_checked:  # flexible dims: the padded input and the output could be huge
        padded = [n + a + b for n, (a, b) in zip(xf.shape[2:], pads)]
        ctx.check_size(xf.shape[:2] + tuple(padded), "the padded conv input")
        ctx.check_size((xf.shape[0], w.shape[0], *padded), "the conv result")
    if any(p for pair in pads for p in pair):
        xf = np.pad(xf, [(0, 0), (0, 0), *pads])
    y = _conv_general(xf, w, s, d, g)
    if bias is not None:
        y = y + ctx.f(bias).reshape((-1,) + (1,) * nsp)
    return y


@prepare("conv")
def _prepare_conv(
    ctx: OpContext,
    weight: Array,
    bias: Array | None = None,
    strides: Array | None = None,
    pad_type: str = "valid",
    pad: Array | None = None,
    dilations: Array | None = None,
    groups: Array | int = 1,
):
    """A constant-weight 1x1 conv (the decoder's linear layers): `conv`'s single-GEMM path with the
    weight's 2-D view and the bias column made once. Other convs keep the implementation."""
    w = ctx.f(weight)
    kernel = w.shape[2:]
    nsp = len(kernel)
    if not (
        int(groups) == 1
        and kernel == (1,) * nsp
        and _ints(strides, nsp, 1) == [1] * nsp
        and not (pad_type == "custom" and pad is not None and np.any(pad))
    ):
        return None
    w2 = w.reshape(w.shape[:2])
    b = None if bias is None else ctx.f(bias)[:, None]
    cout = w.shape[0]

    def run(x: Array) -> Array:
        n, c = x.shape[:2]
        y = np.matmul(w2, ctx.f(x).reshape(n, c, -1))
        if b is not None:
            y += b
        return y.reshape((n, cout) + x.shape[2:])

    return run


# -- matmul, linear (mil-text.md §3.5, §3.6) -----------------------------------------------------


def _operands(ctx: OpContext, x: Array, y: Array) -> tuple[Array, Array]:
    """Both in the compute float dtype, or both left as integers when both are integers."""
    a, b = ctx.num(x), ctx.num(y)
    if (a.dtype.kind == "f") != (b.dtype.kind == "f"):  # iOS17: a const operand may differ in dtype
        a, b = ctx.f(a), ctx.f(b)
    return a, b


@op("matmul")
def matmul(
    ctx: OpContext, x: Array, y: Array, transpose_x: Array | bool = False, transpose_y: Array | bool = False
) -> Array:
    """NumPy matmul after swapping the last two axes of each flagged input: batch dims
    broadcast, a rank-1 x is [1, K] and a rank-1 y is [K, 1], the inserted dim removed."""
    a, b = _operands(ctx, x, y)
    for name, t, flag in (("x", a, transpose_x), ("y", b, transpose_y)):
        if bool(flag) and t.ndim < 2:
            raise ValueError(f"matmul: transpose_{name} is set on a rank-1 {name} (mil-text.md §3.5)")
    if bool(transpose_x):
        a = np.swapaxes(a, -1, -2)
    if bool(transpose_y):
        b = np.swapaxes(b, -1, -2)
    if not ctx.sizes_checked and a.ndim >= 2 and b.ndim >= 2:  # flexible batch dims may broadcast
        ctx.check_size(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]))
    return np.matmul(a, b)


@op("linear")
def linear(ctx: OpContext, x: Array, weight: Array, bias: Array | None = None) -> Array:
    """x @ weight.T + bias, weight [Dout, Din]."""
    a, w = _operands(ctx, x, weight)
    y = np.matmul(a, w.T)
    if bias is not None:
        y = y + ctx.num(bias)
    return y


# -- softmax (mil-text.md §3.4) ------------------------------------------------------------------


def _softmax(x: Array, axis: int) -> Array:
    """exp(x - max) / sum(exp(x - max)) along `axis`; x itself is not written.

    The max is taken with `np.fmax.reduce` (NaN-ignoring, ~1.0 ns per element on rows of 64 where
    `np.maximum.reduce` takes ~1.65): without NaNs the two are equal (up to the sign of a zero
    maximum, which changes no x - max but -0 - 0 vs -0 + 0, both exp'd to 1), so the result is the
    same; a row holding a NaN sums to NaN, and then the whole softmax is recomputed with
    `np.maximum.reduce` so that NaNs come out exactly as before."""
    e = np.subtract(x, np.fmax.reduce(x, axis=axis, keepdims=True))
    np.exp(e, out=e)
    total = np.sum(e, axis=axis, keepdims=True)
    if np.isnan(total).any():  # a NaN in x (or an all -inf row, NaN either way): the plain max
        e = np.subtract(x, np.maximum.reduce(x, axis=axis, keepdims=True))
        np.exp(e, out=e)
        total = np.sum(e, axis=axis, keepdims=True)
    e /= total
    return e


@op("softmax")
def softmax(ctx: OpContext, x: Array, axis: Array | int = -1) -> Array:
    return _softmax(ctx.f(x), int(axis))


# -- normalization (mil-text.md §3.10) -----------------------------------------------------------


def _normalize(x: Array, axes: tuple[int, ...], eps: Array) -> Array:
    """(x - mean) / sqrt(var + eps) with the biased variance over `axes`."""
    d = x - np.mean(x, axis=axes, keepdims=True)
    var = np.mean(d * d, axis=axes, keepdims=True)
    d /= np.sqrt(var + eps)
    return d


def _affine(
    y: Array, gamma: Array | None, beta: Array | None, shape: tuple[int, ...], ctx: OpContext
) -> Array:
    if gamma is not None:
        y *= ctx.f(gamma).reshape(shape)
    if beta is not None:
        y += ctx.f(beta).reshape(shape)
    return y


@op("layer_norm")
def layer_norm(
    ctx: OpContext,
    x: Array,
    axes: Array | None = None,
    gamma: Array | None = None,
    beta: Array | None = None,
    epsilon: Array | float = 1e-5,
) -> Array:
    """Normalize over `axes` (default all); gamma/beta have x's dims at the axes, in axis order."""
    xf = ctx.f(x)
    ax = (
        tuple(range(x.ndim))
        if axes is None
        else tuple(sorted({int(a) % x.ndim for a in np.reshape(axes, -1)}))
    )
    shape = tuple(d if i in ax else 1 for i, d in enumerate(x.shape))
    return _affine(_normalize(xf, ax, ctx.f(epsilon)), gamma, beta, shape, ctx)


def _channel_shape(x: Array) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


@op("batch_norm")
def batch_norm(
    ctx: OpContext,
    x: Array,
    mean: Array,
    variance: Array,
    gamma: Array | None = None,
    beta: Array | None = None,
    epsilon: Array | float = 1e-5,
) -> Array:
    """Per channel (axis 1) with the given statistics."""
    shape = _channel_shape(x)
    scale = 1.0 / np.sqrt(ctx.f(variance).reshape(shape) + ctx.f(epsilon))
    y = (ctx.f(x) - ctx.f(mean).reshape(shape)) * scale
    return _affine(y, gamma, beta, shape, ctx)


@op("instance_norm")
def instance_norm(
    ctx: OpContext,
    x: Array,
    gamma: Array | None = None,
    beta: Array | None = None,
    epsilon: Array | float = 1e-5,
) -> Array:
    """For each (n, c), normalize over the spatial dims, then the per-channel affine."""
    y = _normalize(ctx.f(x), tuple(range(2, x.ndim)), ctx.f(epsilon))
    return _affine(y, gamma, beta, _channel_shape(x), ctx)


@op("l2_norm")
def l2_norm(ctx: OpContext, x: Array, epsilon: Array | float = 1e-6) -> Array:
    """x / sqrt(sum(x^2) + eps) over the last 3 dims; leading dims are batch."""
    xf = ctx.f(x)
    axes = tuple(range(max(0, x.ndim - 3), x.ndim))
    return xf / np.sqrt(np.sum(xf * xf, axis=axes, keepdims=True) + ctx.f(epsilon))


# -- attention (mil-text.md §3.11) ---------------------------------------------------------------


@op("scaled_dot_product_attention")
def scaled_dot_product_attention(
    ctx: OpContext, query: Array, key: Array, value: Array, attn_mask: Array | None = None
) -> Array:
    """softmax(Q K^T / sqrt(E) + mask) V. A bool mask: True attends, False is -inf; a float mask is
    added. With `ctx.ignore_sdpa_mask` the mask is dropped, as the engine reportedly does (§5 #7)."""
    q, k, v = ctx.f(query), ctx.f(key), ctx.f(value)
    if not ctx.sizes_checked:  # the scores are [..., L_q, L_k]: flexible lengths could make it huge
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
        ctx.check_size(batch + (q.shape[-2], k.shape[-2]), "the attention scores")
    s = np.matmul(q, np.swapaxes(k, -1, -2))
    s /= math.sqrt(q.shape[-1])
    if attn_mask is not None and not ctx.ignore_sdpa_mask:
        if attn_mask.dtype == np.bool_:
            s = np.where(attn_mask, s, -np.inf)
        else:
            s = s + ctx.f(attn_mask)
    return np.matmul(_softmax(s, -1), v)


# Results built by matmul / ufuncs into new arrays (conv's may be a view of its own new product):
# the interpreter may round them in place.
FRESH_RESULT.update(("conv", "matmul", "linear", "softmax", "layer_norm", "batch_norm", "instance_norm"))
FRESH_RESULT.update(("l2_norm", "scaled_dot_product_attention"))
