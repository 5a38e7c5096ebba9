"""What every kernel generator shares: `KernelSpec`, the program builder, slicing a packed input,
the dynamic-weight matmul, RMSNorm, and constants.

Conventions (ane-private-api.md §1.7, §3.4, §5.4):

- one fp16 input `x` of shape `[1, C, 1, W]`, described by an input `Layout`; one fp16 output
  `out`, the `concat` on channels of the results, described by an output `Layout`;
- activations are channel-major `[channels, tokens]` blocks; weights live in the spatial tail of
  the input rows and are sliced out in the graph, so a kernel is compiled once per shape and its
  weights change without recompiling (§5.4, §6 "weights baked at compile");
- every op gets an explicit, deterministic name, so the same arguments give the same program
  text (the engine keys compiled programs by their text, §6 "identical programs share one hex id").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .._coreml import Function, Program, ct, mb, types
from ..engine_limits import MASK_VALUE
from .layout import Layout

__all__ = [
    "MASK_VALUE",
    "CONST_PRECISIONS",
    "DEFAULT_CONST_PRECISION",
    "KernelSpec",
    "Staged",
    "TransformerShape",
    "build_program",
    "input_block",
    "matmul_block",
    "float_const",
    "rmsnorm",
    "matmul_flops",
    "ops_shadowing_inputs",
]

#: How float constant tables are baked. "fp16" (the default): baked as fp16 constants, which every
#: chip runs. "fp32": an fp32 const `cast` to fp16 in the graph, which M1/M2 engines cannot run
#: (`cast` fails to compile there, ane-private-api.md §1.8, PR #6); only the float64 "exact"
#: reference oracle has a use for it (fp32-accurate tables), never a program meant for the engine.
CONST_PRECISIONS = ("fp16", "fp32")
DEFAULT_CONST_PRECISION = "fp16"
_OPSET = ct.target.iOS18  # `func main<ios18>`, the dialect of ane-private-api.md §3.1
_BUILD_LOCK = threading.Lock()


class TransformerShape(Protocol):
    """The model dimensions a generator reads (`anekit.model.ModelConfig` satisfies it)."""

    dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    seq_len: int
    rope_theta: float
    norm_eps: float

    @property
    def q_dim(self) -> int: ...

    @property
    def kv_dim(self) -> int: ...

    @property
    def gqa_ratio(self) -> int: ...


@dataclass(frozen=True)
class Staged:
    """One weight staged into a kernel's input: the layer parameter `param` (its name inside a
    layer, e.g. `"wq"`), transposed or not, written into the input segment `segment` (ane-private-api.md
    §5.4 "Stage": once per optimiser update, not per step)."""

    segment: str
    param: str
    transposed: bool = False

    def value(self, params: Mapping[str, np.ndarray]) -> np.ndarray:
        """The array to write into `segment`, from a layer's parameters (a view, never a copy)."""
        w = params[self.param]
        return w.T if self.transposed else w


@dataclass(frozen=True)
class KernelSpec:
    """A generated kernel: its program and how its one input and one output are packed.

    flops: multiply-adds x 2 of every matmul in the program (elementwise work is not counted).
    staging: how the layer's weights go into the input (`Staged`, one per weight segment); the
    other input segments are activations, written per call.
    """

    program: Program
    input_layout: Layout
    output_layout: Layout
    name: str
    flops: int
    input_name: str = "x"
    output_name: str = "out"
    staging: tuple[Staged, ...] = ()

    def __post_init__(self):
        unknown = [st.segment for st in self.staging if st.segment not in self.input_layout]
        if unknown:
            raise ValueError(f"kernel {self.name}: staged segments {unknown} are not in its input layout")

    def stage(self, buffer: np.ndarray, params: Mapping[str, np.ndarray]) -> None:
        """Write every staged weight of `params` (one layer's, by their names inside the layer)
        into `buffer`, an array of `input_layout`."""
        for st in self.staging:
            self.input_layout.write(buffer, st.segment, st.value(params))

    def text(self) -> str:
        """The program as `model.mil` text."""
        from ..mil import dumps

        return dumps(self.program).text


def float_const(value: np.ndarray, name: str, precision: str = DEFAULT_CONST_PRECISION):
    """An fp16-typed constant tensor (see `CONST_PRECISIONS`).

    fp16 values are rounded through fp32 (float64 -> fp32 -> fp16), i.e. exactly what the fp32
    const + `cast` of the "fp32" form holds after the cast, so programs under the engine's
    numerics compute the same bits either way; only the fp32 const -> cast pair, which M1/M2
    cannot run (ane-private-api.md §1.8), is gone."""
    if precision not in CONST_PRECISIONS:
        raise ValueError(f"const precision must be one of {', '.join(CONST_PRECISIONS)}, not {precision!r}")
    if precision == "fp16":
        return mb.const(val=np.asarray(value, dtype=np.float32).astype(np.float16), name=name)
    c = mb.const(val=np.asarray(value, dtype=np.float32), name=name + "_fp32")
    return mb.cast(x=c, dtype="fp16", name=name)


def input_block(x, layout: Layout, segment: str, shape: Sequence[int] | None = None):
    """Slice segment `segment` out of the packed input `x` and reshape it (default `[1, 1, rows,
    cols]`, the matmul operand form of ane-private-api.md §3.4)."""
    seg = layout[segment]
    rows, cols = seg.shape
    block = mb.slice_by_size(
        x=x, begin=[0, seg.channels[0], 0, seg.columns[0]], size=[1, rows, 1, cols], name=f"{segment}_slice"
    )
    # The op is named after its segment, except when that is the function input's own name: an
    # op output must never redefine an input (MIL binds values by variable name, mil-text.md §1.1).
    name = segment if segment != x.name else f"{segment}_block"
    return mb.reshape(x=block, shape=list(shape or [1, 1, rows, cols]), name=name)


