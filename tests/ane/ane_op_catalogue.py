"""Small one-op programs, one per reference op, to compare the engine with the reference backend.

Each case is an fp16 program whose inputs and outputs keep the innermost dimension at 32 (or 64)
fp16 elements, so it is valid under the dense surface layout (ane-private-api.md §1.7) whether or
not the engine reports strides. Ops with non-float results are wrapped (select / cast) so the
program's outputs are fp16 or fp32 surfaces (§1.8). Used by test_ane_hardware.py (on a Mac) and
checked here on any machine by test_ane_op_catalogue.py (every case runs on the reference backend).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from anekit._coreml import Function, Program, ct, mb, types

X = (1, 8, 1, 32)


@dataclass(frozen=True)
class Case:
    op: str  #: the reference op under test
    fn: Callable  #: fn(**inputs) -> output var(s)
    inputs: dict[str, tuple[tuple[int, ...], float, float]]  #: name -> (shape, low, high)
    integers: bool = False  #: draw inputs from integers in [low, high] (for equality tests)
    tol: float = 2e-2  #: relative-to-magnitude tolerance for the engine comparison
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.op

    def program(self) -> Program:
        placeholders = {n: mb.TensorSpec(shape=s, dtype=types.fp16) for n, (s, _, _) in self.inputs.items()}
        with Function(placeholders, ct.target.iOS18) as func:
            out = self.fn(**func.inputs)
            func.set_outputs(list(out) if isinstance(out, (tuple, list)) else [out])
        prog = Program()
        prog.add_function("main", func)
        return prog

    def sample(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = {}
        for name, (shape, lo, hi) in self.inputs.items():
            if self.integers:
                out[name] = rng.integers(int(lo), int(hi) + 1, shape).astype(np.float16)
            else:
                out[name] = rng.uniform(lo, hi, shape).astype(np.float16)
        return out


def _x(lo=-2.0, hi=2.0, shape=X):
    return {"x": (shape, lo, hi)}


def _xy(lo=-2.0, hi=2.0, ylo=None, yhi=None, shape=X):
    return {"x": (shape, lo, hi), "y": (shape, lo if ylo is None else ylo, hi if yhi is None else yhi)}


def _f16(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float16)


CHANNEL = _f16(np.linspace(0.5, 1.5, 8))
EPS = _f16(1e-3)


_MASK = (np.arange(256).reshape(X) % 2).astype(types.np_uint1_dtype)


def _lut():
    idx = np.random.default_rng(6).integers(0, 16, X).astype(types.np_uint4_dtype)
    return mb.constexpr_lut_to_dense(indices=idx, lut=_f16(np.linspace(-1, 1, 16).reshape(1, 1, 1, 1, 16, 1)))


def _sparse():
    return mb.constexpr_sparse_to_dense(nonzero_data=_f16(np.linspace(-1, 1, 128)), mask=_MASK)


def _lut_sparse():
    idx = np.random.default_rng(7).integers(0, 4, 128).astype(types.np_uint2_dtype)
    lut = _f16(np.array([-1.0, -0.25, 0.5, 1.0]).reshape(1, 1, 1, 1, 4, 1))
    mask, data = mb.constexpr_lut_to_sparse(indices_mask=_MASK, indices_nonzero_data=idx, lut=lut)
    return mb.constexpr_sparse_to_dense(nonzero_data=data, mask=mask)


def _shift_sparse():
    data = np.random.default_rng(8).integers(-8, 8, 128).astype(np.int8)
    mask, vals = mb.constexpr_sparse_blockwise_shift_scale(
        data_mask=_MASK, nonzero_data=data, scale=_f16(np.full((1, 8, 1, 1), 0.125))
    )
    return mb.constexpr_sparse_to_dense(nonzero_data=vals, mask=mask)


def unary(op: str, lo=-2.0, hi=2.0, **kw) -> Case:
    return Case(op, lambda x: getattr(mb, op)(x=x, **kw), _x(lo, hi))


def binary(op: str, lo=-2.0, hi=2.0, ylo=None, yhi=None) -> Case:
    return Case(op, lambda x, y: getattr(mb, op)(x=x, y=y), _xy(lo, hi, ylo, yhi))


def compare(op: str) -> Case:
    return Case(
        op, lambda x, y: mb.select(cond=getattr(mb, op)(x=x, y=y), a=x, b=y), _xy(-1, 1), integers=True
    )


def logical(op: str) -> Case:
    def fn(x, y):
        a, b = mb.greater(x=x, y=_f16(0)), mb.greater(x=y, y=_f16(0))
        cond = mb.logical_not(x=a) if op == "logical_not" else getattr(mb, op)(x=a, y=b)
        return mb.select(cond=cond, a=x, b=y)

    return Case(op, fn, _xy())


def reduce(op: str, lo=-2.0, hi=2.0) -> Case:
    return Case(op, lambda x: getattr(mb, op)(x=x, axes=[1], keep_dims=True), _x(lo, hi))


def _sdpa(q, k, v):
    return mb.scaled_dot_product_attention(query=q, key=k, value=v)


def _split(x):
    return tuple(mb.split(x=x, num_splits=2, axis=1))


CASES: list[Case] = [
    # elementwise, one input
    *(unary(op) for op in ("abs", "ceil", "floor", "round", "sign", "square", "relu", "relu6", "sigmoid")),
    *(unary(op) for op in ("tanh", "softplus", "softsign", "silu", "erf", "identity")),
    unary("sigmoid_hard", alpha=_f16(0.2), beta=_f16(0.5)),
    unary("gelu", mode="EXACT"),
    unary("elu", alpha=_f16(0.5)),
    unary("leaky_relu", alpha=_f16(0.1)),
    unary("exp"),
    unary("exp2"),
    unary("sin"),
    unary("cos"),
    unary("tan", -1.0, 1.0),
    unary("sinh"),
    unary("cosh"),
    unary("atan"),
    unary("asin", -0.9, 0.9),
    unary("acos", -0.9, 0.9),
    unary("atanh", -0.9, 0.9),
    unary("log", 0.1, 4.0),
    unary("sqrt", 0.1, 4.0),
    unary("rsqrt", 0.1, 4.0),
    unary("inverse", 0.5, 4.0),
    unary("threshold", alpha=_f16(0.5)),
    unary("clip", alpha=_f16(-0.5), beta=_f16(0.5)),
    unary("scaled_tanh", alpha=_f16(1.5), beta=_f16(0.5)),
    unary("clamped_relu", alpha=_f16(0.1), beta=_f16(1.5)),
    unary("linear_activation", alpha=_f16(2.0), beta=_f16(0.5)),
    Case("prelu", lambda x: mb.prelu(x=x, alpha=_f16(np.linspace(0.05, 0.4, 8))), _x()),
    Case("cast", lambda x: mb.cast(x=x, dtype="fp32"), _x()),
    # elementwise, two inputs
    *(binary(op) for op in ("add", "sub", "mul", "maximum", "minimum")),
    binary("real_div", ylo=0.5, yhi=2.0),
    binary("pow", 0.5, 2.0, -1.0, 1.0),
    binary("floor_div", 0.0, 4.0, 0.5, 2.0),
    binary("mod", 0.0, 4.0, 0.5, 2.0),
    *(compare(op) for op in ("equal", "not_equal", "greater", "greater_equal", "less", "less_equal")),
    *(logical(op) for op in ("logical_and", "logical_or", "logical_xor", "logical_not")),
    Case("select", lambda x, y: mb.select(cond=mb.greater(x=x, y=y), a=x, b=mb.mul(x=y, y=_f16(2))), _xy()),
    # reductions over channels: output [1, 1, 1, 32]
    *(reduce(op) for op in ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_l1_norm")),
    reduce("reduce_l2_norm"),
    reduce("reduce_sum_square"),
    reduce("reduce_log_sum_exp"),
    reduce("reduce_prod", 0.5, 1.5),
    reduce("reduce_log_sum", 0.5, 2.0),
    Case(
        "reduce_argmax",
        lambda x: mb.cast(x=mb.reduce_argmax(x=x, axis=1, keep_dims=True), dtype="fp16"),
        _x(),
    ),
    Case(
        "reduce_argmin",
        lambda x: mb.cast(x=mb.reduce_argmin(x=x, axis=1, keep_dims=True), dtype="fp16"),
        _x(),
    ),
    # neural network
    Case(
        "conv",
        lambda x: mb.conv(x=x, weight=_f16(np.random.default_rng(1).standard_normal((16, 8, 1, 1)) / 3)),
        _x(),
    ),
    Case("matmul", lambda x, y: mb.matmul(x=x, y=y), _xy(-1, 1, shape=(1, 1, 32, 32))),
    Case(
        "linear",
        lambda x: mb.linear(
            x=x,
            weight=_f16(np.random.default_rng(2).standard_normal((32, 32)) / 6),
            bias=_f16(np.linspace(-1, 1, 32)),
        ),
        _x(-1, 1, shape=(8, 32)),
    ),
    Case("softmax", lambda x: mb.softmax(x=x, axis=1), _x()),
    Case(
        "layer_norm",
        lambda x: mb.layer_norm(
            x=x, axes=[-1], gamma=_f16(np.linspace(0.5, 1.5, 32)), beta=_f16(np.zeros(32)), epsilon=EPS
        ),
        _x(),
    ),
    Case(
        "batch_norm",
        lambda x: mb.batch_norm(
            x=x, mean=CHANNEL - 1, variance=CHANNEL, gamma=CHANNEL, beta=CHANNEL / 4, epsilon=EPS
        ),
        _x(),
    ),
    Case(
        "instance_norm", lambda x: mb.instance_norm(x=x, gamma=CHANNEL, beta=CHANNEL / 4, epsilon=EPS), _x()
    ),
    Case("l2_norm", lambda x: mb.l2_norm(x=x), _x()),
    Case(
        "scaled_dot_product_attention",
        _sdpa,
        {n: ((1, 2, 32, 32), -1.0, 1.0) for n in ("q", "k", "v")},
    ),
    # tensor manipulation
    Case("reshape", lambda x: mb.reshape(x=x, shape=[1, 4, 2, 32]), _x()),
    Case("transpose", lambda x: mb.transpose(x=x, perm=[0, 2, 1, 3]), _x()),
    Case("expand_dims", lambda x: mb.expand_dims(x=x, axes=[0]), _x(shape=(8, 32))),
    Case("squeeze", lambda x: mb.squeeze(x=x, axes=[2]), _x()),
    Case(
        "slice_by_size",
        lambda x: mb.slice_by_size(x=x, begin=[0, 2, 0, 16], size=[1, 4, 1, 32]),
        _x(shape=(1, 8, 1, 64)),
    ),
    Case(
        "slice_by_index",
        lambda x: mb.slice_by_index(x=x, begin=[0, 0, 0, 32], end=[1, 8, 1, 64]),
        _x(shape=(1, 8, 1, 64)),
    ),
    Case("concat", lambda x, y: mb.concat(values=[x, y], axis=1), _xy()),
    Case("split", _split, _x()),
    Case("stack", lambda x, y: mb.stack(values=[x, y], axis=0), _xy(shape=(8, 32))),
    Case("tile", lambda x: mb.tile(x=x, reps=[1, 2, 1, 1]), _x(shape=(1, 4, 1, 32))),
    Case("pad", lambda x: mb.pad(x=x, pad=[0, 0, 16, 16], mode="constant", constant_val=_f16(0.0)), _x()),
    Case("band_part", lambda x: mb.band_part(x=x, lower=-1, upper=0), _x(shape=(1, 1, 32, 32))),
    Case("gather", lambda x: mb.gather(x=x, indices=np.array([0, 2, 5], np.int32), axis=1), _x()),
    Case(
        "gather_along_axis",
        lambda x: mb.gather_along_axis(
            x=x, indices=np.random.default_rng(3).integers(0, 8, (1, 4, 1, 32)).astype(np.int32), axis=1
        ),
        _x(),
    ),
    Case("topk", lambda x: mb.topk(x=x, k=4, axis=1)[0], _x()),
    # quantization
    Case(
        "quantize",
        lambda x: mb.dequantize(
            input=mb.quantize(input=x, scale=_f16(0.05), output_dtype="int8"), scale=_f16(0.05)
        ),
        _x(),
    ),
    Case(
        "dequantize",
        lambda x: mb.add(
            x=x,
            y=mb.dequantize(
                input=mb.quantize(input=mb.mul(x=x, y=_f16(0.5)), scale=_f16(0.02), output_dtype="int8"),
                scale=_f16(0.02),
            ),
        ),
        _x(),
    ),
    Case(
        "constexpr_affine_dequantize",
        lambda x: mb.add(
            x=x,
            y=mb.constexpr_affine_dequantize(
                quantized_data=np.random.default_rng(4).integers(-128, 128, X).astype(np.int8),
                zero_point=np.int8(3),
                scale=_f16(0.01),
                axis=1,
            ),
        ),
        _x(),
    ),
    Case(
        "constexpr_blockwise_shift_scale",
        lambda x: mb.mul(
            x=x,
            y=mb.constexpr_blockwise_shift_scale(
                data=np.random.default_rng(5).integers(-8, 8, X).astype(np.int8),
                scale=_f16(np.full((1, 8, 1, 1), 0.125)),
            ),
        ),
        _x(),
    ),
    Case(
        "constexpr_cast",
        lambda x: mb.add(  # constexpr_cast only produces fp32 (iOS16): an fp32 output surface
            x=mb.cast(x=x, dtype="fp32"),
            y=mb.constexpr_cast(source_val=_f16(np.linspace(-1, 1, 256).reshape(X)), output_dtype="fp32"),
        ),
        _x(),
    ),
    # palettized / sparse constants (iOS18 forms): 4-bit palette, half the elements kept
    Case("constexpr_lut_to_dense", lambda x: mb.mul(x=x, y=_lut()), _x()),
    Case("constexpr_sparse_to_dense", lambda x: mb.add(x=x, y=_sparse()), _x()),
    Case("constexpr_lut_to_sparse", lambda x: mb.add(x=x, y=_lut_sparse()), _x()),
    Case("constexpr_sparse_blockwise_shift_scale", lambda x: mb.add(x=x, y=_shift_sparse()), _x()),
]

#: Reference ops with no engine comparison, and why.
NOT_ON_ENGINE = {
    "shape": "returns the (static) shape as int32; folded at compile time, nothing runs",
    "range_1d": "its length follows input values, a dynamic shape (mil-text.md §5 #15); a constant one folds",
    "lstm": "LSTM cells fall off the engine to the CPU under Core ML (mil-text.md §5 #15)",
}
