"""Counting a MIL program's work: FLOPs, bytes and working set per op.

The cost model never looks at a coremltools program directly; it reads the `ProgramCost` this module
derives from one (or one written by hand for a published benchmark, `anekit.perf.workloads`).

Each op's cost rule is its entry in the op table (`anekit.mil.optable`: kind, value preservation,
cost rule and FLOPs per element); this module applies the rules. FLOP conventions (one multiply-add
= 2 FLOPs, the convention of every published ANE benchmark, ane-private-api.md §4 first paragraph:
a 1x1 conv over S positions is `2*C*C*S`):

| op | FLOPs |
|---|---|
| conv | `2 * N * Cout * (Cin/groups) * prod(kernel) * prod(out spatial)` (+ `N*Cout*prod(out)` with a bias) |
| conv_transpose | `2 * N * Cin * (Cout/groups) * prod(kernel) * prod(in spatial)` |
| matmul | `2 * batch * M * N * K` |
| linear | `2 * rows * Dout * Din` (+ `rows * Dout` with a bias) |
| scaled_dot_product_attention | `2*B*L*S*E + 2*B*L*S*EV` (two matmuls) `+ 7*B*L*S` (scale, mask, softmax) |
| elementwise, activations | 1 per output element (transcendentals too: the engine's LUT cost is unknown) |
| quantize, dequantize | 2 per element (scale and round/offset) |
| reductions | 1 per input element |
| softmax | 5 per element (max, subtract, exp, sum, divide) |
| layer_norm, instance_norm | 7 per element; batch_norm 2; l2_norm 3 |
| data movement (reshape, transpose, slice, concat, cast, ...) | 0 (bytes only); squeeze/expand_dims free |
| constexpr_* | 0: evaluated when the program is compiled; their stored bytes are the consumer's weights |

Bytes are counted at each value's declared dtype (fp16 = 2 bytes). A *weight* is an operand that is a
constant or comes from a `constexpr_*` op (counted at its stored, compressed size: an int8 weight
through `constexpr_affine_dequantize` is 1 byte per element).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..mil import optable

#: MAC-array ops: run at the engine's peak rate (conv) or a fraction of it (matmul), cost-model kinds.
MAC_KINDS = ("conv", "matmul")


@dataclass(frozen=True)
class OpCost:
    """The work of one op (or of `count` identical ops, for hand-written workloads).

    kind: "conv" | "matmul" | "vector" (elementwise, reductions, softmax, norms, quantization)
        | "move" (data movement) | "view" (free), from the op's cost rule in `anekit.mil.optable`.
    weight_bytes: bytes of constant operands as stored (int8 = 1 byte), read once per evaluation.
    operand_bytes: bytes of the second MAC operand (the weight, constant or not): what the engine reads
        into its MAC array per op, the cost that makes small-spatial ops slow (see model.py).
    act_bytes: non-constant inputs plus outputs.
    int8_act: a MAC op whose activation input comes from `dequantize` (W8A8, ane-private-api.md §4.4).
    """

    name: str
    op_type: str
    kind: str
    flops: float
    weight_bytes: float = 0.0
    operand_bytes: float = 0.0
    act_bytes: float = 0.0
    int8_act: bool = False
    count: int = 1
    #: bytes a data-movement op writes: its outputs. None (hand-written workloads): half of act_bytes,
    #: exact when the op's input and output are the same size (reshape, transpose, concat), not for a
    #: slice, which writes only the part it takes of a larger input.
    written_bytes: float | None = None

    @property
    def working_set(self) -> float:
        """Bytes one op touches: its weights and its activations (ane-private-api.md §4.3)."""
        return self.weight_bytes + self.act_bytes


@dataclass(frozen=True)
class ProgramCost:
    """What a whole program costs to run: its ops, and the bytes of its input and output surfaces."""

    ops: tuple[OpCost, ...]
    input_bytes: float
    output_bytes: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def flops(self) -> float:
        return float(sum(o.flops * o.count for o in self.ops))

    @property
    def weight_bytes(self) -> float:
        return float(sum(o.weight_bytes * o.count for o in self.ops))

    @property
    def bytes(self) -> float:
        """Bytes moved between memory and the engine: inputs, outputs and weights."""
        return self.input_bytes + self.output_bytes + self.weight_bytes

    @property
    def working_set(self) -> float:
        """The largest single op's working set (weights + activations)."""
        return max((o.working_set for o in self.ops), default=0.0)

    @property
    def n_ops(self) -> int:
        return sum(o.count for o in self.ops if o.kind != "view")


