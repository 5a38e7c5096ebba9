"""Rules on constants and the working set: non-finite and out-of-fp16-range constants, the SRAM
cliff, operands that stream from DRAM, and the weight-file size limit."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ...engine_limits import FP16_MAX, OPERAND_BYTES, SRAM_BYTES, WEIGHT_FILE_BYTES
from .engine import _rule
from .program import (
    _distinct,
    _dtype_name,
    _flat_inputs,
    _fmt_shape,
    _Fn,
    _Hit,
    _is_tensor,
    _nbytes,
    _ops,
    _shape,
    _size,
)

# Thresholds. Each number is the one the cited reference gives; tests may patch them in this module.
_FP16_MAX = FP16_MAX
_SRAM_BYTES = SRAM_BYTES  # "4096 ch (32 MB) collapses" (ane-private-api.md §4.3)
_OPERAND_BYTES = OPERAND_BYTES  # mil-text.md §5 #14
_BLOB_LIMIT_BYTES = WEIGHT_FILE_BYTES  # "weight.bin larger than about 2 GB failed" (mil-text.md §2.7)


def _float_consts(fn: _Fn) -> Iterator[tuple[object, np.ndarray]]:
    """(const op, value) of every floating-point constant tensor or scalar."""
    for op in _ops(fn, "const"):
        val = op.outputs[0].val
        is_float = _dtype_name(op.outputs[0]) in ("fp16", "fp32", "fp64", "bf16")
        if is_float and isinstance(val, (np.ndarray, np.floating, float)):
            yield op, _distinct(np.asarray(val))


@_rule(
    "non-finite-constant",
    "warning",
    "Constant holding inf, -inf or nan (prefer finite -65504 masks)",
    fact="finite-masks",
    url="https://github.com/maderix/ANE/tree/main/training",
)
def _check_non_finite(fn: _Fn) -> Iterator[_Hit]:
    for op, val in _float_consts(fn):
        bad = ~np.isfinite(val)
        if bad.any():
            kinds = sorted({str(v) for v in val[bad].ravel()[:1000]})
            yield fn.op_hit(
                op,
                f"constant '{op.name}' holds {', '.join(kinds)} ({int(bad.sum())} of {val.size} stored "
                "values); maderix masks use the finite -65504 (fp16 min) and a third-party pipeline "
                "rewrites -inf masks to finite values. Replace them with -65504",
                op.outputs[0],
            )


@_rule(
    "constant-overflows-fp16",
    "warning",
    "Finite constant whose magnitude exceeds the fp16 range (65504)",
    fact="fp16-range",
    url="https://github.com/hollance/neural-engine/blob/master/docs/16-bit.md",
)
def _check_const_range(fn: _Fn) -> Iterator[_Hit]:
    for op, val in _float_consts(fn):
        finite = val[np.isfinite(val)]
        if finite.size and float(np.abs(finite).max()) > _FP16_MAX:
            yield fn.op_hit(
                op,
                f"constant '{op.name}' holds values up to {float(np.abs(finite).max()):g} in magnitude; "
                "the ANE computes in fp16, where anything beyond 65504 becomes inf. Clamp to +/-65504 "
                "(e.g. -65504 for masks)",
                op.outputs[0],
            )


def _const_bytes(fn: _Fn) -> int:
    total = 0
    for op in _ops(fn, "const"):
        var = op.outputs[0]
        if _is_tensor(var) and _shape(var):
            total += _nbytes(var) or 0
    return total


@_rule(
    "weights-exceed-sram",
    "warning",
    "Constant weights of one function total >= 32 MB (the ~32 MB SRAM cliff, ~30% slower)",
    fact="sram-32mb",
    url="https://maderix.substack.com/p/inside-the-m4-apple-neural-engine-615",
)
def _check_sram(fn: _Fn) -> Iterator[_Hit]:
    total = _const_bytes(fn)
    if total >= _SRAM_BYTES:
        yield fn.fn_hit(
            f"function '{fn.name}' holds {_size(total)} of constant weights; on-chip SRAM is about 32 MB "
            "and throughput fell ~30% (to half in one probe at 32 MB) past it. Split the work into "
            "kernels of under ~24 MB of weights each",
        )


@_rule(
    "large-operand",
    "info",
    "An op operand larger than 2 MB (streams from DRAM)",
    fact="sram-32mb",
    url="https://ane-guide.readthedocs.io/en/latest/part-5-practice/17-model-design-rules.html",
)
def _check_large_operand(fn: _Fn) -> Iterator[_Hit]:
    for op in fn.compute_ops():
        sized = [(_nbytes(v) or 0, v) for v in _flat_inputs(op) if _is_tensor(v)]
        if not sized:
            continue
        size, var = max(sized, key=lambda sv: sv[0])
        if size > _OPERAND_BYTES:
            yield fn.op_hit(
                op,
                f"operand '{var.name}' {_fmt_shape(var)} of {op.op_type} is {_size(size)}; operands over "
                "~2 MB are reported to stream from DRAM. Tile the op if it is on a hot path",
                var,
            )


@_rule(
    "weights-over-2gb",
    "error",
    "Constant weights of the program total >= 2 GiB (the weight file fails to load)",
    fact="weight-file-2gb",
    url="https://github.com/apple/coremltools/issues/1807",
    scope="program",
)
def _check_blob_size(fns: list[_Fn]) -> Iterator[_Hit]:
    total = sum(_const_bytes(fn) for fn in fns)
    if total >= _BLOB_LIMIT_BYTES:
        yield _Hit(
            f"the program holds {total / 2**30:.2f} GiB of constant weights; weight files larger than "
            "about 2 GB failed with 'Error in declaring network'. Split the model into several programs",
            None,
            None,
            0,
        )
