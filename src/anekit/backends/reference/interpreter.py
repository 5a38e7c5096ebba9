"""Executes a coremltools MIL program with NumPy, one op at a time, in textual (SSA) order.

Compiling turns the program into a flat list of steps over numbered slots: constants (and every op
whose inputs are all constant, e.g. `constexpr_*`) are evaluated once, up front, and kept in the
compute precision, so a run does no work but the ops themselves.
"""

from __future__ import annotations

import numpy as np

from ..._coreml import types
from ...mil.dtypes import of_builtin
from ..base import Kernel, TensorSpec
from . import ops as _ops  # noqa: F401  (fills OPS)
from .registry import NUMERICS, OPS, VALUE_PRESERVING, OpContext, UnsupportedOp


def var_spec(var) -> TensorSpec:
    """Name, shape and dtype of a coremltools Var, shapes with `None` for symbolic dims."""
    t = var.sym_type
    if types.is_tensor(t):
        shape = tuple(int(d) if isinstance(d, (int, np.integer)) else None for d in t.get_shape())
        return TensorSpec(var.name, shape, of_builtin(t.get_primitive()).name)
    if types.is_state(t):
        inner = t.wrapped_type()
        shape = tuple(int(d) if isinstance(d, (int, np.integer)) else None for d in inner.get_shape())
        return TensorSpec(var.name, shape, of_builtin(inner.get_primitive()).name)
    return TensorSpec(var.name, (), of_builtin(t).name)


def _only_moves_values(op) -> bool:
    """Whether every output element of `op` is a copy of an input element of the same dtype, so the
    result needs no rounding to its declared type (reshape, slices, concat, ...)."""
    if op.op_type not in VALUE_PRESERVING:
        return False
    dtypes = set()
    for value in op.inputs.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if types.is_tensor(v.sym_type) and types.is_float(v.sym_type.get_primitive()):
                dtypes.add(var_spec(v).dtype)
    return all(var_spec(v).dtype in dtypes and len(dtypes) == 1 for v in op.outputs)


class ReferenceKernel(Kernel):
    """A program compiled for the NumPy reference backend."""

    backend = "reference"

    def __init__(
        self, program, function: str = "main", numerics: str = "ane", ignore_sdpa_mask: bool = False
    ):
        if numerics not in NUMERICS:
            raise ValueError(f"numerics must be one of {', '.join(NUMERICS)}, not {numerics!r}")
        if function not in program.functions:
            raise ValueError(f"program has no function {function!r} (it has {', '.join(program.functions)})")
        self.numerics = NUMERICS[numerics]
        self.ignore_sdpa_mask = ignore_sdpa_mask
        func = program.functions[function]
        self.inputs = {name: var_spec(v) for name, v in func.inputs.items()}
        self.outputs = {v.name: var_spec(v) for v in func.outputs}
        self._compile(func)

    # -- compile -------------------------------------------------------------------------------
    def _slot(self, var) -> int:
        key = id(var)
        if key not in self._slots:
            self._slots[key] = len(self._slots)
        return self._slots[key]

    def _compile(self, func) -> None:
        self._slots: dict[int, int] = {}
        self._input_slots = {name: self._slot(v) for name, v in func.inputs.items()}
        self._input_dtypes = {name: spec.dtype for name, spec in self.inputs.items()}
        consts: dict[int, object] = {}
        self._steps = []
        for op in func.operations:
            if op.op_type == "const":
                consts[self._slot(op.outputs[0])] = self._const_value(op.outputs[0])
                continue
            impl = OPS.get(op.op_type)
            if impl is None:
                raise UnsupportedOp(
                    f"the reference backend does not implement op {op.op_type!r} (op {op.name!r}); "
                    f"it implements: {', '.join(sorted(OPS))}"
                )
            args = []
            all_const = True
            for name, value in op.inputs.items():
                if isinstance(value, (tuple, list)):
                    slots = tuple(self._slot(v) for v in value)
                    all_const &= all(s in consts for s in slots)
                    args.append((name, slots))
                else:
                    s = self._slot(value)
                    all_const &= s in consts
                    args.append((name, s))
            outs = tuple(self._slot(v) for v in op.outputs)
            casts = tuple(self._out_cast(v) for v in op.outputs)
            if _only_moves_values(op):  # outputs already hold values of their dtype: no rounding
                casts = tuple((None, shape) for _, shape in casts)
            ctx = OpContext(self.numerics, op, self.ignore_sdpa_mask)
            step = (impl, ctx, tuple(args), outs, casts)
            if all_const:  # constant-fold: evaluated once, kept in compute precision
                env = dict(consts)
                self._exec(step, env)
                for s in outs:
                    consts[s] = env[s]
            else:
                self._steps.append(step)
        self._consts = consts
        self._n_slots = len(self._slots)
        self._output_slots = {v.name: self._slot(v) for v in func.outputs}

    def _const_value(self, var):
        val = var.val
        if isinstance(val, str):
            return val
        return self.numerics.store(val, var_spec(var).dtype)

    def _out_cast(self, var):
        spec = var_spec(var)
        return spec.dtype, spec.shape

    # -- run -----------------------------------------------------------------------------------
    @staticmethod
    def _exec(step, env) -> None:
        impl, ctx, args, outs, casts = step
        kwargs = {}
        for name, s in args:
            kwargs[name] = tuple(env[i] for i in s) if isinstance(s, tuple) else env[s]
        result = impl(ctx, **kwargs)
        if len(outs) == 1:
            result = (result,)
        elif not isinstance(result, (tuple, list)) or len(result) != len(outs):
            raise RuntimeError(f"reference op {ctx.op.op_type!r} returned the wrong number of outputs")
        store = ctx.numerics.store
        for s, value, (dt, shape) in zip(outs, result, casts):
            value = np.asarray(value) if dt is None else store(value, dt)
            if len(value.shape) != len(shape) or any(
                d is not None and d != g for d, g in zip(shape, value.shape)
            ):
                raise RuntimeError(
                    f"reference op {ctx.op.op_type!r} ({ctx.op.name!r}) produced shape {value.shape}, "
                    f"the program declares {shape}"
                )
            env[s] = value

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env: dict[int, object] = dict(self._consts)
        for name, slot in self._input_slots.items():
            env[slot] = self.numerics.store(inputs[name], self._input_dtypes[name])
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            for step in self._steps:
                self._exec(step, env)
        return {name: self._finish(name, env[slot]) for name, slot in self._output_slots.items()}

    def _finish(self, name: str, value) -> np.ndarray:
        """Outputs come back in their declared dtype (float16 for fp16 under "ane")."""
        return self.numerics.output(np.asarray(value), self.outputs[name].dtype)
