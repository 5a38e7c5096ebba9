"""Rules on conv, matmul and arg-reductions: channel and kernel-width limits, contracted dims,
operands from different inputs, and the constant-weight matmul a 1x1 conv does faster."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..._coreml import types
from ...engine_limits import CONV_CIN_LARGE, CONV_CIN_REJECTED, MAX_ARG_AXIS, MAX_KERNEL_WIDTH
from .engine import _rule
from .program import _conv_cin, _Fn, _Hit, _input_value, _is_const, _ops, _shape

# Thresholds. Each number is the one the cited reference gives; tests may patch them in this module.
_CONV_CIN_REJECTED = CONV_CIN_REJECTED  # ane-private-api.md §1.7
_CONV_CIN_LARGE = CONV_CIN_LARGE
_MAX_KERNEL_WIDTH = MAX_KERNEL_WIDTH  # mil-text.md §5 #12
_MAX_ARG_AXIS = MAX_ARG_AXIS  # mil-text.md §5 #12


@_rule(
    "conv-input-channels-rejected",
    "error",
    "conv with >= 32000 input channels (a 32000-input-channel conv is rejected)",
    fact="conv-input-channels",
    url="https://github.com/maderix/ANE/blob/main/training/ane_classifier.h",
)
def _check_conv_cin_rejected(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "conv"):
        cin = _conv_cin(op)
        if cin is not None and cin >= _CONV_CIN_REJECTED:
            yield fn.op_hit(
                op,
                f"conv has {cin} input channels; a conv with {_CONV_CIN_REJECTED} input channels is "
                "rejected by the compiler. Use matmul (as maderix's classifier backward does) or split "
                "the input channels and sum partial convs",
            )


@_rule(
    "conv-input-channels-large",
    "warning",
    "conv with > 16384 input channels (32000 is known rejected; the exact limit is unknown)",
    fact="conv-input-channels",
    url="https://github.com/maderix/ANE/blob/main/training/ane_classifier.h",
)
def _check_conv_cin_large(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "conv"):
        cin = _conv_cin(op)
        if cin is not None and _CONV_CIN_LARGE < cin < _CONV_CIN_REJECTED:
            yield fn.op_hit(
                op,
                f"conv has {cin} input channels; {_CONV_CIN_REJECTED} is known to be rejected and the "
                "limit between is not known. Prefer matmul or split the input channels",
            )


@_rule(
    "conv-kernel-too-wide",
    "warning",
    "conv kernel wider than 13",
    fact="conv-kernel-width",
    url="https://ane-guide.readthedocs.io/en/latest/part-5-practice/17-model-design-rules.html",
)
def _check_conv_kernel(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "conv"):
        shape = _shape(op.inputs["weight"])
        if len(shape) >= 3 and not types.symbolic.is_symbolic(shape[-1]) and shape[-1] > _MAX_KERNEL_WIDTH:
            yield fn.op_hit(
                op,
                f"conv kernel width {shape[-1]} > {_MAX_KERNEL_WIDTH}, the reported limit; split the "
                "kernel into narrower convs and add the shifted results",
            )


@_rule(
    "conv-dilated",
    "info",
    "Dilated conv (fell back off the ANE in Core ML's older path)",
    fact="ops-off-engine",
    url="https://github.com/hollance/neural-engine/blob/master/docs/unsupported-layers.md",
)
def _check_conv_dilated(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "conv"):
        dilations = _input_value(op, "dilations")
        if dilations is not None and np.any(np.asarray(dilations) != 1):
            yield fn.op_hit(
                op,
                f"conv has dilations {np.asarray(dilations).tolist()}; dilated conv was reported to fall "
                "back off the ANE. Check it compiles, or use an undilated kernel with zero taps",
            )


def _matmul_k(op) -> int | None:
    """The contracted dim of a matmul, None if unknown."""
    shape = _shape(op.inputs["x"])
    if not shape:
        return None
    k = shape[-2] if _input_value(op, "transpose_x", False) and len(shape) >= 2 else shape[-1]
    return None if types.symbolic.is_symbolic(k) else int(k)


@_rule(
    "matmul-inner-dim-not-multiple-of-32",
    "warning",
    "matmul contracted (inner) dim is not a multiple of 32",
    fact="rows-64-bytes",
    url="https://github.com/maderix/ANE/issues/47",
)
def _check_matmul_k(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "matmul"):
        k = _matmul_k(op)
        if k is not None and k % 32:
            yield fn.op_hit(
                op,
                f"matmul contracts over {k} elements, not a multiple of 32; issue #47 reports such "
                "matmuls silently produce zeros. Zero-pad the inner dim to a multiple of 32",
            )


@_rule(
    "matmul-operands-from-different-inputs",
    "warning",
    "matmul whose operands trace back to different function inputs (status 0x1d)",
    fact="single-input",
    url="https://github.com/maderix/ane-prefill-bench",
)
def _check_matmul_origins(fn: _Fn) -> Iterator[_Hit]:
    if len(fn.tensor_inputs) < 2:
        return
    for op in _ops(fn, "matmul"):
        x, y = fn.origins(op.inputs["x"]), fn.origins(op.inputs["y"])
        if x and y and x != y:
            yield fn.op_hit(
                op,
                f"matmul operands trace back to different inputs (x <- {sorted(x)}, y <- {sorted(y)}); "
                "ane-prefill-bench saw status 0x1d for a matmul after a GQA concat whose operands came "
                "from different IOSurfaces. Pack both into one input and slice them apart in the graph",
            )


@_rule(
    "matmul-const-weight",
    "info",
    "matmul/linear with a constant weight (a 1x1 conv is ~3x faster)",
    fact="conv-beats-matmul",
    url="https://maderix.substack.com/p/inside-the-m4-apple-neural-engine-615",
)
def _check_matmul_const(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "matmul", "linear"):
        weights = [op.inputs["weight"]] if op.op_type == "linear" else [op.inputs["x"], op.inputs["y"]]
        if any(_is_const(w) and len(_shape(w)) >= 2 for w in weights):
            yield fn.op_hit(
                op,
                f"{op.op_type} with a constant weight; the ANE is a convolution engine and the same GEMM "
                "as a 1x1 conv on [1, Cin, 1, S] with weight [Cout, Cin, 1, 1] is reported ~3x faster",
            )


@_rule(
    "reduce-arg-axis-over-2048",
    "warning",
    "reduce_argmax/argmin over an axis longer than 2048",
    fact="arg-axis-cap",
    url="https://ane-guide.readthedocs.io/en/latest/part-5-practice/17-model-design-rules.html",
)
def _check_arg_axis(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "reduce_argmax", "reduce_argmin"):
        shape = _shape(op.inputs["x"])
        axis = int(_input_value(op, "axis", -1))
        if shape and -len(shape) <= axis < len(shape):
            n = shape[axis]
            if not types.symbolic.is_symbolic(n) and n > _MAX_ARG_AXIS:
                yield fn.op_hit(
                    op,
                    f"{op.op_type} over an axis of {n} > {_MAX_ARG_AXIS}, the reported limit; reduce in "
                    f"chunks of {_MAX_ARG_AXIS} and combine, or do it on the CPU",
                )
