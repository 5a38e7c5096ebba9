"""Executes a coremltools MIL program with NumPy, one op at a time, in textual (SSA) order.

Compiling turns the program into a flat list of steps over numbered slots: constants (and every op
whose inputs are all constant, e.g. `constexpr_*`) are evaluated once, up front, and kept in the
compute precision, so a run does no work but the ops themselves.

Nothing a program or its inputs can do escapes as a raw Python error: a failing op becomes a
`ProgramError` naming the op and its function, or a `KernelInputError` when the op failed on sizes
the caller chose for flexible (`?`) dims; a tensor over `MAX_TENSOR_BYTES` is refused before it is
allocated (`TensorTooLarge`).
"""

from __future__ import annotations

import numpy as np

from ..._coreml import types
from ...errors import AnekitError
from ..base import Binding, Kernel, KernelInputError, TensorSpec, check_inputs, pick_function, var_spec
from . import ops as _ops  # noqa: F401  (fills OPS)
from .fp16 import round_fp16, round_fp16_, round_fp16_into
from .registry import (
    FRESH_RESULT,
    MAX_TENSOR_BYTES,
    NUMERICS,
    OPS,
    PREPARE,
    VALUE_PRESERVING,
    OpContext,
    ProgramError,
    TensorTooLarge,
    UnsupportedOp,
)


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


class EmptyResult(ValueError):
    """An op produced a tensor with no elements (turned into an anekit error naming the op)."""


class ShapeMismatch(ValueError):
    """An op produced a shape other than the declared one (turned into an anekit error naming the op;
    with flexible operands, e.g. a constant-size slice of a too-small input, an input error)."""


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


