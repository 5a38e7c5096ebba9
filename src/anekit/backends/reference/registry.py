"""The reference backend's op table: one NumPy implementation per MIL op.

An implementation is a function `impl(ctx, **inputs)` registered with `@op("name", ...)`. It gets
each input of the coremltools op by its MIL name: tensors as NumPy arrays (0-d for scalars),
strings as `str`, tuple inputs (e.g. `concat.values`) as tuples of arrays. Inputs the program does
not bind are simply absent, so the Python default applies. It returns one array, or a tuple for
multi-output ops (`split`). The interpreter casts each result to the declared output dtype under
the active numerics (fp16 rounding for "ane"), so an implementation only has to compute in
`ctx.float` precision: call `ctx.f(x)` on every float operand.

An implementation may raise any exception on bad operands (the interpreter turns it into an anekit
error naming the op); before allocating a tensor whose size comes from operand *values* or flexible
dims (a range, a tile, a pad, a broadcast), it calls `ctx.check_size(shape)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...engine_limits import HOST_TENSOR_BYTES
from ...errors import AnekitError
from ...mil import optable as _optable
from ..base import NUMERICS_NAMES
from .fp16 import from_half, round_fp16, to_half

#: The largest tensor, in bytes of its storage while a program runs, the reference backend will
#: hold: 4 GiB, twice the ~2 GB at which a whole Core ML weight file already fails to load
#: (mil-text.md §2.7), so no tensor of a real model comes near it, while a program (or a mutated
#: shape) asking for terabytes is refused with a message instead of attempted (anekit.engine_limits).
MAX_TENSOR_BYTES = HOST_TENSOR_BYTES


@dataclass(frozen=True)
class Numerics:
    """How values are stored and computed.

    "ane": every fp16-typed value is rounded to fp16 after each op (the engine stores activations
    in fp16, mil-text.md §5 #1) and float math runs in fp32 (its wider accumulator); fp16 values are
    held in float32 arrays, rounded with `fp16.round_fp16` (NumPy's float16 casts are slow, worst on
    the subnormals gradients produce), and handed out as float16. "exact": float64 everywhere and no
    rounding, for gradient checks against autograd.
    """

    name: str
    float: type

    def storage(self, dtype_name: str) -> np.dtype:
        """NumPy dtype a value declared as `dtype_name` is kept in while the program runs."""
        from ...mil.dtypes import dtype

        if dtype_name in ("fp16", "fp32", "fp64", "bf16"):
            return np.dtype(self.float)
        d = dtype(dtype_name)
        if d.numpy is None:
            raise NotImplementedError(f"the reference backend has no storage for {dtype_name}")
        return d.numpy

    def store(self, value, dtype_name: str) -> np.ndarray:
        """`value` converted to the storage of `dtype_name` (rounded to fp16 under "ane")."""
        arr = np.asarray(value)
        if self.name == "ane" and dtype_name == "fp16":
            if arr.dtype == np.float16:
                return from_half(arr)
            return round_fp16(arr if arr.dtype == np.float32 else arr.astype(np.float32))
        dt = self.storage(dtype_name)
        return arr if arr.dtype == dt else arr.astype(dt)

    def output(self, value: np.ndarray, dtype_name: str) -> np.ndarray:
        """A stored value as handed to the caller: fp16 values as float16 under "ane"."""
        if self.name == "ane" and dtype_name == "fp16":
            return to_half(value)
        if self.name == "ane" and dtype_name == "fp32":
            return np.asarray(value, dtype=np.float32)
        return value


_COMPUTE_DTYPES = {"ane": np.float32, "exact": np.float64}
NUMERICS = {name: Numerics(name, _COMPUTE_DTYPES[name]) for name in NUMERICS_NAMES}


@dataclass
class OpContext:
    """What an op implementation may need beyond its inputs."""

    numerics: Numerics
    op: object  #: the coremltools Operation (for output types, op name in errors)
    ignore_sdpa_mask: bool = False
    #: every output shape is static and was checked against MAX_TENSOR_BYTES when compiled
    sizes_checked: bool = False

    @property
    def float(self) -> type:
        return self.numerics.float

    def f(self, x) -> np.ndarray:
        """`x` as an array in the compute float dtype (no copy when it already is)."""
        return np.asarray(x, dtype=self.numerics.float)

    def num(self, a: np.ndarray) -> np.ndarray:
        """A float operand in the compute dtype; an integer or bool operand untouched (kept exact)."""
        return self.f(a) if a.dtype.kind == "f" else a

    def check_size(self, shape, what: str = "a result") -> None:
        """Refuse (TensorTooLarge) to build a tensor of `shape` in compute precision that would exceed
        MAX_TENSOR_BYTES. Free when the op's output shapes were static (checked at compile time)."""
        if self.sizes_checked:
            return
        n = 1
        for d in shape:
            n *= int(d)
        itemsize = np.dtype(self.numerics.float).itemsize
        if n * itemsize > MAX_TENSOR_BYTES:
            raise TensorTooLarge(
                f"{what} of shape {tuple(int(d) for d in shape)} would take {n * itemsize / 2**30:.3g} GiB, "
                f"over the reference backend's limit of {MAX_TENSOR_BYTES / 2**30:g} GiB per tensor "
                f"(MAX_TENSOR_BYTES)"
            )

    def out_dtype(self, i: int = 0) -> str:
        """MIL dtype name of output `i` as the program declares it."""
        from ..._coreml import types
        from ...mil.dtypes import of_builtin

        t = self.op.outputs[i].sym_type
        return of_builtin(t.get_primitive() if types.is_tensor(t) else t).name


#: Ops whose outputs are copies of input elements: their results need no rounding when the
#: input and output dtypes agree (the interpreter skips it; a measurable share of a kernel's time).
#: Read from the op table (anekit.mil.optable), where each op states whether it preserves values.
VALUE_PRESERVING = _optable.VALUE_PRESERVING

OpImpl = Callable[..., object]
OPS: dict[str, OpImpl] = {}

#: Ops whose implementation (and compile-time specialization) returns a float result in memory of
#: its own, never an operand, a constant or a view of one: NumPy ufuncs, matmul and what is built
#: from them. The interpreter rounds such a result to fp16 in place (`fp16.round_fp16_`) instead of
#: making a second array; any other op's result is rounded into a new one.
FRESH_RESULT: set[str] = set()


#: Optional compile-time specializations: `prepare(ctx, **constant_inputs)` for an op whose only
#: non-constant input is `x` returns a function of `x` alone computing exactly what the op's
#: implementation computes (its constant operands parsed once), or None to keep the implementation.
PREPARE: dict[str, Callable[..., Callable[[np.ndarray], object] | None]] = {}


def prepare(*names: str) -> Callable:
    """Register a compile-time specialization (see `PREPARE`) of the ops `names`."""

    def register(fn):
        for name in names:
            PREPARE[name] = fn
        return fn

    return register


def op(*names: str) -> Callable[[OpImpl], OpImpl]:
    """Register `impl` as the reference semantics of the MIL ops `names`."""

    def register(impl: OpImpl) -> OpImpl:
        for name in names:
            if name in OPS:
                raise ValueError(f"op {name!r} registered twice")
            OPS[name] = impl
        return impl

    return register


class UnsupportedOp(AnekitError, NotImplementedError):
    """The reference backend has no implementation of an op used by the program (or of the form of
    it the program uses)."""


class ProgramError(AnekitError, ValueError):
    """A program the reference backend cannot run as written: an op failed on its operands, a value
    is out of the op's domain, the requested function does not exist. The message names the op (its
    name, type and function) or the function."""


class TensorTooLarge(ProgramError):
    """An op would build a tensor larger than MAX_TENSOR_BYTES; refused before it is allocated."""
