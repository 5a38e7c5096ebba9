"""Elementwise ops of the reference backend against float64 PyTorch / NumPy oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes
from oracle_helpers import close, rng, run1, t64

from anekit._coreml import mb
from anekit.backends.reference import NUMERICS, OPS, OpContext

SETTINGS = settings(max_examples=30, deadline=None)
SHAPES = mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=4, min_side=1, max_side=4)

# -- binary float ops, broadcasting -------------------------------------------------------------

FLOAT_BINARY = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "real_div": torch.div,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "pow": torch.pow,
    "floor_div": lambda a, b: torch.div(a, b, rounding_mode="floor"),
    "mod": torch.remainder,
}


@pytest.mark.parametrize("name", sorted(FLOAT_BINARY))
@SETTINGS
@given(shapes=SHAPES, seed=st.integers(0, 2**16))
def test_float_binary_broadcasts(name, shapes, seed):
    (sx, sy), _ = shapes
    r = rng(seed)
    x = r.standard_normal(sx) * 3
    y = r.choice([-1.0, 1.0], sy) * r.uniform(0.5, 2.0, sy)  # away from 0 for div/mod
    if name == "pow":
        x = np.abs(x) + 0.1
    x, y = x.astype(np.float32), y.astype(np.float32)
    got = run1(lambda x, y: getattr(mb, name)(x=x, y=y), {"x": x, "y": y})
    close(got, FLOAT_BINARY[name](t64(x), t64(y)))


@pytest.mark.parametrize("name", ["add", "sub", "mul", "real_div", "maximum", "minimum", "pow"])
def test_float_binary_with_scalar_const(name):
    x = (np.abs(rng(1).standard_normal((2, 3))) + 0.5).astype(np.float32)
    got = run1(lambda x: getattr(mb, name)(x=x, y=np.float32(1.5)), {"x": x})
    close(got, FLOAT_BINARY[name](t64(x), torch.tensor(1.5, dtype=torch.float64)))


# -- integer ops stay exact ----------------------------------------------------------------------


def _trunc_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(object), b.astype(object)
    q = np.vectorize(lambda p, d: abs(p) // abs(d) * (1 if (p >= 0) == (d >= 0) else -1))(a, b)
    return q.astype(np.int64)


INT_BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "floor_div": lambda a, b: a // b,  # Python floor semantics on int64
    "mod": lambda a, b: a % b,
    "real_div": _trunc_div,
    "maximum": np.maximum,
    "minimum": np.minimum,
}


@pytest.mark.parametrize("numerics", ["ane", "exact"])
@pytest.mark.parametrize("name", sorted(INT_BINARY))
@SETTINGS
@given(shapes=SHAPES, seed=st.integers(0, 2**16))
def test_int32_binary_is_exact(name, numerics, shapes, seed):
    (sx, sy), _ = shapes
    r = rng(seed)
    big = 2**15 if name == "mul" else 2**29  # beyond fp32's 24-bit integers, without int32 overflow
    x = r.integers(-big, big, sx).astype(np.int64)
    y = r.integers(-big, big, sy).astype(np.int64)
    y[y == 0] = 7
    x.flat[0] = 16777217 if name != "mul" else 32767  # 2**24 + 1: an fp32 round trip would lose it
    got = run1(lambda x, y: getattr(mb, name)(x=x, y=y), {"x": x, "y": y}, numerics=numerics)
    want = INT_BINARY[name](x, y)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_int32_pow():
    x = np.array([2, -3, 1, -1, -1, 5, 0, 7], np.int64)
    y = np.array([10, 3, -4, -3, -2, -1, 3, 0], np.int64)
    got = run1(lambda x, y: mb.pow(x=x, y=y), {"x": x, "y": y}, numerics="ane")
    np.testing.assert_array_equal(got, [1024, -27, 1, -1, 1, 0, 0, 1])


# -- comparisons and logic -----------------------------------------------------------------------

COMPARE = {
    "equal": torch.eq,
    "not_equal": torch.ne,
    "greater": torch.gt,
    "greater_equal": torch.ge,
    "less": torch.lt,
    "less_equal": torch.le,
}
LOGICAL = {"logical_and": torch.logical_and, "logical_or": torch.logical_or, "logical_xor": torch.logical_xor}


@pytest.mark.parametrize("name", sorted(COMPARE))
@settings(max_examples=15, deadline=None)
@given(shapes=SHAPES, seed=st.integers(0, 2**16), as_int=st.booleans())
def test_comparisons(name, shapes, seed, as_int):
    (sx, sy), _ = shapes
    r = rng(seed)
    x, y = r.integers(-2, 3, sx), r.integers(-2, 3, sy)  # small values: plenty of ties
    if not as_int:
        x, y = x * 0.5, y * 0.5
    got = run1(lambda x, y: getattr(mb, name)(x=x, y=y), {"x": x, "y": y})
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, COMPARE[name](t64(x), t64(y)).numpy())


@pytest.mark.parametrize("name", sorted(LOGICAL))
@settings(max_examples=15, deadline=None)
@given(shapes=SHAPES, seed=st.integers(0, 2**16))
def test_logical_binary(name, shapes, seed):
    (sx, sy), _ = shapes
    r = rng(seed)
    x, y = r.random(sx) < 0.5, r.random(sy) < 0.5
    got = run1(lambda x, y: getattr(mb, name)(x=x, y=y), {"x": x, "y": y})
    np.testing.assert_array_equal(got, LOGICAL[name](t64(x), t64(y)).numpy())


def test_logical_not():
    x = np.array([[True, False, True]])
    np.testing.assert_array_equal(run1(lambda x: mb.logical_not(x=x), {"x": x}), [[False, True, False]])


# -- unary math and activations ------------------------------------------------------------------

WIDE = np.concatenate([np.linspace(-9, 9, 37), [-800.0, -100.0, -30.0, 0.0, 30.0, 100.0, 800.0]])
UNIT = np.linspace(-0.95, 0.95, 21)
POS = np.concatenate([np.linspace(0.01, 20, 21), [1e-8, 1e4]])
HALVES = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, -3.7, 2.2, 0.0])

UNARY = {  # name: (oracle, inputs)
    "sqrt": (torch.sqrt, POS),
    "exp": (torch.exp, np.linspace(-20, 20, 41)),
    "exp2": (torch.exp2, np.linspace(-20, 20, 41)),
    "tanh": (torch.tanh, WIDE),
    "sin": (torch.sin, WIDE[:37]),
    "cos": (torch.cos, WIDE[:37]),
    "tan": (torch.tan, UNIT),
    "sinh": (torch.sinh, np.linspace(-5, 5, 21)),
    "cosh": (torch.cosh, np.linspace(-5, 5, 21)),
    "asin": (torch.asin, UNIT),
    "acos": (torch.acos, UNIT),
    "atan": (torch.atan, WIDE),
    "atanh": (torch.atanh, UNIT),
    "erf": (torch.erf, WIDE),
    "floor": (torch.floor, HALVES),
    "ceil": (torch.ceil, HALVES),
    "round": (torch.round, HALVES),  # half to even, as np.round
    "abs": (torch.abs, WIDE),
    "sign": (torch.sign, WIDE),
    "square": (torch.square, WIDE),
    "relu": (torch.relu, WIDE),
    "relu6": (F.relu6, WIDE),
    "sigmoid": (torch.sigmoid, WIDE),
    "silu": (F.silu, WIDE),
    "softplus": (F.softplus, WIDE),  # torch returns x past 20: within 1e-12 of log(1 + e^x)
    "softsign": (F.softsign, WIDE),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_float(name):
    oracle, values = UNARY[name]
    x = values.astype(np.float32).reshape(1, -1)
    got = run1(lambda x: getattr(mb, name)(x=x), {"x": x})
    close(got, oracle(t64(x)), rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("name", ["abs", "sign", "square", "exp2"])
def test_unary_int32_stays_integer(name):
    x = np.array([-(2**24) - 1, -5, -1, 0, 1, 3, 2**24 + 1], np.int64)
    if name == "square":
        x = np.array([-40000, -3, 0, 3, 46340], np.int64)
    if name == "exp2":
        x = np.array([-3, 0, 1, 10, 30], np.int64)
    want = {
        "abs": np.abs,
        "sign": np.sign,
        "square": lambda v: v * v,
        "exp2": lambda v: (2.0**v).astype(np.int64),
    }
    got = run1(lambda x: getattr(mb, name)(x=x), {"x": x}, numerics="ane")
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want[name](x))


def test_erf_against_math_erf():
    x = np.concatenate(
        [
            np.linspace(-7, 7, 2801),
            np.logspace(-300, 0.5, 200),
            -np.logspace(-300, 0.5, 200),
            [2.0, -2.0, 6.0, -6.0, np.inf, -np.inf],
        ]
    )
    got = run1(lambda x: mb.erf(x=x), {"x": x})  # "exact" numerics keep the float64 data
    want = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(got, want, rtol=5e-14, atol=0)
    nan = run1(lambda x: mb.erf(x=x), {"x": np.array([np.nan, 1.0])})
    assert np.isnan(nan[0])


# -- ops with epsilon -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,eps,oracle",
    [
        ("rsqrt", 1e-12, lambda x, e: 1 / np.sqrt(x + e)),
        ("inverse", 1e-4, lambda x, e: 1 / (x + e)),
        ("log", 1e-45, lambda x, e: np.log(x + e)),
    ],
)
def test_epsilon_defaults_and_explicit(name, eps, oracle):
    x = np.array([[0.25, 1.0, 3.0, 1e-3, 0.0]], np.float32)
    with np.errstate(divide="ignore"):
        eps32 = np.float64(np.float32(eps))  # the builder materializes the default as an fp32 const
        close(run1(lambda x: getattr(mb, name)(x=x), {"x": x}), oracle(x.astype(np.float64), eps32))
        got = run1(lambda x: getattr(mb, name)(x=x, epsilon=np.float32(0.5)), {"x": x})
        close(got, oracle(x.astype(np.float64), 0.5))


def test_log_default_epsilon_underflows_in_fp16():
    # mil-text.md §3.3: 1e-45 is 0 in fp16, so log(0) of an fp16 program is -inf.
    x = np.array([0.0, 1.0], np.float16)
    got = run1(lambda x: mb.log(x=x), {"x": x}, numerics="ane")
    assert got[0] == -np.inf and got[1] == 0


# -- activations with parameters -----------------------------------------------------------------


@pytest.mark.parametrize(
    "mode,oracle",
    [
        ("EXACT", lambda t: F.gelu(t)),
        ("TANH_APPROXIMATION", lambda t: F.gelu(t, approximate="tanh")),
        ("SIGMOID_APPROXIMATION", lambda t: t * torch.sigmoid(1.702 * t)),
    ],
)
def test_gelu_modes(mode, oracle):
    x = np.linspace(-8, 8, 65, dtype=np.float32).reshape(1, -1)
    got = run1(lambda x: mb.gelu(x=x, mode=mode), {"x": x})
    close(got, oracle(t64(x)), rtol=1e-9, atol=1e-12)


def test_gelu_default_mode_is_exact():
    x = np.linspace(-4, 4, 17, dtype=np.float32)
    close(run1(lambda x: mb.gelu(x=x), {"x": x}), F.gelu(t64(x)), rtol=1e-9, atol=1e-12)


def test_gelu_unknown_mode_raises():
    ctx = OpContext(NUMERICS["exact"], op=None)
    with pytest.raises(ValueError, match="gelu mode"):
        OPS["gelu"](ctx, x=np.ones(3), mode="ERF_FAST")


ALPHA_OPS = {
    "leaky_relu": (lambda t, a: F.leaky_relu(t, a), 0.1),
    "elu": (lambda t, a: F.elu(t, a), 0.7),
    "threshold": (lambda t, a: torch.clamp(t, min=a), 0.3),
}


@pytest.mark.parametrize("name", sorted(ALPHA_OPS))
def test_alpha_activations(name):
    oracle, alpha = ALPHA_OPS[name]
    x = WIDE.astype(np.float32).reshape(1, -1)
    got = run1(lambda x: getattr(mb, name)(x=x, alpha=np.float32(alpha)), {"x": x})
    close(got, oracle(t64(x), float(np.float32(alpha))), rtol=1e-9, atol=1e-300)


ALPHA_BETA_OPS = {
    "clip": (lambda t, a, b: torch.clamp(t, a, b), -0.5, 2.0),
    "sigmoid_hard": (lambda t, a, b: torch.clamp(a * t + b, 0, 1), 0.2, 0.5),
    "scaled_tanh": (lambda t, a, b: a * torch.tanh(b * t), 1.5, 0.5),
    "linear_activation": (lambda t, a, b: a * t + b, 2.0, -1.0),
}


@pytest.mark.parametrize("name", sorted(ALPHA_BETA_OPS))
def test_alpha_beta_activations(name):
    oracle, alpha, beta = ALPHA_BETA_OPS[name]
    x = WIDE.astype(np.float32).reshape(1, -1)
    got = run1(lambda x: getattr(mb, name)(x=x, alpha=np.float32(alpha), beta=np.float32(beta)), {"x": x})
    a32, b32 = float(np.float32(alpha)), float(np.float32(beta))  # the consts are fp32
    close(got, oracle(t64(x), a32, b32), rtol=1e-9, atol=1e-300)


def test_prelu_per_channel():
    x = rng(3).standard_normal((2, 3, 4, 5)).astype(np.float32)
    alpha = np.array([0.1, -0.5, 2.0], np.float32)
    got = run1(lambda x: mb.prelu(x=x, alpha=alpha), {"x": x})
    close(got, F.prelu(t64(x), t64(alpha)))
