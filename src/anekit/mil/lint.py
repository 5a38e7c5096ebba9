"""ANE-compatibility checks for MIL programs ("lint").

This module is the one place where anekit states what the Neural Engine accepts (DESIGN.md: "an ANE
constraint lives once, in the lint rules, with the source of the fact"). Each rule is a small check
function registered in `RULES` with the fact it rests on: a section of `docs/ane-facts.md` (the facts
in our own words, each with its public sources) and the main public source itself, so a user of the
installed package can check a finding without this repository. Most of those facts are community
reports, not Apple documentation: severities say how firm the evidence is.

- ``error``: known not to compile, or known to give wrong results.
- ``warning``: risky (reported failures), slow, or reported on some chips only.
- ``info``: a hint about performance or numerics.

`lint` only reads the program; it never modifies it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .._coreml import ct, types
from . import dtypes

__all__ = ["CHIP_FAMILIES", "FACTS_DOC", "RULES", "SEVERITIES", "Finding", "Rule", "lint", "normalize_chip"]

#: Chip families the rules know about. Variants (Pro, Max, Ultra) share their family's rules.
CHIP_FAMILIES: tuple[str, ...] = ("m1", "m2", "m3", "m4", "m5")
#: Severities, most serious first.
SEVERITIES: tuple[str, ...] = ("error", "warning", "info")


@dataclass(frozen=True)
class Rule:
    """One ANE constraint: a stable id, how serious a violation is, and where the fact comes from."""

    id: str  #: stable slug, e.g. "inner-dim-not-multiple-of-32"
    severity: str  #: "error", "warning" or "info"
    title: str  #: one line saying what the rule checks
    source: str  #: the fact's section in the repository docs, e.g. "docs/ane-facts.md#rsqrt-inverse"
    chips: tuple[str, ...] | None  #: chip families it applies to; None = all
    url: str | None = None  #: the fact's main public source (None only where none could be found)


@dataclass(frozen=True)
class Finding:
    """One violation of a rule: what is wrong, where, what to do, and the source of the fact."""

    rule: str
    severity: str
    message: str
    op: str | None
    var: str | None
    source: str
    function: str | None = None  #: the function it was found in; None for program-wide findings
    url: str | None = None  #: the rule's main public source

    @property
    def citation(self) -> str:
        """Where the fact is written down: the docs section, and the public source where there is one."""
        return f"{self.source}; {self.url}" if self.url else self.source

    def __str__(self) -> str:
        where = []
        if self.op is not None:
            where.append(f"op '{self.op}'")
        if self.var is not None and self.var != self.op:
            where.append(f"var '{self.var}'")
        location = f" at {', '.join(where)}" if where else ""
        if self.function is not None and (self.function != "main" or not where):
            location += f" in function '{self.function}'"
        return f"{self.severity} {self.rule}{location}: {self.message} [{self.citation}]"

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "function": self.function,
            "op": self.op,
            "var": self.var,
            "source": self.source,
            "url": self.url,
        }


#: The document holding every fact a rule rests on, one section (anchor) per fact.
FACTS_DOC = "docs/ane-facts.md"


RULES: dict[str, Rule] = {}

# ---------------------------------------------------------------------------------------------
# Thresholds. Each number is the one the cited reference gives; tests may patch them.
# ---------------------------------------------------------------------------------------------

_ROW_BYTES = 64  # hardware strides are multiples of 64 bytes (mil-text.md §5 #4)
_MAX_AXIS = 65536  # per-axis cap (ane-private-api.md §1.7; mil-text.md §5 #12)
_MAX_SPATIAL = 16384  # W, H measured on M1 (mil-text.md §5 #12)
_MAX_RANK = 5  # mil-text.md §5 #12
_CONV_CIN_REJECTED = 32000  # ane-private-api.md §1.7
_CONV_CIN_LARGE = 16384
_MAX_KERNEL_WIDTH = 13  # mil-text.md §5 #12
_MAX_ARG_AXIS = 2048  # mil-text.md §5 #12
_BAND_0X1D = (14593, 14622)  # mil-text.md §5 #13
_FP16_MAX = 65504.0
_SRAM_BYTES = 32 * 2**20  # "4096 ch (32 MB) collapses" (ane-private-api.md §4.3)
_OPERAND_BYTES = 2 * 2**20  # mil-text.md §5 #14
_BLOB_LIMIT_BYTES = 2**31  # "weight.bin larger than about 2 GB failed" (mil-text.md §2.7)
_M3_CHANNELS = 512  # mil-text.md §5 #11

#: Ops that move data without computing; a program made of these plus one op is a single-op program.
_LAYOUT_OPS = frozenset(
    {
        "const", "identity", "cast", "reshape", "transpose", "squeeze", "expand_dims", "slice_by_size",
        "slice_by_index", "concat", "split", "stack", "read_state", "coreml_update_state",
    }
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Chips
# ---------------------------------------------------------------------------------------------

_CHIP_RE = re.compile(r"^(?:apple[\s_-]*)?m(\d+)(?:[\s_-]*(?:pro|max|ultra))?$")


def normalize_chip(chip: str) -> str:
    """The family ("m1".."m5") of a chip name such as "m1", "m1-pro", "M3 Max" or "Apple M4"."""
    match = _CHIP_RE.match(chip.strip().lower())
    family = f"m{match.group(1)}" if match else None
    if family not in CHIP_FAMILIES:
        raise ValueError(
            f"unknown chip {chip!r}; known families: {', '.join(CHIP_FAMILIES)} "
            "(variants such as 'm3-pro' or 'M4 Max' map to their family)"
        )
    return family


# ---------------------------------------------------------------------------------------------
# Reading a program
# ---------------------------------------------------------------------------------------------


class _Hit(NamedTuple):
    """What a check reports: the message, where, and a position for sorting (op order)."""

    message: str
    op: str | None
    var: str | None
    pos: int


def _walk(operations) -> Iterator:
    """Every operation in program order, descending into nested blocks (cond, while_loop)."""
    for op in operations:
        yield op
        for block in op.blocks:
            yield from _walk(block.operations)


def _flat_inputs(op) -> list:
    """The Vars an op reads, with tuple inputs (concat's `values`) flattened."""
    out = []
    for value in op.inputs.values():
        out.extend(value if isinstance(value, (tuple, list)) else (value,))
    return out


def _is_state(var) -> bool:
    return types.is_state(var.sym_type)


def _is_tensor(var) -> bool:
    return types.is_tensor(var.sym_type) or _is_state(var)


def _is_const(var) -> bool:
    return var.op is not None and var.op.op_type == "const"


def _shape(var) -> tuple:
    """The shape of a tensor or state Var (a scalar is `()`)."""
    return tuple(var.shape) if _is_tensor(var) else ()


def _is_static(shape: tuple) -> bool:
    return not types.symbolic.any_symbolic(shape)


def _dtype_name(var) -> str | None:
    try:
        return types.builtin_to_string(var.dtype)
    except Exception:  # tuples, lists and other non-tensor types have no element type
        return None


def _bits(var) -> int | None:
    name = _dtype_name(var)
    if name is None or name not in dtypes.BY_NAME:
        return None
    return dtypes.BY_NAME[name].bits or None


def _nbytes(var) -> int | None:
    """Bytes of a tensor Var's data, None if its shape is dynamic or its dtype unknown."""
    shape, bits = _shape(var), _bits(var)
    if bits is None or not _is_static(shape):
        return None
    return math.prod(int(d) for d in shape) * bits // 8


def _const_value(var):
    """The value of a Var defined by `const`, else None."""
    return var.val if _is_const(var) else None


def _input_value(op, name: str, default=None):
    """The constant value of an op's parameter (`axis`, `groups`, ...), or `default`."""
    var = op.inputs.get(name)
    if var is None or isinstance(var, (tuple, list)) or var.val is None:
        return default
    return var.val


def _distinct(array: np.ndarray) -> np.ndarray:
    """A broadcast (zero-stride) array collapsed to its stored elements, so scans stay cheap."""
    if array.ndim and 0 in array.strides:
        array = array[tuple(slice(0, 1) if s == 0 else slice(None) for s in array.strides)]
    return array


def _fmt_shape(var) -> str:
    return "[" + ", ".join(str(d) for d in _shape(var)) + "]"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


class _Fn:
    """One function of the program, flattened once for all checks."""

    def __init__(self, name: str, func, index: int):
        self.name = name
        self.func = func
        self.index = index
        self.ops = list(_walk(func.operations))
        self._pos = {id(op): i + 1 for i, op in enumerate(self.ops)}
        self.inputs = list(func.inputs.values())
        self.tensor_inputs = [v for v in self.inputs if not _is_state(v)]
        self.states = [v for v in self.inputs if _is_state(v)]
        self.outputs = list(func.outputs)
        self._input_ids = {id(v) for v in self.inputs}
        self._origins: dict[int, frozenset[str]] | None = None

    @property
    def end(self) -> int:
        """Sort position of function outputs: after every op."""
        return len(self.ops) + 1

    def is_input(self, var) -> bool:
        return id(var) in self._input_ids

    def op_hit(self, op, message: str, var=None) -> _Hit:
        return _Hit(message, op.name, None if var is None else var.name, self._pos[id(op)])

    def fn_hit(self, message: str, pos: int = 0) -> _Hit:
        """A finding on the function as a whole (placed before its ops, or at `pos`)."""
        return _Hit(message, None, None, pos)

    def var_hit(self, var, message: str, pos: int | None = None) -> _Hit:
        """A finding on a Var: placed at its defining op, or first for an input, or at `pos`."""
        op = var.op
        if pos is None:
            pos = self._pos.get(id(op), 0) if op is not None else 0
        return _Hit(message, None if op is None else op.name, var.name, pos)

    def compute_ops(self) -> list:
        return [op for op in self.ops if op.op_type != "const"]

    def origins(self, var) -> frozenset[str]:
        """Names of the function inputs a Var depends on (cheap forward pass, computed once)."""
        if self._origins is None:
            table: dict[int, frozenset[str]] = {id(v): frozenset({n}) for n, v in self.func.inputs.items()}
            for op in self.ops:
                found = frozenset().union(*(table.get(id(v), frozenset()) for v in _flat_inputs(op)))
                for out in op.outputs:
                    table[id(out)] = found
            self._origins = table
        return self._origins.get(id(var), frozenset())

    def first_violations(self, bad: Callable[[object], bool]) -> Iterator:
        """Tensor Vars where `bad` first becomes true: inputs, and op outputs none of whose
        non-constant inputs is already bad. Reporting the origin only keeps one fault from
        repeating on every op downstream; constants are left to the op that uses them."""
        for var in self.inputs:
            if bad(var):
                yield var
        for op in self.ops:
            if op.op_type == "const":
                continue
            outs = [v for v in op.outputs if _is_tensor(v) and bad(v)]
            if outs and not any(_is_tensor(v) and not _is_const(v) and bad(v) for v in _flat_inputs(op)):
                yield from outs


_Check = Callable[[_Fn], Iterable[_Hit]]
_ProgramCheck = Callable[[list[_Fn]], Iterable[_Hit]]
#: rule id -> (check, scope): a function check takes one `_Fn`, a program check the list of them.
_CHECKS: dict[str, tuple[_Check | _ProgramCheck, str]] = {}


def _rule(
    id: str,
    severity: str,
    title: str,
    *,
    fact: str,
    url: str | None,
    chips: tuple[str, ...] | None = None,
    scope: str = "function",
) -> Callable[[Callable], Callable]:
    """Register a check function under a Rule. `fact` is the anchor of the fact's section in
    FACTS_DOC, `url` its main public source; `scope` is "function" or "program"."""
    assert severity in SEVERITIES and id not in RULES

    def register(check: Callable) -> Callable:
        RULES[id] = Rule(id, severity, title, f"{FACTS_DOC}#{fact}", chips, url)
        _CHECKS[id] = (check, scope)
        return check

    return register


# ---------------------------------------------------------------------------------------------
# Function inputs and outputs (IOSurfaces)
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Shapes of every tensor
# ---------------------------------------------------------------------------------------------


def _spatial_axes(shape: tuple) -> tuple[int, ...]:
    """Axes that are H and W: the last two of a 4-D/5-D [N, C, (D,) H, W] tensor, else the last."""
    if len(shape) >= 4:
        return (len(shape) - 2, len(shape) - 1)
    return (len(shape) - 1,) if shape else ()


def _big_axes(var, limit: int, axes=None) -> list[tuple[int, int]]:
    shape = _shape(var)
    axes = range(len(shape)) if axes is None else axes
    return [(a, int(shape[a])) for a in axes if not types.symbolic.is_symbolic(shape[a]) and shape[a] > limit]


@_rule(
    "axis-over-65536",
    "error",
    "A tensor axis is larger than 65536",
    fact="axis-cap",
    url="https://github.com/maderix/ANE/pull/26",
)
def _check_axis_cap(fn: _Fn) -> Iterator[_Hit]:
    for var in fn.first_violations(lambda v: bool(_big_axes(v, _MAX_AXIS))):
        axes = ", ".join(f"axis {a} = {n}" for a, n in _big_axes(var, _MAX_AXIS))
        yield fn.var_hit(
            var,
            f"'{var.name}' {_fmt_shape(var)} has {axes} > {_MAX_AXIS}, the per-axis cap; split it into "
            f"chunks of at most {_MAX_AXIS} (an LM head of 151936 was chunked as 16 x 9496)",
        )


@_rule(
    "spatial-dim-over-16384",
    "warning",
    "H or W larger than 16384 (the limit measured on M1; Core ML refuses it)",
    fact="spatial-cap",
    url="https://github.com/microsoft/onnxruntime/issues/19543",
)
def _check_spatial_cap(fn: _Fn) -> Iterator[_Hit]:
    def bad(v) -> bool:
        return bool(_big_axes(v, _MAX_SPATIAL, _spatial_axes(_shape(v))))

    for var in fn.first_violations(bad):
        axes = ", ".join(
            f"axis {a} = {n}" for a, n in _big_axes(var, _MAX_SPATIAL, _spatial_axes(_shape(var)))
        )
        yield fn.var_hit(
            var,
            f"'{var.name}' {_fmt_shape(var)} has spatial {axes} > {_MAX_SPATIAL}, the H/W limit measured "
            "on M1 (Core ML execution providers refuse such dims); tile the spatial axis",
        )


@_rule(
    "rank-over-5",
    "error",
    "A tensor has rank > 5",
    fact="rank-cap",
    url="https://aneforge.readthedocs.io/en/latest/api/graph/",
)
def _check_rank(fn: _Fn) -> Iterator[_Hit]:
    for var in fn.first_violations(lambda v: len(_shape(v)) > _MAX_RANK):
        yield fn.var_hit(
            var,
            f"'{var.name}' {_fmt_shape(var)} has rank {len(_shape(var))} > {_MAX_RANK}; the engine's "
            "tensors are at most 5-D. Merge axes with reshape",
        )


@_rule(
    "dynamic-shape",
    "error",
    "A tensor has a dynamic ('?') dimension",
    fact="static-graphs",
    url="https://github.com/hollance/neural-engine/blob/master/docs/unsupported-layers.md",
)
def _check_dynamic(fn: _Fn) -> Iterator[_Hit]:
    for var in fn.first_violations(lambda v: not _is_static(_shape(v))):
        yield fn.var_hit(
            var,
            f"'{var.name}' {_fmt_shape(var)} has a dynamic dim; the ANE compiles static shapes only. "
            "Give every dim a fixed size (compile one kernel per shape)",
        )


@_rule(
    "spatial-width-0x1d-band",
    "warning",
    "A spatial size in 14593..14622 (status 0x1d seen on M4)",
    fact="width-0x1d-band",
    url="https://github.com/maderix/ane-prefill-bench",
)
def _check_0x1d_band(fn: _Fn) -> Iterator[_Hit]:
    lo, hi = _BAND_0X1D

    def in_band(v) -> list[int]:
        shape = _shape(v)
        axes = [a for a in _spatial_axes(shape) if not types.symbolic.is_symbolic(shape[a])]
        return [int(shape[a]) for a in axes if lo <= shape[a] <= hi]

    for var in fn.first_violations(lambda v: bool(in_band(v))):
        size = in_band(var)[0]
        yield fn.var_hit(
            var,
            f"'{var.name}' {_fmt_shape(var)} has spatial size {size}; widths {lo}..{hi} failed with "
            f"status 0x1d in complex graphs on M4 while 14592 and 14624 worked. Use a multiple of 32",
        )


# ---------------------------------------------------------------------------------------------
# Ops
# ---------------------------------------------------------------------------------------------


def _ops(fn: _Fn, *op_types: str) -> Iterator:
    return (op for op in fn.ops if op.op_type in op_types)


@_rule(
    "rsqrt-not-compiled",
    "error",
    "rsqrt fails to compile on the ANE",
    fact="rsqrt-inverse",
    url="https://github.com/maderix/ane-prefill-bench",
)
def _check_rsqrt(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "rsqrt"):
        yield fn.op_hit(op, "rsqrt fails to compile for the ANE; use pow(x, -0.5) (as in maderix's RMSNorm)")


@_rule(
    "inverse-not-compiled",
    "error",
    "inverse fails to compile on the ANE",
    fact="rsqrt-inverse",
    url="https://github.com/maderix/ane-prefill-bench",
)
def _check_inverse(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "inverse"):
        yield fn.op_hit(op, "inverse fails to compile for the ANE; use real_div(1, x)")


@_rule(
    "sdpa-attn-mask-ignored",
    "error",
    "scaled_dot_product_attention ignores attn_mask on the ANE (wrong results)",
    fact="sdpa-mask-ignored",
    url="https://github.com/maderix/ane-prefill-bench",
)
def _check_sdpa_mask(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "scaled_dot_product_attention"):
        if op.inputs.get("attn_mask") is not None:
            yield fn.op_hit(
                op,
                "scaled_dot_product_attention compiles but the ANE ignores attn_mask (inline, BLOBFILE "
                "or input), so masked positions are attended. Decompose it: matmul(q, k, transpose_y) "
                "-> mul(1/sqrt(d)) -> add(mask const, -65504 for masked) -> softmax -> matmul(v)",
            )


#: Ops Core ML places off the ANE, with what to do instead (mil-text.md §5 #15).
_OFF_ANE = {
    "gather": "gather/embedding lookups run on the CPU; do the lookup on the CPU",
    "gather_nd": "gather ops run on the CPU; do the lookup on the CPU",
    "gather_along_axis": "gather_along_axis leaves the ANE; do it on the CPU",
    "scatter": "scatter falls off the ANE; do it on the CPU",
    "scatter_nd": "scatter_nd falls off the ANE; do it on the CPU",
    "scatter_along_axis": "scatter_along_axis falls off the ANE; do it on the CPU",
    "topk": "topk (and the tile/gather consuming its indices) leaves the ANE; do it on the CPU",
    "lstm": "LSTM cells run on the CPU; unroll them into matmul/conv and elementwise ops",
    "gru": "GRU cells run on the CPU; unroll them into matmul/conv and elementwise ops",
    "rnn": "RNN cells run on the CPU; unroll them into matmul/conv and elementwise ops",
}


@_rule(
    "op-falls-off-ane",
    "warning",
    "Op that Core ML places off the ANE (gather*, scatter*, topk, lstm/gru/rnn)",
    fact="ops-off-engine",
    url="https://github.com/apple/coremltools/issues/1780",
)
def _check_off_ane(fn: _Fn) -> Iterator[_Hit]:
    for op in fn.ops:
        if op.op_type in _OFF_ANE:
            yield fn.op_hit(
                op,
                f"{_OFF_ANE[op.op_type]}. The private in-memory path has no CPU fallback, so expect "
                "the compile to fail",
            )


@_rule(
    "control-flow",
    "error",
    "Control flow (cond, while_loop) is not supported on the ANE",
    fact="static-graphs",
    url="https://github.com/hollance/neural-engine/blob/master/docs/unsupported-layers.md",
)
def _check_control_flow(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "cond", "while_loop"):
        yield fn.op_hit(
            op,
            f"{op.op_type} is control flow, which the ANE does not support; compute both branches and "
            "select, unroll the loop, or keep the control on the CPU and compile one kernel per path",
        )


def _conv_cin(op) -> int | None:
    shape = _shape(op.inputs["x"])
    if len(shape) < 2 or types.symbolic.is_symbolic(shape[1]):
        return None
    return int(shape[1])


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


# ---------------------------------------------------------------------------------------------
# Constants and working set
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Chip-specific reports
# ---------------------------------------------------------------------------------------------


@_rule(
    "m3-conv-channels-not-512",
    "warning",
    "conv channel count other than 512 on M3 (only 512 compiled in M3 Pro/Ultra benchmarks)",
    fact="m3-512-channels",
    url="https://github.com/maderix/ANE/issues/42",
    chips=("m3",),
)
def _check_m3_channels(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "conv"):
        cin, w = _conv_cin(op), _shape(op.inputs["weight"])
        cout = int(w[0]) if w and not types.symbolic.is_symbolic(w[0]) else None
        odd = [f"{k} {n}" for k, n in (("in", cin), ("out", cout)) if n is not None and n != _M3_CHANNELS]
        if odd:
            yield fn.op_hit(
                op,
                f"conv channels ({', '.join(odd)}) are not {_M3_CHANNELS}; on M3 Pro / M3 Ultra only "
                f"{_M3_CHANNELS} channels compiled in a 52-value benchmark sweep (though 768/2048 "
                f"training dims compiled on M3 Ultra). Check it compiles, or pad to {_M3_CHANNELS}",
            )


@_rule(
    "matmul-sdpa-on-m1-m2",
    "warning",
    "matmul or scaled_dot_product_attention on M1/M2 (reported conv-only by a third party)",
    fact="m1-m2-conv-only",
    url=None,
    chips=("m1", "m2"),
)
def _check_matmul_m1_m2(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "matmul", "scaled_dot_product_attention"):
        yield fn.op_hit(
            op,
            f"{op.op_type} on M1/M2: a third-party M1/M2 path reports these engines run conv only and "
            "avoids matmul/SDPA. Express constant-weight GEMMs as 1x1 conv; verify the rest compiles",
        )


@_rule(
    "runtime-weight-grouped-conv",
    "warning",
    "Grouped/depthwise conv with a runtime (non-constant) weight fails on M1",
    fact="m1-runtime-grouped-conv",
    url="https://github.com/maderix/ANE/issues/47",
    chips=("m1",),
)
def _check_runtime_grouped_conv(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "conv"):
        groups = int(_input_value(op, "groups", 1))
        if groups > 1 and not _is_const(op.inputs["weight"]):
            yield fn.op_hit(
                op,
                f"conv with groups={groups} takes its weight at run time; issue #47 reports runtime-weight "
                "grouped/depthwise convs fail on M1. Bake the weight as a constant or run it on the CPU",
            )


@_rule(
    "gelu-lut-error",
    "info",
    "gelu is a lookup-table approximation (~8% relative error reported on M1)",
    fact="gelu-lut",
    url="https://aneforge.readthedocs.io/en/latest/op-catalog/",
    chips=("m1",),
)
def _check_gelu(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "gelu"):
        yield fn.op_hit(
            op,
            "gelu runs as a lookup-table approximation with about 8% relative error reported on M1; "
            "compare against the reference backend with a loose tolerance, or compose it from "
            "sigmoid (x * sigmoid(1.702 x))",
        )


@_rule(
    "opset-newer-than-ios16-on-m1-m2",
    "info",
    "Opset newer than ios16 on M1/M2 (the M1/M2 dialect of PR #6 is program(1.0)/<ios16>)",
    fact="m1-m2-dialect",
    url="https://github.com/maderix/ANE/pull/6",
    chips=("m1", "m2"),
)
def _check_opset_m1_m2(fn: _Fn) -> Iterator[_Hit]:
    opset = fn.func.opset_version
    if opset is not None and opset > ct.target.iOS16:
        yield fn.fn_hit(
            f"function '{fn.name}' uses opset {getattr(opset, 'name', opset)}; PR #6 compiled on M1/M2 "
            "with program(1.0), <ios16> and canonical tensor<T, []> scalars, and ios18 is reported "
            "only partly working on M1. Use ios16-level ops if compiling fails there",
        )


# ---------------------------------------------------------------------------------------------
# Whole-function shape
# ---------------------------------------------------------------------------------------------


@_rule(
    "single-op-program",
    "info",
    "Program computes a single op (one op uses ~30% of the engine; chain 16-64)",
    fact="single-op-waste",
    url="https://github.com/maderix/ANE/issues/3",
)
def _check_single_op(fn: _Fn) -> Iterator[_Hit]:
    compute = [op for op in fn.ops if op.op_type not in _LAYOUT_OPS]
    if len(compute) == 1:
        op = compute[0]
        yield fn.op_hit(
            op,
            f"function '{fn.name}' computes a single {op.op_type}; one op per dispatch wastes up to ~70% "
            "of the engine and the ~0.1 ms dispatch overhead dominates. Chain 16-64 ops in one program",
        )


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def lint(program, chip: str | None = None, function: str | None = None) -> list[Finding]:
    """Check a coremltools MIL Program against the known ANE constraints.

    `chip` ("m1", "m1-pro", "M3 Max", ...) selects the rules of one chip family, with their own
    severities. With `chip=None` every rule runs, and a chip-specific rule reports at most a warning
    whose message names the chips it affects. `function` restricts the check to one function.
    Findings come in program order (function, then op), rules in registration order within an op.
    The program is only read, never modified.
    """
    family = normalize_chip(chip) if chip is not None else None
    names = list(program.functions)
    if function is not None and function not in program.functions:
        raise ValueError(f"no function {function!r} in the program; it has: {', '.join(names)}")
    selected = [function] if function is not None else names
    fns = [_Fn(name, program.functions[name], names.index(name)) for name in selected]

    keyed: list[tuple[tuple[int, int], Finding]] = []
    for rule_id, (check, scope) in _CHECKS.items():
        rule = RULES[rule_id]
        if family is not None and rule.chips is not None and family not in rule.chips:
            continue
        severity, note = rule.severity, ""
        if family is None and rule.chips is not None:
            if severity == "error":
                severity = "warning"
            chips = ", ".join(c.upper() for c in rule.chips)
            note = f" (reported for {chips} only; pass chip= to check one)"
        runs = (
            [(None, -1, check(fns))] if scope == "program" else [(fn.name, fn.index, check(fn)) for fn in fns]
        )
        for fn_name, fn_index, hits in runs:
            for hit in hits:
                finding = Finding(
                    rule.id, severity, hit.message + note, hit.op, hit.var, rule.source, fn_name, rule.url
                )
                keyed.append(((fn_index, hit.pos), finding))
    keyed.sort(key=lambda item: item[0])  # stable: rules keep their order within one op
    return [finding for _, finding in keyed]
