"""Reference semantics: elementwise ops (binary arithmetic, comparisons, logic, unary math, activations).

Float operands are computed in the numerics' compute dtype (`ctx.f`); integer and bool operands are
left as they are, so integer arithmetic stays exact (no float round trip). The interpreter rounds
every result to its declared dtype, so nothing here rounds to fp16.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..registry import FRESH_RESULT, OpContext, op

Array = np.ndarray


def _is_int(*arrays: Array) -> bool:
    return all(a.dtype.kind in "iu" for a in arrays)


# -- binary arithmetic (mil-text.md §3.2) ---------------------------------------------------------


def _real_div(x: Array, y: Array) -> Array:
    if _is_int(x, y):
        # mil-text.md §3.2: int32 real_div keeps int32; we truncate toward zero, exactly.
        q = np.floor_divide(x, y)
        return q + ((np.mod(x, y) != 0) & ((x < 0) != (y < 0)))
    return x / y


def _pow(x: Array, y: Array) -> Array:
    if _is_int(x, y):
        neg = y < 0
        r = np.power(x, np.where(neg, 0, y).astype(y.dtype))
        # x ** -k is 1/x**k truncated toward zero: 0 unless |x| == 1.
        inv = np.where(x == 1, 1, np.where(x == -1, np.where(y % 2 == 0, 1, -1), 0))
        return np.where(neg, inv, r)
    return np.power(x, y)


_BINARY: dict[str, Callable[[Array, Array], Array]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": _real_div,
    # floor(x / y) with Python's conventions, as coremltools' value inference (operator.floordiv)
    "floor_div": np.floor_divide,
    "mod": np.mod,  # Python sign convention: the result takes the sign of y
    "maximum": np.maximum,
    "minimum": np.minimum,
    "pow": _pow,
}

_COMPARE: dict[str, Callable[[Array, Array], Array]] = {
    "equal": np.equal,
    "not_equal": np.not_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}


def _check_broadcast(ctx: OpContext, x: Array, y: Array) -> None:
    """Operands of different shapes (flexible dims) may broadcast to a huge result: refuse it first."""
    ctx.check_size(np.broadcast_shapes(x.shape, y.shape), "the broadcast result")


def _register_binary(name: str, fn: Callable[[Array, Array], Array]) -> None:
    def impl(ctx: OpContext, x: Array, y: Array) -> Array:
        if x.shape != y.shape and not ctx.sizes_checked:
            _check_broadcast(ctx, x, y)
        fl = ctx.numerics.float
        if x.dtype.type is fl and y.dtype.type is fl:  # already compute-dtype arrays (the usual case)
            return fn(x, y)
        return fn(ctx.num(x), ctx.num(y))

    impl.__name__ = impl.__qualname__ = name
    op(name)(impl)


def _register_compare(name: str, fn: Callable[[Array, Array], Array]) -> None:
    # Comparing fp16 with fp32 (or fp64) is exact after NumPy's promotion: no conversion needed.
    def impl(ctx: OpContext, x: Array, y: Array) -> Array:
        if x.shape != y.shape and not ctx.sizes_checked:
            _check_broadcast(ctx, x, y)
        return fn(x, y)

    impl.__name__ = impl.__qualname__ = name
    op(name)(impl)


for _name, _fn in _BINARY.items():
    _register_binary(_name, _fn)
for _name, _fn in _COMPARE.items():
    _register_compare(_name, _fn)


@op("logical_not")
def logical_not(ctx: OpContext, x: Array) -> Array:
    return np.logical_not(x)


# -- erf, erfc: NumPy has none, so build them from the standard library's ---------------------------


def _cheb_fit(fn: Callable[[float], float], to_x: Callable[[np.ndarray], np.ndarray], deg: int) -> np.ndarray:
    """Power-series coefficients (in t on [-1, 1], lowest first) of the Chebyshev interpolant of
    `fn(to_x(t))`, fitted once at import. These two are well conditioned: sum |c| stays ~ max |f|."""
    cheb = np.polynomial.chebyshev
    return cheb.cheb2poly(cheb.chebinterpolate(lambda t: np.array([fn(v) for v in to_x(t)]), deg))


def _horner(t: Array, coef: np.ndarray) -> Array:
    """Polynomial in t, evaluated in place (no temporaries: this is the hot loop of erf)."""
    y = np.full_like(t, coef[-1])
    for c in coef[-2::-1]:
        y *= t
        y += c
    return y


def _erfcx(x: float) -> float:
    """erfc(x) * exp(x^2) for x >= 2 (past 26, where exp overflows, its asymptotic series)."""
    if x < 26.0:
        return math.erfc(x) * math.exp(x * x)
    s, term = 1.0, 1.0
    for n in range(1, 9):
        term *= -(2 * n - 1) / (2 * x * x)
        s += term
    return s / (x * math.sqrt(math.pi))


# |x| <= 2: erf(x) = x * A(t), x^2 = 2(t + 1). x >= 2: erfc(x) = exp(-x^2) * B(t), 1/x = (t + 1) / 4,
# B being erfcx, smooth in 1/x all the way to x = inf. Relative error: erf < 1e-14 everywhere, erfc
# < 1e-12 (its worst case is 1 - erf just below x = 2).
_ERF_A = _cheb_fit(lambda v: math.erf(v) / v, lambda t: np.sqrt(2.0 * (t + 1.0)), 20)
_ERFC_B = _cheb_fit(_erfcx, lambda t: 4.0 / (t + 1.0), 20)


def _erf_parts(ax: Array) -> tuple[Array, Array]:
    """For |x| = ax (float64): erf(ax) where ax <= 2, and erfc(ax) where ax > 2."""
    small = ax * _horner(np.minimum(ax * ax * 0.5 - 1.0, 1.0), _ERF_A)
    tail = np.exp(-ax * ax) * _horner(4.0 / np.maximum(ax, 2.0) - 1.0, _ERFC_B)
    return small, tail


def erf(x: Array) -> Array:
    """Vectorized erf (within 1e-14 relative of `math.erf`), returned in x's float dtype."""
    x64 = x.astype(np.float64)
    ax = np.abs(x64)
    small, tail = _erf_parts(ax)
    return np.copysign(np.where(ax <= 2.0, small, 1.0 - tail), x64).astype(x.dtype, copy=False)


