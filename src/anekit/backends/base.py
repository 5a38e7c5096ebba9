"""What every backend hands back: a `Kernel`, called with NumPy arrays by input name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..errors import AnekitError

#: The reference backend's numerics, by name: "ane" (fp16 storage, fp32 math, as the engine does,
#: ane-private-api.md §10.4) and "exact" (float64). Stated here, where importing is cheap, so that the
#: command line can list them without loading the backend; `reference.NUMERICS` is built from it.
NUMERICS_NAMES = ("ane", "exact")


class BackendUnavailable(AnekitError, RuntimeError):
    """The requested backend cannot run on this machine; the message says what is missing."""


class NoSuchFunction(AnekitError, ValueError):
    """The program has no function of the requested name; the message lists the ones it has."""


def pick_function(program, function: str | None) -> str:
    """`function` if the program has it; None means the program's default function (`main`, or the
    one the MIL text's parser made default, mil-text.md §1.7). Otherwise NoSuchFunction, listing them.
    Every backend chooses the function to compile through this one rule."""
    names = list(program.functions)
    if function is None:
        function = getattr(program, "default_function_name", "main")
        if function not in program.functions and len(names) == 1:
            function = names[0]
    if function not in program.functions:
        raise NoSuchFunction(
            f"the program has no function {function!r}; it has {', '.join(map(repr, names)) or 'none'} "
            f"(choose one with function=<name>)"
        )
    return function


class KernelInputError(AnekitError, ValueError):
    """The arrays passed to a kernel do not match its declared inputs."""


@dataclass(frozen=True)
class TensorSpec:
    """A kernel input or output: name, shape (None for a flexible `?` dim) and MIL dtype name."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: tensor<{self.dtype}, [{dims}]>"


def _dims(shape) -> tuple[int | None, ...]:
    return tuple(int(d) if isinstance(d, (int, np.integer)) else None for d in shape)


def var_spec(var) -> TensorSpec:
    """Name, shape and dtype of a coremltools Var, shapes with `None` for symbolic dims. Every
    backend describes its kernel's inputs and outputs with this one rule."""
    from .._coreml import types  # here, so importing the backend protocol does not load coremltools
    from ..mil.dtypes import of_builtin

    t = var.sym_type
    if types.is_tensor(t):
        return TensorSpec(var.name, _dims(t.get_shape()), of_builtin(t.get_primitive()).name)
    if types.is_state(t):
        inner = t.wrapped_type()
        return TensorSpec(var.name, _dims(inner.get_shape()), of_builtin(inner.get_primitive()).name)
    return TensorSpec(var.name, (), of_builtin(t).name)


_KIND = {"f": "float", "i": "int", "u": "int", "b": "bool"}


def _dtype_kind(name: str) -> str:
    if name.startswith("fp") or name == "bf16":
        return "float"
    if "int" in name:
        return "int"
    return name


def _shape_fits(want: tuple[int | None, ...], got: tuple[int, ...]) -> bool:
    return len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got))


def _dtype_fits(arr: np.ndarray, spec: TensorSpec) -> bool:
    """Whether `arr`'s dtype may feed `spec`: the same kind, an int array for a float input, or a
    float array holding only integers for an integer input (anything else is a bug)."""
    kind = _KIND.get(arr.dtype.kind)
    want_kind = _dtype_kind(spec.dtype)
    if kind == want_kind or (kind == "int" and want_kind == "float"):
        return True
    return kind == "float" and want_kind == "int" and bool(np.all(np.mod(arr, 1) == 0))


def _name_problems(specs: dict[str, TensorSpec], given: dict[str, object], partial: bool) -> list[str]:
    problems = []
    missing = [] if partial else [n for n in specs if n not in given]
    unknown = [n for n in given if n not in specs]
    if missing:
        problems.append("missing input(s): " + ", ".join(missing))
    if unknown:
        problems.append(f"unknown input(s): {', '.join(unknown)} (the kernel takes {', '.join(specs)})")
    return problems