def matmul_block(block, act, transpose_block: bool, name: str):
    """The dynamic-weight linear of ane-private-api.md §3.4, on `[1, 1, rows, cols]` operands.

    `block` is a weight block sliced from the input's spatial tail; `act` is `[1, 1, K, T]`
    (channels x tokens). With `transpose_block`, the block holds Mᵀ (`[K, OC]`, staged
    transposed as §3.4 says for y = M·x) and the result is `blockᵀ·act`; otherwise the block holds
    M (`[OC, K]`) and the result is `block·act`. Either way the result is `[1, 1, OC, T]`, still
    channel-major, so no explicit transposes are needed: the flags do the work (maderix's
    attention backward runs `transpose_x = true` matmuls on the engine, mil-text.md §3.5, §3.14).
    """
    return mb.matmul(x=block, y=act, transpose_x=transpose_block, transpose_y=False, name=name)


def rmsnorm(x, weight, eps: float, name: str):
    """RMSNorm over channels of `x` `[1, D, 1, T]`, `weight` `[1, D, 1, 1]` (ane-private-api.md §3.4):
    `x · pow(Σx²/D + eps, -0.5) · w`. `pow(·, -0.5)`, never `rsqrt`, which fails to compile
    (mil-text.md §5 #8). x² can overflow fp16 for |x| > 256 (mil-text.md §5 #16); the training
    step keeps RMSNorm on the CPU, so this helper serves the standalone kernel."""
    d = x.shape[1]
    sq = mb.mul(x=x, y=x, name=f"{name}_sq")
    ss = mb.reduce_sum(x=sq, axes=[1], keep_dims=True, name=f"{name}_ss")
    ms = mb.mul(x=ss, y=np.float16(1.0 / d), name=f"{name}_ms")
    ms = mb.add(x=ms, y=np.float16(eps), name=f"{name}_eps")
    rrms = mb.pow(x=ms, y=np.float16(-0.5), name=f"{name}_rrms")
    xn = mb.mul(x=x, y=rrms, name=f"{name}_xr")
    return mb.mul(x=xn, y=weight, name=name)


def build_program(input_layout: Layout, output_layout: Layout, body: Callable) -> Program:
    """A one-function program: input `x` fp16 `input_layout.shape`; `body(x)` returns the result
    blocks, each `[1, rows, 1, W]`-compatible, in `output_layout` order; they are concatenated on
    channels into the output `out` (ane-private-api.md §3.4 "Outputs").

    coremltools names the constants it adds for op parameters (`q_transpose_x_0`) from a
    process-wide counter; it is reset for the build (and restored after), so that, with every op
    named explicitly, the same arguments always print the same text."""
    with _BUILD_LOCK:
        saved = dict(mb.name_count)
        mb.name_count.clear()
        try:
            return _build(input_layout, output_layout, body)
        finally:
            mb.name_count.clear()
            mb.name_count.update(saved)


def _build(input_layout: Layout, output_layout: Layout, body: Callable) -> Program:
    with Function({"x": mb.TensorSpec(shape=input_layout.shape, dtype=types.fp16)}, _OPSET) as func:
        results = body(func.inputs["x"])
        if len(results) != len(output_layout.segments):
            raise ValueError(
                f"kernel body returned {len(results)} results for {len(output_layout.segments)} segments"
            )
        blocks = []
        for seg, var in zip(output_layout.segments, results):
            rows, cols = seg.shape
            if int(np.prod(var.shape)) != rows * cols:
                raise ValueError(f"result for {seg.name!r} has shape {var.shape}, expected {rows} x {cols}")
            name = "out" if len(results) == 1 else f"{seg.name}_out"
            blocks.append(mb.reshape(x=var, shape=[1, rows, 1, cols], name=name))
        out = (
            blocks[0] if len(blocks) == 1 else mb.concat(values=blocks, axis=1, interleave=False, name="out")
        )
        func.set_outputs([out])
    program = Program()
    program.add_function("main", func)
    clashes = ops_shadowing_inputs(program)
    if clashes:
        raise ValueError(f"kernel ops named like a function input: {', '.join(clashes)}")
    return program


def ops_shadowing_inputs(program: Program) -> list[str]:
    """`function/op` for every op whose name or output variable is the name of an input of its
    function: the text would define that variable twice (mil-text.md §1.1: values bind by name)."""
    found = []
    for fname, fn in program.functions.items():
        inputs = set(fn.inputs)
        for op in fn.operations:
            names = {op.name} | {v.name for v in op.outputs}
            for clash in sorted(names & inputs):
                found.append(f"{fname}/{op.op_type} {clash!r}")
    return found


def matmul_flops(program: Program) -> int:
    """2 x multiply-adds of every matmul in `program` (shapes are static)."""
    total = 0
    for op in program.functions["main"].operations:
        if op.op_type != "matmul":
            continue
        x = op.inputs["x"].shape
        tx = op.inputs.get("transpose_x")
        k = x[-2] if tx is not None and bool(tx.val) else x[-1]
        out = op.outputs[0].shape
        total += 2 * int(np.prod(out)) * int(k)
    return total