def erfc(x: Array) -> Array:
    """Vectorized 1 - erf(x), accurate in the far tail too (no cancellation for large x)."""
    x64 = x.astype(np.float64)
    ax = np.abs(x64)
    small, tail = _erf_parts(ax)
    r = np.where(x64 > 2.0, tail, 1.0 - np.copysign(np.where(ax <= 2.0, small, 1.0 - tail), x64))
    return r.astype(x.dtype, copy=False)


# -- unary math (mil-text.md §3.3) ---------------------------------------------------------------


def _sigmoid(x: Array) -> Array:
    """1 / (1 + e) for x >= 0 and e / (1 + e) below, e = exp(-|x|): stable for both signs (exp never
    sees a positive argument). Computed in place in two new arrays, the numerator chosen before the
    one division (the same operations on the same values as computing both quotients and choosing,
    so the same bits): max(e, x >= 0) is 1 where x >= 0 (e <= 1 there) and e elsewhere (NaN stays
    NaN); a masked copy or `np.where` costs 7-10 ns per element on random signs, the maximum 0.35."""
    e = np.abs(x)
    np.negative(e, out=e)
    np.exp(e, out=e)
    d = np.add(e, 1.0)
    np.maximum(e, x >= 0, out=e)
    np.divide(e, d, out=d)
    return d


_UNARY_FLOAT: dict[str, Callable[[Array], Array]] = {
    "sqrt": np.sqrt,
    "exp": np.exp,
    "tanh": np.tanh,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "atanh": np.arctanh,
    "erf": erf,
    "floor": np.floor,
    "ceil": np.ceil,
    "round": np.rint,  # mil-text.md §3.3: np.round, i.e. half to even
    # activations (mil-text.md §3.4)
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.minimum(np.maximum(x, 0), 6),
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    "softplus": lambda x: np.logaddexp(0, x),  # log(1 + e^x) without overflow
    "softsign": lambda x: x / (1 + np.abs(x)),
}


def _exp2(x: Array) -> Array:
    if _is_int(x):
        # 2 ** -k truncates to 0 for integer x.
        return np.where(x < 0, 0, np.power(x.dtype.type(2), np.maximum(x, 0)))
    return np.exp2(x)


# These also accept int32 and then stay in integers (mil-text.md §3.3).
_UNARY_INT: dict[str, Callable[[Array], Array]] = {
    "abs": np.abs,
    "sign": np.sign,
    "square": lambda x: x * x,
    "exp2": _exp2,
}


def _register_unary(name: str, fn: Callable[[Array], Array], ints: bool) -> None:
    if ints:

        def impl(ctx: OpContext, x: Array) -> Array:
            return fn(ctx.num(x))

    else:

        def impl(ctx: OpContext, x: Array) -> Array:
            return fn(ctx.f(x))

    impl.__name__ = impl.__qualname__ = name
    op(name)(impl)