# ------------------------------------------------------------------------------------------------
# Reading a coremltools program
# ------------------------------------------------------------------------------------------------


def _nbytes(var) -> float:
    """Bytes of a Var at its declared dtype (0 for strings, symbolic shapes count their known dims)."""
    from ..mil.dtypes import of_builtin

    try:
        d = of_builtin(var.dtype)
    except (ValueError, TypeError, AttributeError):
        return 0.0
    if d.bits == 0:
        return 0.0
    return _numel(var.shape) * d.bits / 8


def _numel(shape) -> float:
    n = 1
    for s in shape or ():
        n *= int(s) if isinstance(s, (int, np.integer)) else 1
    return float(n)


def _is_const(var) -> bool:
    """A value known when the program is compiled: a `const`, or the output of a `constexpr_*` op."""
    op = var.op
    if op is None:  # a function input (val None) or a literal bound inline
        return var.val is not None
    return op.op_type == "const" or op.op_type.startswith("constexpr_")


def _const_bytes(var) -> float:
    """Stored bytes of a constant operand: a constexpr op's stored inputs, else the value itself."""
    op = var.op
    if op is not None and op.op_type.startswith("constexpr_"):
        # stored tensors (data, per-channel scales); scalar parameters live in the instruction
        return float(sum(_nbytes(v) for v in _input_vars(op) if _is_const(v) and len(v.shape or ()) > 0))
    return _nbytes(var)


def _input_vars(op) -> list:
    out = []
    for v in op.inputs.values():
        out.extend(v if isinstance(v, (tuple, list)) else [v])
    return out


def _shape(var) -> tuple[int, ...]:
    return tuple(int(s) if isinstance(s, (int, np.integer)) else 1 for s in var.shape)


def _val(op, name, default=None):
    v = op.inputs.get(name)
    return default if v is None or v.val is None else v.val


def _conv_flops(op, out, n_out: float) -> tuple[str, float, object]:
    w = op.inputs["weight"]
    ws = _shape(w)
    osh = _shape(out)  # weight.shape[1] is already Cin/groups
    flops = 2.0 * osh[0] * ws[0] * ws[1] * math.prod(ws[2:]) * math.prod(osh[2:])
    if "bias" in op.inputs:
        flops += n_out
    return "conv", flops, w


def _conv_transpose_flops(op, out, n_out: float) -> tuple[str, float, object]:
    w = op.inputs["weight"]
    ws = _shape(w)
    ish = _shape(op.inputs["x"])
    return "conv", 2.0 * ish[0] * ish[1] * ws[1] * math.prod(ws[2:]) * math.prod(ish[2:]), w


def _matmul_flops(op, out, n_out: float) -> tuple[str, float, object]:
    x, y = op.inputs["x"], op.inputs["y"]
    xs = _shape(x)
    k = xs[-2] if bool(_val(op, "transpose_x", False)) else xs[-1]
    if len(xs) == 1:
        k = xs[0]
    return "matmul", 2.0 * n_out * k, y


def _linear_flops(op, out, n_out: float) -> tuple[str, float, object]:
    x, w = op.inputs["x"], op.inputs["weight"]
    din = _shape(x)[-1]
    flops = 2.0 * n_out * din + (n_out if "bias" in op.inputs else 0)
    return "matmul", flops, w


def _sdpa_flops(op, out, n_out: float) -> tuple[str, float, object]:
    q, k, v = (_shape(op.inputs[n]) for n in ("query", "key", "value"))
    lq, e = q[-2], q[-1]
    s, ev = k[-2], v[-1]
    batch = math.prod(q[:-2])
    return "matmul", batch * (2.0 * lq * s * e + 2.0 * lq * s * ev + 7.0 * lq * s), op.inputs["key"]


