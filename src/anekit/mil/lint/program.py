"""Reading a MIL program for the lint rules: the walk over (nested) operations, the questions every
rule asks of a Var (tensor? constant? shape, dtype, bytes), and `_Fn`, one function flattened once
for all checks. The helpers keep their leading underscore: they are private to `anekit.mil.lint`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from ..._coreml import types
from .. import dtypes


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


def _ops(fn: _Fn, *op_types: str) -> Iterator:
    """The ops of a function whose type is one of `op_types`, in program order."""
    return (op for op in fn.ops if op.op_type in op_types)


def _conv_cin(op) -> int | None:
    """A conv's input channel count (axis 1 of `x`), None if unknown."""
    shape = _shape(op.inputs["x"])
    if len(shape) < 2 or types.symbolic.is_symbolic(shape[1]):
        return None
    return int(shape[1])