for _name, _fn in _UNARY_FLOAT.items():
    _register_unary(_name, _fn, ints=False)
for _name, _fn in _UNARY_INT.items():
    _register_unary(_name, _fn, ints=True)


# -- unary with epsilon: y = f(x + epsilon) (mil-text.md §3.3, defaults from coremltools) ----------


@op("rsqrt")
def rsqrt(ctx: OpContext, x: Array, epsilon: Array | float = 1e-12) -> Array:
    return 1.0 / np.sqrt(ctx.f(x) + ctx.f(epsilon))


@op("inverse")
def inverse(ctx: OpContext, x: Array, epsilon: Array | float = 1e-4) -> Array:
    return 1.0 / (ctx.f(x) + ctx.f(epsilon))


@op("log")
def log(ctx: OpContext, x: Array, epsilon: Array | float = 1e-45) -> Array:
    # An fp16 epsilon of 1e-45 is 0 (mil-text.md §3.3); it arrives already rounded as the program says.
    return np.log(ctx.f(x) + ctx.f(epsilon))


# -- activations with parameters (mil-text.md §3.4) ----------------------------------------------

_GELU_TANH_C = math.sqrt(2.0 / math.pi)


@op("gelu")
def gelu(ctx: OpContext, x: Array, mode: str = "EXACT") -> Array:
    x = ctx.f(x)
    if mode == "EXACT":
        # 0.5 x (1 + erf(x / sqrt 2)), written with erfc so the negative tail keeps its precision.
        return 0.5 * x * erfc(x * (-1.0 / math.sqrt(2.0)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(_GELU_TANH_C * (x + 0.044715 * x * x * x)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(1.702 * x)
    raise ValueError(f"gelu mode must be EXACT, TANH_APPROXIMATION or SIGMOID_APPROXIMATION, not {mode!r}")


@op("leaky_relu")
def leaky_relu(ctx: OpContext, x: Array, alpha: Array) -> Array:
    x = ctx.f(x)
    return np.where(x >= 0, x, ctx.f(alpha) * x)


@op("elu")
def elu(ctx: OpContext, x: Array, alpha: Array) -> Array:
    x = ctx.f(x)
    return np.where(x > 0, x, ctx.f(alpha) * np.expm1(np.minimum(x, 0)))


@op("prelu")
def prelu(ctx: OpContext, x: Array, alpha: Array) -> Array:
    """Per-channel leaky relu; `alpha` runs along axis 1."""
    x = ctx.f(x)
    a = ctx.f(alpha).reshape((-1,) + (1,) * (x.ndim - 2))
    return np.where(x >= 0, x, a * x)


@op("threshold")
def threshold(ctx: OpContext, x: Array, alpha: Array) -> Array:
    return np.maximum(ctx.f(x), ctx.f(alpha))


@op("clip")
def clip(ctx: OpContext, x: Array, alpha: Array, beta: Array) -> Array:
    return np.minimum(np.maximum(ctx.f(x), ctx.f(alpha)), ctx.f(beta))


@op("sigmoid_hard")
def sigmoid_hard(ctx: OpContext, x: Array, alpha: Array, beta: Array) -> Array:
    return np.minimum(np.maximum(ctx.f(alpha) * ctx.f(x) + ctx.f(beta), 0), 1)


@op("scaled_tanh")
def scaled_tanh(ctx: OpContext, x: Array, alpha: Array, beta: Array) -> Array:
    return ctx.f(alpha) * np.tanh(ctx.f(beta) * ctx.f(x))


@op("linear_activation")
def linear_activation(ctx: OpContext, x: Array, alpha: Array, beta: Array) -> Array:
    return ctx.f(alpha) * ctx.f(x) + ctx.f(beta)


@op("clamped_relu")
def clamped_relu(ctx: OpContext, x: Array, alpha: Array, beta: Array) -> Array:
    """min(beta, x) for x >= 0, min(beta, alpha * x) below (coremltools' clamped_relu spec)."""
    x = ctx.f(x)
    return np.minimum(np.where(x >= 0, x, ctx.f(alpha) * x), ctx.f(beta))


# Every float result above is a new array from NumPy ufuncs: the interpreter may round it in place.
FRESH_RESULT.update(_BINARY, _UNARY_FLOAT, _UNARY_INT)
FRESH_RESULT.update(
    ("rsqrt", "inverse", "log", "gelu", "leaky_relu", "elu", "prelu", "threshold", "clip", "sigmoid_hard")
)
FRESH_RESULT.update(("scaled_tanh", "linear_activation", "clamped_relu"))