def check_inputs(
    specs: dict[str, TensorSpec], given: dict[str, object], partial: bool = False
) -> dict[str, np.ndarray]:
    """Validate `given` against `specs` and return them as arrays; errors name every problem.

    partial: allow a subset of the inputs (a `Binding` stages its inputs one at a time).
    """
    problems = _name_problems(specs, given, partial)
    arrays: dict[str, np.ndarray] = {}
    for name, spec in specs.items():
        if name not in given:
            continue
        arr = np.asarray(given[name])
        if not _shape_fits(spec.shape, arr.shape):
            problems.append(f"input {name!r} has shape {tuple(arr.shape)}, expected {spec}")
        elif not _dtype_fits(arr, spec):
            problems.append(f"input {name!r} has dtype {arr.dtype}, expected {spec.dtype}")
        else:
            arrays[name] = arr
    if problems:
        raise KernelInputError("; ".join(problems))
    return arrays


@dataclass(frozen=True)
class EvalTiming:
    """How long one evaluation took: host wall time around the engine call and, only where the
    engine reports it, the hardware execution time (ane-private-api.md §1.10). Never estimated."""

    wall_s: float
    hw_ns: int | None = None


class Binding:
    """One request on a compiled kernel: its own staged inputs, the kernel's outputs.

    The training loop binds one compiled kernel to many layers, each with its own input buffer
    holding that layer's pre-staged weights (ane-private-api.md §1.6, "per-layer requests on one
    compiled model"). This generic version keeps the staged arrays on the host and calls
    `kernel.run`; the `ane` backend overrides it with one input IOSurface per binding.
    """

    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self._staged: dict[str, np.ndarray] = {}

    def write(self, **inputs) -> None:
        """Stage some or all inputs; later runs reuse them until they are written again."""
        arrays = check_inputs(self.kernel.inputs, inputs, partial=True)
        self._staged.update({name: np.array(a, copy=True) for name, a in arrays.items()})

    def write_slice(self, name: str, index, values) -> None:
        """Assign `values` into part of the staged input `name` in place: `staged[name][index] =
        values` (NumPy indexing into the input's full shape), without copying the rest of it, e.g.
        the new rows of a KV cache held in a bound input (ane-private-api.md §1.6: a binding's
        inputs persist between requests). The input must have been written once before."""
        staged = self._staged.get(name)
        if staged is None:
            known = ", ".join(self.kernel.inputs)
            raise KernelInputError(
                f"write_slice: input {name!r} has no staged value yet (write it whole first); the "
                f"kernel takes {known}"
            )
        try:
            staged[index] = values
        except (IndexError, ValueError, TypeError) as e:
            raise KernelInputError(f"write_slice into input {name!r} {tuple(staged.shape)}: {e}") from e

    def run(self, **inputs) -> dict[str, np.ndarray]:
        """Stage `inputs` (if any), then evaluate with everything staged so far."""
        if inputs:
            self.write(**inputs)
        missing = [n for n in self.kernel.inputs if n not in self._staged]
        if missing:
            raise KernelInputError(f"binding has no value yet for input(s): {', '.join(missing)}")
        return self.kernel.run(dict(self._staged))

    __call__ = run

    def run_float32(self, **inputs) -> dict[str, np.ndarray]:
        """`run`, with every floating-point output as float32 holding exactly the output's values
        (an fp16 output widens without rounding). The training step computes on the host in
        float32, so a backend that holds outputs wider than declared (the reference backend keeps
        fp16 values in float32) can return them without a round trip through float16."""
        return {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in self.run(**inputs).items()}

    def close(self) -> None:
        """Drop the staged inputs."""
        self._staged.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Kernel(ABC):
    """A compiled program bound to a backend. Call it with NumPy arrays; it returns a dict."""

    backend: str = "?"
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    def __call__(self, **inputs) -> dict[str, np.ndarray]:
        return self.run(check_inputs(self.inputs, inputs))

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on already-validated inputs."""

    def close(self) -> None:
        """Release whatever the backend holds (engine programs, buffers, temp files)."""

    def new_binding(self) -> Binding:
        """A new request on this kernel with its own inputs (see `Binding`)."""
        return Binding(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        ins = ", ".join(str(s) for s in self.inputs.values())
        outs = ", ".join(str(s) for s in self.outputs.values())
        return f"<{type(self).__name__} backend={self.backend} ({ins}) -> ({outs})>"
