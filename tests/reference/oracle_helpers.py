"""Helpers for the reference-backend op tests: one-op programs, and comparisons with an oracle.

The oracles themselves (PyTorch float64, or float64 NumPy written out in the test) live in the
tests; nothing here calls the code under test except through a compiled program.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from anekit._coreml import Function, Program, ct, mb, types
from anekit.backends.reference import compile as ref_compile

_MIL_TYPE = {
    np.dtype(np.float64): types.fp32,  # float64 test data feeds an fp32 input
    np.dtype(np.float32): types.fp32,
    np.dtype(np.float16): types.fp16,
    np.dtype(np.int32): types.int32,
    np.dtype(np.int64): types.int32,
    np.dtype(np.bool_): types.bool,
}


def build(fn: Callable, specs: dict[str, tuple[tuple[int, ...], object]], opset=ct.target.iOS18) -> Program:
    """A program `main` with inputs `specs` (name -> (shape, coremltools dtype)) returning `fn(**inputs)`."""
    placeholders = {name: mb.TensorSpec(shape=shape, dtype=dt) for name, (shape, dt) in specs.items()}
    with Function(placeholders, opset) as func:
        out = fn(**func.inputs)
        func.set_outputs(list(out) if isinstance(out, (tuple, list)) else [out])
    prog = Program()
    prog.add_function("main", func)
    return prog


def run(
    fn: Callable,
    inputs: dict[str, np.ndarray] | None = None,
    numerics: str = "exact",
    dtypes: dict[str, object] | None = None,
    **compile_kw,
) -> list[np.ndarray]:
    """Build, compile and run a one-op program on `inputs`; outputs in the program's order.

    Input dtypes follow the arrays (float64/float32 -> fp32, float16 -> fp16, ints -> int32, bool)
    unless `dtypes` names one (a coremltools dtype).
    """
    inputs = inputs or {}
    dtypes = dtypes or {}
    specs = {k: (v.shape, dtypes.get(k, _MIL_TYPE[np.asarray(v).dtype])) for k, v in inputs.items()}
    prog = build(fn, specs)
    kernel = ref_compile(prog, numerics=numerics, **compile_kw)
    result = kernel(**inputs)
    return [result[v.name] for v in prog.functions["main"].outputs]


def run1(fn: Callable, inputs: dict[str, np.ndarray] | None = None, **kw) -> np.ndarray:
    """`run` for a single output."""
    (out,) = run(fn, inputs, **kw)
    return out


def t64(a) -> torch.Tensor:
    """A float64 (or integer/bool as is) torch tensor from array-like `a`."""
    a = np.asarray(a)
    if a.dtype.kind == "f":
        a = a.astype(np.float64)
    return torch.from_numpy(np.ascontiguousarray(a))


def close(got: np.ndarray, want, rtol: float = 1e-6, atol: float = 1e-9) -> None:
    """Exact-numerics comparison: same shape, values within rtol/atol (NaNs must match)."""
    want = want.numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    got = np.asarray(got)
    assert got.shape == want.shape, f"shape {got.shape} != oracle {want.shape}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


def fp16_close(got: np.ndarray, want, ulps: float = 1.0) -> None:
    """ "ane"-numerics comparison: fp16 result within `ulps` fp16 ulps of the float64 oracle."""
    want = want.numpy() if isinstance(want, torch.Tensor) else np.asarray(want, dtype=np.float64)
    assert got.dtype == np.float16, f"expected fp16 storage, got {got.dtype}"
    assert got.shape == want.shape
    with np.errstate(over="ignore", invalid="ignore"):  # fp16 overflow of the oracle is expected
        w16 = want.astype(np.float16).astype(np.float64)
        ulp = np.spacing(np.abs(w16).astype(np.float16)).astype(np.float64)
        err = np.abs(got.astype(np.float64) - w16)
    finite = np.isfinite(w16)
    assert np.all(err[finite] <= ulps * ulp[finite]), f"max error {np.max(err[finite] / ulp[finite])} ulps"
    assert np.array_equal(got[~finite].astype(np.float64), w16[~finite], equal_nan=True)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
