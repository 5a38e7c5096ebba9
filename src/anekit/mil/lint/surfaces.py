"""Rules on a function's inputs and outputs: the IOSurfaces the engine reads and writes (row
alignment, dtypes, count, slot order, rank) and the state tensors."""

from __future__ import annotations

from collections.abc import Iterator

from ...engine_limits import ROW_ALIGN_BYTES
from .engine import _rule
from .program import (
    _bits,
    _dtype_name,
    _fmt_shape,
    _Fn,
    _Hit,
    _is_const,
    _is_static,
    _is_tensor,
    _nbytes,
    _shape,
)

# Thresholds. Each number is the one the cited reference gives; tests may patch them in this module.
_ROW_BYTES = ROW_ALIGN_BYTES  # hardware strides are multiples of 64 bytes (mil-text.md §5 #4)


def _io(fn: _Fn) -> Iterator[tuple[str, object, int | None]]:
    """("input"/"output", Var, sort position) for the IOSurface tensors of a function."""
    for var in fn.tensor_inputs:
        yield "input", var, None
    for var in fn.outputs:
        yield "output", var, fn.end


@_rule(
    "inner-dim-not-multiple-of-32",
    "error",
    "Innermost dim of a function input/output is not a whole number of 64-byte rows "
    "(32 fp16 / 16 fp32 elements)",
    fact="rows-64-bytes",
    url="https://github.com/maderix/ANE/issues/47",
)
def _check_io_inner_dim(fn: _Fn) -> Iterator[_Hit]:
    # Hardware row strides are multiples of 64 bytes; a surface whose rows are not is reported to
    # read back silent zeros or to fail with status 0x1d (issue #47, prefill-bench README).
    for kind, var, pos in _io(fn):
        shape, bits = _shape(var), _bits(var)
        if bits is None or not _is_static(shape):
            continue
        inner = int(shape[-1]) if shape else 1
        if inner * bits % (_ROW_BYTES * 8):
            per_row = _ROW_BYTES * 8 // bits
            padded = -(-inner // per_row) * per_row
            yield fn.var_hit(
                var,
                f"function {kind} '{var.name}' {_fmt_shape(var)} {_dtype_name(var)}: innermost dim {inner} "
                f"is not a multiple of {per_row} elements ({_ROW_BYTES}-byte rows); this is reported to "
                f"give silent zeros or status 0x1d. Pad it to {padded}, or read PlaneStride from "
                "modelAttributes after load and honour it",
                pos,
            )


@_rule(
    "fp32-io",
    "warning",
    "fp32 function input/output (fp16 I/O is ~37% faster; fp32 needs a cast the M1/M2 ANE cannot run)",
    fact="fp16-io",
    url="https://github.com/maderix/ANE",
)
def _check_fp32_io(fn: _Fn) -> Iterator[_Hit]:
    for kind, var, pos in _io(fn):
        if _dtype_name(var) == "fp32":
            yield fn.var_hit(
                var,
                f"function {kind} '{var.name}' is fp32: fp16 I/O is reported ~37% faster, fp32 I/O needs "
                "a cast the M1/M2 ANE cannot execute, and one fork saw fp32 I/O read back zeros. "
                "Declare it fp16 and convert on the CPU",
                pos,
            )


@_rule(
    "io-dtype-unsupported",
    "warning",
    "Function input/output dtype outside what the ANE datapath handles (fp16, int8, uint8; fp32 via cast)",
    fact="datapath-dtypes",
    url="https://github.com/tinygrad/tinygrad/tree/master/extra/accel/ane",
)
def _check_io_dtype(fn: _Fn) -> Iterator[_Hit]:
    # The datapath reads UInt8, Int8 and Float16 (tinygrad's register map); wider types are
    # annotations the engine does not execute wide.
    for kind, var, pos in _io(fn):
        name = _dtype_name(var)
        if name is not None and name not in ("fp16", "fp32", "int8", "uint8"):
            yield fn.var_hit(
                var,
                f"function {kind} '{var.name}' is {name}; the ANE datapath handles fp16, int8 and uint8 "
                "only. Convert it on the CPU and pass fp16",
                pos,
            )


@_rule(
    "multiple-inputs",
    "warning",
    "More than one function input (multi-input requests have failed with status 0x1d)",
    fact="single-input",
    url="https://github.com/maderix/ANE",
)
def _check_multiple_inputs(fn: _Fn) -> Iterator[_Hit]:
    if len(fn.tensor_inputs) > 1:
        names = ", ".join(f"'{v.name}'" for v in fn.tensor_inputs)
        yield fn.fn_hit(
            f"function '{fn.name}' has {len(fn.tensor_inputs)} inputs ({names}); multi-input requests "
            "have failed with status 0x1d. Pack them into one [1, C, 1, W] input along the spatial "
            "axis and slice them apart inside the graph (slice_by_size)",
        )


@_rule(
    "io-slot-order",
    "warning",
    "Several inputs not in strictly ascending size, or outputs not in strictly descending size",
    fact="io-slot-order",
    url="https://github.com/maderix/ANE/issues/47",
)
def _check_io_slot_order(fn: _Fn) -> Iterator[_Hit]:
    # Issue #47: multi-input works "if IOSurface slot sizes are strictly ascending for inputs and
    # descending for outputs — violations give silent zeros".
    for kind, vars_, ascending, pos in (
        ("inputs", fn.tensor_inputs, True, 0),
        ("outputs", fn.outputs, False, fn.end),
    ):
        sizes = [_nbytes(v) for v in vars_]
        if len(vars_) < 2 or None in sizes:
            continue
        ordered = all((a < b) if ascending else (a > b) for a, b in zip(sizes, sizes[1:], strict=False))
        if not ordered:
            listing = ", ".join(f"'{v.name}' {s} B" for v, s in zip(vars_, sizes, strict=True))
            order = "ascending" if ascending else "descending"
            yield fn.fn_hit(
                f"function '{fn.name}' {kind} are not in strictly {order} byte size ({listing}); "
                "reported to give silent zeros. Reorder them, or pack them into one tensor",
                pos,
            )


@_rule(
    "output-not-computed",
    "warning",
    "A function output is a function input or a constant (the engine needs an op to produce it)",
    fact="output-needs-op",
    url="https://github.com/maderix/ANE/pull/6",
)
def _check_output_not_computed(fn: _Fn) -> Iterator[_Hit]:
    for var in fn.outputs:
        what = "a function input" if fn.is_input(var) else "a constant" if _is_const(var) else None
        if what:
            yield fn.var_hit(
                var,
                f"function output '{var.name}' is {what}, not produced by an op on the engine; "
                "insert an identity op to produce it (as the M1/M2 dialect of PR #6 does)",
                fn.end,
            )


@_rule(
    "io-not-4d",
    "info",
    "Function input/output is not 4-D (the ANE favours [1, C, 1, S])",
    fact="layout-1c1s",
    url="https://machinelearning.apple.com/research/neural-engine-transformers",
)
def _check_io_rank(fn: _Fn) -> Iterator[_Hit]:
    for kind, var, pos in _io(fn):
        if _is_tensor(var) and len(_shape(var)) != 4:
            yield fn.var_hit(
                var,
                f"function {kind} '{var.name}' has shape {_fmt_shape(var)}; the engine favours 4-D "
                "channels-first [1, C, 1, S] surfaces, and the layout of other ranks is not known. "
                "Reshape to [1, C, 1, S]",
                pos,
            )


@_rule(
    "state-dim-not-multiple-of-32",
    "error",
    "State tensor's innermost dim is not a multiple of 32",
    fact="state-dims-32",
    url="https://github.com/apple/coremltools/issues/2631",
)
def _check_state_dims(fn: _Fn) -> Iterator[_Hit]:
    # coremltools #2631: a state of width 270 fails on the ANE where 256 works. The report
    # names the width; other dims are not known to matter, so only the innermost is checked.
    for var in fn.states:
        shape = _shape(var)
        if shape and _is_static(shape) and int(shape[-1]) % 32:
            yield fn.var_hit(
                var,
                f"state '{var.name}' {_fmt_shape(var)}: innermost dim {shape[-1]} is not a multiple of "
                "32; stateful models fail on the ANE then. Pad the state to a multiple of 32",
            )