class ReferenceKernel(Kernel):
    """A program compiled for the NumPy reference backend.

    function: the program function to run (None: the program's default, see `pick_function`).
    """

    backend = "reference"

    def __init__(
        self, program, function: str | None = None, numerics: str = "ane", ignore_sdpa_mask: bool = False
    ):
        if numerics not in NUMERICS:
            raise ProgramError(f"numerics must be one of {', '.join(NUMERICS)}, not {numerics!r}")
        self.function = pick_function(program, function)
        self.numerics = NUMERICS[numerics]
        self.ignore_sdpa_mask = ignore_sdpa_mask
        func = program.functions[self.function]
        try:
            self.inputs = {name: var_spec(v) for name, v in func.inputs.items()}
            self.outputs = {v.name: var_spec(v) for v in func.outputs}
        except ValueError as e:  # a type the reference backend has no storage for
            raise UnsupportedOp(f"function {self.function!r}: {e}") from e
        self._input_checks(func)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            self._compile(func)

    # -- compile -------------------------------------------------------------------------------
    def _slot(self, var) -> int:
        key = id(var)
        if key not in self._slots:
            self._slots[key] = len(self._slots)
        return self._slots[key]

    def _where(self, op) -> str:
        return f"op {op.name!r} ({op.op_type}, function {self.function!r})"

    def _input_checks(self, func) -> None:
        """Which input dims are flexible (and which symbol each binds), and static inputs' sizes."""
        #: symbol -> [(input, dim)]: every place a flexible dim occurs among the inputs
        self._flex: dict[object, list[tuple[str, int]]] = {}
        self._flex_dims: list[tuple[str, int, object]] = []
        for name, v in func.inputs.items():
            t = v.sym_type.wrapped_type() if types.is_state(v.sym_type) else v.sym_type
            shape = t.get_shape() if types.is_tensor(t) else ()
            for i, d in enumerate(shape):
                if not isinstance(d, (int, np.integer)):
                    self._flex.setdefault(d, []).append((name, i))
                    self._flex_dims.append((name, i, d))
                elif d == 0:
                    raise ProgramError(
                        f"function {self.function!r} declares input {name!r} with size 0 in dim {i}; the "
                        f"reference backend, like the engine, runs no empty tensors"
                    )
            self._check_static_size(f"input {name!r}", self.inputs[name])

    def _check_static_size(self, what: str, spec: TensorSpec) -> bool:
        """TensorTooLarge if `spec` has a static shape over MAX_TENSOR_BYTES; whether it is static."""
        if None in spec.shape or spec.dtype == "string":
            return None not in spec.shape
        n = 1
        for d in spec.shape:
            n *= d
        nbytes = n * self.numerics.storage(spec.dtype).itemsize
        if nbytes > MAX_TENSOR_BYTES:
            raise TensorTooLarge(
                f"{what} has shape {_shape_text(spec.shape)} ({spec.dtype}): {nbytes / 2**30:.3g} GiB, "
                f"over the reference backend's limit of {MAX_TENSOR_BYTES / 2**30:g} GiB per tensor "
                f"(MAX_TENSOR_BYTES)"
            )
        return True

    def _compile(self, func) -> None:
        self._slots: dict[int, int] = {}
        self._input_slots = {name: self._slot(v) for name, v in func.inputs.items()}
        self._input_dtypes = {name: spec.dtype for name, spec in self.inputs.items()}
        consts: dict[int, object] = {}
        self._steps = []
        self._step_ops = []  # the Operation of each step, for error messages
        for op in func.operations:
            try:
                if op.op_type == "const":
                    consts[self._slot(op.outputs[0])] = self._const_value(op.outputs[0])
                    continue
                step, all_const = self._compile_op(op, consts)
            except AnekitError as e:
                raise self._op_failure(op, {}, e, {}) from e
            except (ValueError, TypeError, NotImplementedError) as e:
                raise UnsupportedOp(f"{self._where(op)}: cannot be compiled: {e}") from e
            if all_const:  # constant-fold: evaluated once, kept in compute precision
                env = dict(consts)
                try:
                    self._exec(step, env)
                except Exception as e:  # noqa: BLE001 - every failure becomes an anekit error
                    raise self._op_failure(op, env, e, {}) from e
                for s in step[3]:
                    consts[s] = env[s]
            else:
                self._steps.append(step)
                self._step_ops.append(op)
        self._consts = consts
        self._n_slots = len(self._slots)
        self._output_slots = {v.name: self._slot(v) for v in func.outputs}
        # the run's environment is a list indexed by slot, constants already in place
        self._env_template: list = [None] * self._n_slots
        for slot, value in consts.items():
            self._env_template[slot] = value
        self._plan = [_plan_step(step, consts) for step in self._steps]
        #: the constants' arrays, which a run never hands out as its own
        self._const_ids = frozenset(id(v) for v in consts.values())
        self._frees = self._last_uses(consts)
        if self.numerics.name == "ane":
            _sink_concats(self._steps, self._step_ops, self._plan, consts)

    def _last_uses(self, consts: dict) -> list[tuple[int, ...]]:
        """For each step, the slots whose value no later step reads (and that are no input, constant
        or output): dropped from the run's environment right after it, so an intermediate's memory
        goes back to the allocator while it is still in cache and the next result reuses it."""
        keep = set(self._input_slots.values()) | set(consts) | set(self._output_slots.values())
        last: dict[int, int] = {}
        for i, (_, _, args, outs, _) in enumerate(self._steps):
            for _, s in args:
                for slot in s if isinstance(s, tuple) else (s,):
                    last[slot] = i
            for slot in outs:
                last.setdefault(slot, i)  # a result nothing reads: dropped at once
        frees: list[list[int]] = [[] for _ in self._steps]
        for slot, i in last.items():
            if slot not in keep:
                frees[i].append(slot)
        return [tuple(f) for f in frees]

    def _compile_op(self, op, consts) -> tuple[tuple, bool]:
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
        specs = [var_spec(v) for v in op.outputs]
        static = all([self._check_static_size(f"its output {s.name!r}", s) for s in specs])
        for spec in specs:
            if 0 in spec.shape:
                raise ProgramError(
                    f"its output {spec.name!r} is declared empty, shape {_shape_text(spec.shape)}; the "
                    f"reference backend, like the engine, runs no empty tensors"
                )
        # (dtype to round to, declared shape, whether a flexible dim could make the result empty)
        casts = tuple((s.dtype, s.shape, None in s.shape) for s in specs)
        if _only_moves_values(op):  # outputs already hold values of their dtype: no rounding
            casts = tuple((None, shape, flex) for _, shape, flex in casts)
        ctx = OpContext(self.numerics, op, self.ignore_sdpa_mask, sizes_checked=static)
        return (impl, ctx, tuple(args), outs, casts), all_const

    def _const_value(self, var):
        val = var.val
        if isinstance(val, str):
            return val
        return self.numerics.store(val, var_spec(var).dtype)

    # -- errors --------------------------------------------------------------------------------
    def _operands(self, op, env) -> tuple[list[str], list[str]]:
        """Each tensor operand as `name (shape)`, and where its flexible dims come from."""
        described, flexible = [], []
        for name, value in op.inputs.items():
            for v in value if isinstance(value, (tuple, list)) else (value,):
                slot = self._slots.get(id(v))
                got = env.get(slot) if slot is not None else None
                if not isinstance(got, np.ndarray) or got.ndim == 0:
                    continue
                described.append(f"{name}={v.name} {_shape_text(got.shape)}")
                t = v.sym_type
                if not types.is_tensor(t):
                    continue
                for i, d in enumerate(t.get_shape()):
                    if isinstance(d, (int, np.integer)):
                        continue
                    size = got.shape[i] if i < got.ndim else "?"
                    src = " = ".join(f"input {n!r} dim {k}" for n, k in self._flex.get(d, ())) or "flexible"
                    flexible.append(f"{name} dim {i} ({size}) is {src}")
        return described, flexible

    def _op_failure(self, op, env, e: BaseException, given: dict[str, tuple]) -> AnekitError:
        """The anekit error for `e`, raised by `op`'s step: names the op, its function and operands
        (`given`: the shapes of the inputs of the run)."""
        where = self._where(op)
        if isinstance(e, AnekitError):
            try:
                return type(e)(f"{where}: {e}")
            except TypeError:  # an error class whose constructor takes more than a message
                return ProgramError(f"{where}: {type(e).__name__}: {e}")
        if isinstance(e, MemoryError):
            return TensorTooLarge(f"{where}: ran out of memory building its result ({e or 'MemoryError'})")
        described, flexible = self._operands(op, env)
        operands = f" (operands: {', '.join(described)})" if described else ""
        ours = isinstance(e, (EmptyResult, ShapeMismatch))
        detail = str(e) if ours else f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if flexible:
            shapes = ", ".join(f"{n!r} {_shape_text(s)}" for n, s in given.items())
            return KernelInputError(
                f"{where} cannot run on the sizes given for the flexible (?) input dims: {detail}. "
                f"{'; '.join(flexible)}{operands}. Inputs given: {shapes}. Flexible dims that meet in one "
                f"op must agree (or be 1 where the op broadcasts)"
            )
        return ProgramError(f"{where}{': ' if ours else ' failed: '}{detail}{operands}")

    # -- run -----------------------------------------------------------------------------------
    @staticmethod
    def _exec(step, env) -> None:
        # Cyclomatic complexity 17, kept in one piece on purpose: this is the interpreter loop's
        # body, run once per op per run, and each helper call it would make costs a Python call
        # per op (or per output) on every run; the branches are the argument gathering, the output
        # count check and the per-output rounding and shape checks, in that order.
        impl, ctx, args, outs, casts = step
        kwargs = {}
        for name, s in args:
            kwargs[name] = tuple(env[i] for i in s) if isinstance(s, tuple) else env[s]
        result = impl(ctx, **kwargs)
        if len(outs) == 1:
            result = (result,)
        elif not isinstance(result, (tuple, list)) or len(result) != len(outs):
            raise ProgramError("the reference implementation returned the wrong number of outputs")
        store = ctx.numerics.store
        for s, value, (dt, shape, flexible) in zip(outs, result, casts):
            value = np.asarray(value) if dt is None else store(value, dt)
            _check_result(value, shape, flexible)
            env[s] = value

    def _check_sizes(self, inputs: dict[str, np.ndarray]) -> None:
        """No empty input; every flexible dim shared by several inputs bound to one size."""
        for name, arr in inputs.items():
            shape = np.shape(arr)
            if 0 in shape:
                raise KernelInputError(
                    f"input {name!r} has size 0 in dim {shape.index(0)} (shape {_shape_text(shape)}); the "
                    f"reference backend, like the engine, runs no empty tensors: give every dim at least 1"
                )
        seen: dict[object, tuple[str, int, int]] = {}
        for name, i, sym in self._flex_dims:
            shape = np.shape(inputs[name])
            if i >= len(shape):
                raise KernelInputError(
                    f"input {name!r} has shape {_shape_text(shape)}, expected {self.inputs[name]}"
                )
            size = shape[i]
            first = seen.setdefault(sym, (name, i, size))
            if first[2] != size:
                raise KernelInputError(
                    f"input {name!r} dim {i} has size {size} but input {first[0]!r} dim {first[1]} has size "
                    f"{first[2]}: the program declares them as one flexible dim ({sym}), so they must agree"
                )

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self._input_slots if n not in inputs]
        if missing:
            raise KernelInputError(
                f"missing input(s): {', '.join(missing)} (the kernel takes {', '.join(self.inputs)})"
            )
        self._check_sizes(inputs)
        stored = {}
        for name in self._input_slots:
            try:
                stored[name] = self.numerics.store(inputs[name], self._input_dtypes[name])
            except (ValueError, TypeError) as e:
                what = self._input_dtypes[name]
                raise KernelInputError(f"input {name!r} cannot be read as {what}: {e}") from e
        return self._execute(stored, inputs)

    def _execute(self, stored: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on inputs already in their storage (`stored`; `inputs`: as given, for errors)."""
        raw = self._evaluate(stored, inputs)
        return {name: self._finish(name, value) for name, value in raw.items()}

    def _evaluate(self, stored: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> dict[str, object]:
        """Each output's value as the run left it, in the interpreter's storage (no copy: it may be an
        input, a constant, or a view of one, when the program returns those)."""
        env = self._env_template.copy()
        for name, slot in self._input_slots.items():
            env[slot] = stored[name]
        frees = self._frees
        i = 0
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            try:
                for i, step in enumerate(self._plan):  # noqa: B007 - i names the failing op
                    step(env)
                    for slot in frees[i]:
                        env[slot] = None
            except Exception as e:  # noqa: BLE001 - every failure becomes an anekit error
                known = {slot: v for slot, v in enumerate(env) if v is not None}
                given = {n: np.shape(a) for n, a in inputs.items()}
                raise self._op_failure(self._step_ops[i], known, e, given) from e
        return {name: env[slot] for name, slot in self._output_slots.items()}

    def new_binding(self) -> ReferenceBinding:
        return ReferenceBinding(self)

    def _finish(self, name: str, value) -> np.ndarray:
        """Outputs come back in their declared dtype (float16 for fp16 under "ane")."""
        return self.numerics.output(np.asarray(value), self.outputs[name].dtype)


def _check_result(value: np.ndarray, shape: tuple, flexible: bool) -> None:
    """ShapeMismatch / EmptyResult unless `value` has the declared `shape` (None: any size) and,
    where a flexible dim could make it empty, some elements."""
    if len(value.shape) != len(shape) or any(d is not None and d != g for d, g in zip(shape, value.shape)):
        raise ShapeMismatch(
            f"produced shape {_shape_text(value.shape)}, the program declares "
            f"{_shape_text('?' if d is None else d for d in shape)}"
        )
    if flexible and not value.size:
        raise EmptyResult(
            f"produced an empty tensor, shape {_shape_text(value.shape)}; the reference backend, "
            f"like the engine, runs no empty tensors"
        )


#: Ops whose float32 result a plan step can compute straight into a given array (`out=`).
_SINKABLE = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "matmul": np.matmul}
#: Shape-only ops a concat operand may pass through on its way from its producer (views of it).
_RESHAPES = frozenset({"reshape", "expand_dims", "squeeze"})


def _sink_concats(steps, ops, plan, consts) -> None:
    """Outputs preallocated: where a `concat` joins results of `add`/`sub`/`mul`/`matmul` steps (or
    reshapes of them) along an axis with only size-1 dims before it (each operand's place in the
    result is one contiguous run), those steps compute straight into their place in the concat's
    result, allocated by the first of them to run; the concat then copies only the other operands.
    Same operations on the same values (NumPy's `out=`), rounded in place as before: same bits. The
    training kernels end in such a concat of every output; this saves its copy (~1.5 ms a layer
    for `tiny`). Rewrites `plan` in place."""
    producer = {}
    for i, (_, _, _, outs, _) in enumerate(steps):
        for slot in outs:
            producer[slot] = i
    claimed: set[int] = set()
    for k, (_, _, args, outs, casts) in enumerate(steps):
        if ops[k].op_type != "concat" or len(outs) != 1:
            continue
        kw = dict(args)
        values = kw.get("values")
        axis_slot = kw.get("axis")
        il = kw.get("interleave")
        if not isinstance(values, tuple) or axis_slot not in consts or (il is not None and il not in consts):
            continue
        if il is not None and bool(consts[il]):
            continue
        ((_, shape, flexible),) = casts
        if flexible or None in shape:
            continue
        axis = int(consts[axis_slot])
        axis = axis + len(shape) if axis < 0 else axis
        if any(d != 1 for d in shape[:axis]):
            continue
        direct = _direct_operands(values, shape, axis, steps, ops, producer, consts, claimed)
        if not direct:
            continue
        out_slot = outs[0]
        for p, index in direct.values():
            plan[p] = _sink_step(plan[p], steps[p], ops[p], consts, out_slot, tuple(shape), index)
        plan[k] = _concat_into(plan[k], values, direct, out_slot, tuple(shape), axis)


def _direct_operands(values, shape, axis, steps, ops, producer, consts, claimed) -> dict:
    """Operand position -> (producer step, index of its place in the concat result), for the
    operands that come from a sinkable step through reshapes only."""
    direct = {}
    start = 0
    for pos, v in enumerate(values):
        if v not in producer:
            return {}
        vshape = steps[producer[v]][4][0][1]
        if None in vshape:
            return {}
        width = vshape[axis]
        i = producer[v]
        while i is not None and ops[i].op_type in _RESHAPES:
            x_slot = dict(steps[i][2]).get("x")
            i = producer.get(x_slot) if isinstance(x_slot, int) else None
        if i is not None and ops[i].op_type in _SINKABLE and len(steps[i][3]) == 1 and i not in claimed:
            ((dt, op_shape, flexible),) = steps[i][4]
            if (
                dt == "fp16"
                and not flexible
                and None not in op_shape
                and np.prod(op_shape) == np.prod(vshape)
            ):
                direct[pos] = (i, tuple([slice(None)] * axis + [slice(start, start + width)]))
                claimed.add(i)
        start += width
    return direct if start == shape[axis] else {}


def _sink_step(original, step, op, consts: dict, out_slot: int, out_shape: tuple, index: tuple):
    """`original` (an add/sub/mul/matmul plan step) computing into `index` of the concat result."""
    _, _, args, (res_slot,), ((_, op_shape, _),) = step
    op_shape = tuple(op_shape)
    fn = _SINKABLE[op.op_type]
    kw = dict(args)
    x_slot, y_slot = kw.get("x"), kw.get("y")
    if not isinstance(x_slot, int) or not isinstance(y_slot, int):
        return original
    flags = [kw.get(name) for name in ("transpose_x", "transpose_y")]
    if any(f is not None and f not in consts for f in flags):
        return original
    swap_x, swap_y = (f is not None and bool(consts[f]) for f in flags)
    matmul = op.op_type == "matmul"
    f32 = np.dtype(np.float32)

    def run(env):
        a, b = env[x_slot], env[y_slot]
        if not (type(a) is np.ndarray and type(b) is np.ndarray and a.dtype == f32 and b.dtype == f32):
            original(env)  # operands of another dtype: as before, into a new array (copied by the concat)
            return
        if matmul:
            if a.ndim < 2 or b.ndim < 2:
                original(env)
                return
            if swap_x:
                a = np.swapaxes(a, -1, -2)
            if swap_y:
                b = np.swapaxes(b, -1, -2)
            got = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
        else:
            got = np.broadcast_shapes(a.shape, b.shape)
        if got != op_shape:  # not what the program declares: the plain step reports it
            original(env)
            return
        buf = env[out_slot]
        if buf is None:
            buf = env[out_slot] = np.empty(out_shape, f32)
        dest = buf[index].reshape(op_shape)  # a view: the place is one contiguous run
        fn(a, b, out=dest)
        round_fp16_(dest)
        env[res_slot] = dest

    return run


def _concat_into(original, values: tuple, direct: dict, out_slot: int, out_shape: tuple, axis: int):
    """The concat step of `_sink_concats`: the result its direct operands were computed into, the
    others copied into their places."""
    lead = (slice(None),) * axis

    def run(env):
        buf = env[out_slot]
        if buf is None:  # no direct operand computed into it (operands of another dtype): as before
            original(env)
            return
        start = 0
        for pos, v in enumerate(values):
            val = env[v]
            width = val.shape[axis]
            if pos not in direct or not np.may_share_memory(val, buf):
                buf[lead + (slice(start, start + width),)] = val
            start += width

    return run


def _plan_step(step, consts: dict):
    """One compiled step as a function of the run's environment (a list by slot): what
    `ReferenceKernel._exec` does, with everything known at compile time resolved once (constant
    operands bound, the rounding and the shape check chosen), so a run pays one Python call per op
    plus the op's own NumPy work."""
    impl, ctx, args, outs, casts = step
    fixed: dict[str, object] = {}
    single: list[tuple[str, int]] = []
    multi: list[tuple[str, tuple[int, ...]]] = []
    for name, s in args:
        if isinstance(s, tuple):
            multi.append((name, s))
        elif s in consts:
            fixed[name] = consts[s]
        else:
            single.append((name, s))
    prepared = None
    if not multi and len(single) == 1 and single[0][0] == "x" and ctx.op.op_type in PREPARE:
        try:
            prepared = PREPARE[ctx.op.op_type](ctx, **fixed)
        except Exception:  # noqa: BLE001 - odd constants: the implementation reports them when run
            prepared = None
    if prepared is not None:
        ((_, s1),) = single

        def call(env):
            return prepared(env[s1])

    elif multi:
        multi_t = tuple(multi)
        single_t = tuple(single)

        def call(env):
            kw = dict(fixed)
            for name, s in single_t:
                kw[name] = env[s]
            for name, ss in multi_t:
                kw[name] = tuple([env[i] for i in ss])
            return impl(ctx, **kw)

    elif len(single) == 1:
        ((n1, s1),) = single

        def call(env):
            return impl(ctx, **{n1: env[s1]}, **fixed)

    elif len(single) == 2:
        (n1, s1), (n2, s2) = single

        def call(env):
            return impl(ctx, **{n1: env[s1], n2: env[s2]}, **fixed)

    else:
        single_t = tuple(single)

        def call(env):
            kw = dict(fixed)
            for name, s in single_t:
                kw[name] = env[s]
            return impl(ctx, **kw)

    store = ctx.numerics.store
    if len(outs) != 1:

        def run(env):
            result = call(env)
            if not isinstance(result, (tuple, list)) or len(result) != len(outs):
                raise ProgramError("the reference implementation returned the wrong number of outputs")
            for s, value, (dt, shape, flexible) in zip(outs, result, casts):
                value = np.asarray(value) if dt is None else store(value, dt)
                _check_result(value, shape, flexible)
                env[s] = value

        return run
    (out,) = outs
    ((dt, shape, flexible),) = casts
    static = None not in shape and not flexible
    shape = tuple(shape)
    if static and dt == "fp16" and ctx.numerics.name == "ane":
        # the common case: an fp16 result, rounded from the fp32 the op computed in
        f32 = np.dtype(np.float32)
        fresh = ctx.op.op_type in FRESH_RESULT

        def run(env):
            value = call(env)
            if type(value) is np.ndarray and value.dtype == f32:
                flags = value.flags
                if fresh and flags.c_contiguous and flags.writeable:
                    round_fp16_(value)  # the op's own new array: rounded where it lies
                else:
                    value = round_fp16(value)
            else:
                value = store(value, "fp16")
            if value.shape != shape:
                _check_result(value, shape, False)
            env[out] = value

        return run
    if static:

        def run(env):
            value = call(env)
            value = np.asarray(value) if dt is None else store(value, dt)
            if value.shape != shape:
                _check_result(value, shape, False)
            env[out] = value

        return run

    def run(env):
        value = call(env)
        value = np.asarray(value) if dt is None else store(value, dt)
        _check_result(value, shape, flexible)
        env[out] = value

    return run


class ReferenceBinding(Binding):
    """A binding that holds each input once, in the interpreter's storage (float32 holding fp16
    values under "ane"): converted when written, whole by `write` or slice by slice by `write_slice`,
    so a run converts nothing (the decoder's packed input holds its KV cache and gains a few columns
    per call; a training layer's input holds its weights and gets new activations per call).
    `_staged` is that storage. `run_float32` hands out the fp16 outputs' float32 storage itself.

    Values are converted as the generic binding would stage them and a whole run would then store
    them: a slice is first cast to the dtype the input was written in (NumPy's assignment), then
    stored, so results are bit-identical to `Kernel.run` on the same staged input. Bindings share
    nothing mutable: two of them (of one kernel or of two) may run on two threads at once."""

    def __init__(self, kernel: ReferenceKernel):
        super().__init__(kernel)
        #: the dtype each input was last written whole in (what a generic binding would stage)
        self._written: dict[str, np.dtype] = {}

    def _store(self, name: str, value) -> np.ndarray:
        kernel = self.kernel
        try:
            return kernel.numerics.store(value, kernel._input_dtypes[name])
        except (ValueError, TypeError) as e:
            what = kernel._input_dtypes[name]
            raise KernelInputError(f"input {name!r} cannot be read as {what}: {e}") from e

    def write(self, **inputs) -> None:
        arrays = check_inputs(self.kernel.inputs, inputs, partial=True)
        for name, a in arrays.items():
            stored = self._store(name, a)
            if stored is a or not stored.flags.owndata or not stored.flags.writeable:
                stored = np.array(stored, copy=True)  # ours alone: later slices are written into it
            self._staged[name] = stored
            self._written[name] = a.dtype

    def write_slice(self, name: str, index, values) -> None:
        stored = self._staged.get(name)
        if stored is None:
            known = ", ".join(self.kernel.inputs)
            raise KernelInputError(
                f"write_slice: input {name!r} has no staged value yet (write it whole first); the "
                f"kernel takes {known}"
            )
        written = self._written[name]
        try:
            target_shape = stored[index].shape
            v = values
            if not (
                type(v) is np.ndarray
                and v.shape == target_shape
                and v.dtype in (_F16, _F32)
                and written in (_F16, _F32)
                and self.kernel.numerics.name == "ane"
                and self.kernel._input_dtypes[name] == "fp16"
            ):
                # as the generic binding stages it: cast to the dtype the input was written in
                v = np.empty(target_shape, dtype=written)
                v[...] = values
            if not (v.dtype == _F32 and self._round_into(stored, index, v)):
                # float32 or float16 into fp16 storage: the rounding of the cast to float16 and back
                stored[index] = self._store(name, v)
        except (IndexError, ValueError, TypeError) as e:
            raise KernelInputError(f"write_slice into input {name!r} {tuple(stored.shape)}: {e}") from e

    @staticmethod
    def _round_into(stored: np.ndarray, index, v: np.ndarray) -> bool:
        """Round float32 `v` to fp16 values straight into `stored[index]` when that is a view with
        contiguous rows (a block of a bound input); False (nothing written) otherwise."""
        target = stored[index]
        if target.ndim == 0 or not v.flags.c_contiguous or target.strides[-1] != _F32.itemsize:
            return False
        if np.may_share_memory(v, stored):  # values read from the input itself: assignment copes
            return False
        width = target.shape[-1]
        rows = target.reshape(-1, width) if width else target
        if not width or not np.may_share_memory(rows, stored):  # an index that copies: not a view
            return False
        round_fp16_into(v.reshape(-1, width), rows)
        return True

    def _inputs_ready(self) -> None:
        kernel = self.kernel
        missing = [n for n in kernel.inputs if n not in self._staged]
        if missing:
            raise KernelInputError(f"binding has no value yet for input(s): {', '.join(missing)}")
        kernel._check_sizes(self._staged)

    def run(self, **inputs) -> dict[str, np.ndarray]:
        if inputs:
            self.write(**inputs)
        self._inputs_ready()
        return self.kernel._execute(self._staged, self._staged)

    __call__ = run

    def run_float32(self, **inputs) -> dict[str, np.ndarray]:
        """`run`, with every float output as float32: under "ane" an fp16 output is its float32
        storage itself (the values a float16 output widens to, without the round trip), handed out
        as a new array of the caller's (copied only when the program returns an input, a constant,
        a view of one, or one array under two names)."""
        kernel = self.kernel
        if kernel.numerics.name != "ane":
            return super().run_float32(**inputs)
        if inputs:
            self.write(**inputs)
        self._inputs_ready()
        raw = kernel._evaluate(self._staged, self._staged)
        held = {id(a) for a in self._staged.values()}
        out: dict[str, np.ndarray] = {}
        for name, value in raw.items():
            value = np.asarray(value)
            if value.dtype.kind != "f":
                out[name] = kernel._finish(name, value)
                continue
            if (
                value.dtype != _F32
                or not value.flags.owndata
                or id(value) in held
                or id(value) in kernel._const_ids
            ):
                value = np.array(value, dtype=np.float32, copy=True)
            held.add(id(value))
            out[name] = value
        return out

    def close(self) -> None:
        super().close()
        self._written.clear()


_F16 = np.dtype(np.float16)
_F32 = np.dtype(np.float32)
