"""Rules on fp16 numerics and dtype casts: x^2 summed in fp16, and casts the M1/M2 engine cannot run
or that cost time at the I/O boundary."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .engine import _rule
from .program import _const_value, _dtype_name, _Fn, _Hit, _input_value, _is_const, _ops, _shape


def _reduces_channels(op) -> bool:
    """A reduction whose axes include the channel axis (1), or all axes."""
    axes = _input_value(op, "axes")
    rank = len(_shape(op.inputs["x"]))
    if axes is None:
        return True
    return any(int(a) % max(rank, 1) == 1 for a in np.atleast_1d(axes))


def _is_square(op) -> bool:
    if op.op_type == "square":
        return True
    if op.op_type == "mul":
        return op.inputs["x"] is op.inputs["y"]
    if op.op_type == "pow":
        y = _const_value(op.inputs["y"])
        return y is not None and bool(np.all(np.asarray(y) == 2))
    return False


@_rule(
    "fp16-square-overflow",
    "info",
    "fp16 x*x summed over channels (x^2 overflows fp16 for |x| > 256; no native RMSNorm)",
    fact="square-overflow",
    url="https://github.com/apple/coremltools/blob/main/coremltools/converters/mil/frontend/torch/ops.py",
)
def _check_square_overflow(fn: _Fn) -> Iterator[_Hit]:
    sums = ("reduce_sum", "reduce_mean")
    for op in fn.ops:
        x = op.inputs.get("x")
        if x is None or isinstance(x, (tuple, list)) or _dtype_name(x) != "fp16":
            continue
        if op.op_type in ("reduce_sum_square", "reduce_l2_norm"):
            hit = _reduces_channels(op)
        elif _is_square(op):
            hit = any(
                c.op_type in sums and c.inputs.get("x") is out and _reduces_channels(c)
                for out in op.outputs
                for c in out.child_ops
            )
        else:
            continue
        if hit:
            yield fn.op_hit(
                op,
                f"{op.op_type} squares fp16 values and sums them over channels; x^2 overflows fp16 "
                "(65504) once |x| > 256. If activations can grow that large, pre-scale x (coremltools "
                "divides by max|x| first)",
            )


@_rule(
    "cast-unsupported-m1-m2",
    "error",
    "cast cannot execute on the M1/M2 ANE",
    fact="cast-m1-m2",
    url="https://github.com/maderix/ANE/pull/6",
    chips=("m1", "m2"),
)
def _check_cast_m1_m2(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "cast"):
        if _is_const(op.inputs["x"]):
            continue  # a constant cast is `const-cast-unsupported-m1-m2`, whose remedy differs
        yield fn.op_hit(
            op,
            "cast cannot execute on the M1/M2 ANE (PR #6, M1 Pro): fp32-I/O programs fail to compile "
            "there. Use fp16 inputs/outputs and convert on the CPU",
        )


@_rule(
    "const-cast-unsupported-m1-m2",
    "error",
    "A constant cast to another dtype in the graph (cast cannot execute on the M1/M2 ANE)",
    fact="cast-m1-m2",
    url="https://github.com/maderix/ANE/pull/6",
    chips=("m1", "m2"),
)
def _check_const_cast_m1_m2(fn: _Fn) -> Iterator[_Hit]:
    # An fp32 table baked as `const` and `cast` to fp16 where it is used (ane-private-api.md §1.8,
    # the M1/M2 port of PR #6): the cast is the op those engines lack, and it buys nothing, since the
    # engine computes in fp16 anyway. Baking the constant in the dtype it is used in removes it.
    for op in _ops(fn, "cast"):
        x = op.inputs["x"]
        if not _is_const(x):
            continue
        target = _dtype_name(op.outputs[0]) or "the target dtype"
        yield fn.op_hit(
            op,
            f"constant '{x.name}' ({_dtype_name(x)}) is cast to {target} in the graph; the M1/M2 ANE "
            f"cannot execute cast (PR #6, M1 Pro), so the program fails to compile there. Bake the "
            f"constant as {target} (e.g. anekit.kernels.common.float_const(..., precision='fp16'))",
        )


@_rule(
    "cast-at-io-boundary",
    "warning",
    "cast of a non-fp16 function input or into a non-fp16 output (fp32 I/O is ~37% slower)",
    fact="fp16-io",
    url="https://github.com/maderix/ANE",
    chips=("m3", "m4", "m5"),
)
def _check_cast_io(fn: _Fn) -> Iterator[_Hit]:
    output_ids = {id(v) for v in fn.outputs}
    for op in _ops(fn, "cast"):
        x = op.inputs["x"]
        wide_in = fn.is_input(x) and _dtype_name(x) != "fp16"
        wide_out = any(id(v) in output_ids and _dtype_name(v) != "fp16" for v in op.outputs)
        if wide_in or wide_out:
            yield fn.op_hit(
                op,
                "cast at the I/O boundary: fp16 I/O is reported ~37% faster than fp32 I/O with an "
                "internal cast. Declare the input/output fp16 and convert on the CPU (NEON)",
            )