#: The MAC-array cost rules of the op table: (kind, FLOPs, the weight operand) of one op.
_MAC_RULES = {
    "conv": _conv_flops,
    "conv_transpose": _conv_transpose_flops,
    "matmul": _matmul_flops,
    "linear": _linear_flops,
    "sdpa": _sdpa_flops,
}


def _flops(op) -> tuple[str, float, object]:
    """(kind, FLOPs, the MAC op's weight operand Var or None), by the op's cost rule in the op table."""
    entry = optable.info(op.op_type)
    rule = entry.cost if entry is not None else "none"
    out = op.outputs[0]
    n_out = _numel(out.shape)
    if rule in _MAC_RULES:
        return _MAC_RULES[rule](op, out, n_out)
    if rule == "per_output":
        return "vector", entry.flops * n_out, None
    if rule == "per_input":
        return "vector", entry.flops * _numel(op.inputs["x"].shape), None
    if rule in ("move", "view"):
        return rule, 0.0, None
    return "other", n_out, None


def _int8_activation(op) -> bool:
    """A MAC op fed by `dequantize`: activations travel as int8 (W8A8, ane-private-api.md §4.4)."""
    for name in ("x", "query"):
        v = op.inputs.get(name)
        if v is not None and v.op is not None and v.op.op_type == "dequantize":
            return True
    return False


def _weight_and_act_bytes(op) -> tuple[float, float]:
    """(bytes of its constant operands as stored, bytes of its other inputs plus its outputs); an
    operand bound twice counts once."""
    weight = act = 0.0
    seen: set[int] = set()
    for v in _input_vars(op):
        if id(v) in seen:
            continue
        seen.add(id(v))
        if _is_const(v):
            # small parameters (strides, axes, scalars) are part of the instruction, not weights
            if len(v.shape or ()) > 0 and _numel(v.shape) > 4:
                weight += _const_bytes(v)
        else:
            act += _nbytes(v)
    act += sum(_nbytes(o) for o in op.outputs)
    return weight, act


def count_ops(program, function: str = "main") -> ProgramCost:
    """Count FLOPs and bytes of every op of `program` (a coremltools Program or an `anekit.mil.MilModel`).

    `const` and `constexpr_*` ops are folded into their consumers' weights; everything else becomes one
    `OpCost`. Ops without a FLOP rule in the op table (`anekit.mil.optable`) are counted as 1 FLOP
    per output element and named in `notes`, so an estimate never silently ignores work.
    """
    from ..mil.model import MilModel

    if isinstance(program, MilModel):
        program = program.program()
    func = program.functions[function]
    ops: list[OpCost] = []
    unknown: set[str] = set()
    for op in func.operations:
        t = op.op_type
        if t == "const" or t.startswith("constexpr_"):
            continue
        kind, flops, operand = _flops(op)
        if kind == "other":
            unknown.add(t)
            kind = "vector"
        weight, act = _weight_and_act_bytes(op)
        operand_bytes = 0.0
        if operand is not None:
            operand_bytes = _const_bytes(operand) if _is_const(operand) else _nbytes(operand)
        ops.append(
            OpCost(
                name=op.name,
                op_type=t,
                kind=kind,
                flops=float(flops),
                weight_bytes=weight,
                operand_bytes=operand_bytes,
                act_bytes=act,
                int8_act=kind in MAC_KINDS and _int8_activation(op),
                written_bytes=sum(_nbytes(o) for o in op.outputs) if kind == "move" else None,
            )
        )
    notes = ()
    if unknown:
        notes = (
            f"ops without a FLOP rule, counted as 1 FLOP per output element: {', '.join(sorted(unknown))}",
        )
    return ProgramCost(
        ops=tuple(ops),
        input_bytes=float(sum(_nbytes(v) for v in func.inputs.values())),
        output_bytes=float(sum(_nbytes(v) for v in func.outputs)),
        notes=notes,
    )


def summarize(ops: Iterable[OpCost]) -> dict[str, float]:
    """FLOPs per kind, for reports."""
    out: dict[str, float] = {}
    for o in ops:
        out[o.kind] = out.get(o.kind, 0.0) + o.flops * o.count
    return out
