"""The reference backend's fast paths give what the plain paths give, bit for bit: a binding's
incrementally converted inputs against a whole-input run, round_fp16 on 0-d values against NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from anekit._coreml import Function, Program, ct, mb, types
from anekit.backends.reference import compile as ref_compile
from anekit.backends.reference.fp16 import round_fp16


def _program():
    with Function({"x": mb.TensorSpec(shape=(1, 8, 1, 32), dtype=types.fp16)}, ct.target.iOS18) as func:
        x = func.inputs["x"]
        w = np.random.default_rng(0).standard_normal((4, 8, 1, 1)).astype(np.float16)
        y = mb.conv(x=x, weight=w, name="y")
        func.set_outputs([mb.mul(x=y, y=np.float16(3.0), name="out")])
    prog = Program()
    prog.add_function("main", func)
    return prog


@pytest.mark.parametrize("numerics", ["ane", "exact"])
def test_binding_write_slice_matches_a_whole_run(numerics):
    kernel = ref_compile(_program(), numerics=numerics)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 8, 1, 32)).astype(np.float16)
    binding = kernel.new_binding()
    binding.write(x=x)
    for step in range(3):
        cols = slice(step * 5, step * 5 + 3)
        values = rng.standard_normal((8, 3)) * 10.0 ** (-6 * step)  # float64, subnormal fp16 on step 2
        binding.write_slice("x", (0, slice(None), 0, cols), values)
        x[0, :, 0, cols] = values
        got = binding.run()["out"]
        want = kernel(x=x)["out"]
        assert got.dtype == want.dtype
        assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("value", [3.3, 1e-6, 7e4, -0.0, float("nan"), float("-inf")])
def test_round_fp16_of_a_scalar(value):
    with np.errstate(over="ignore"):
        want = np.float32(value).astype(np.float16).astype(np.float32)
    got = round_fp16(np.array(value, np.float32))
    assert got.shape == () and got.dtype == np.float32
    assert np.isnan(got) if np.isnan(want) else got.tobytes() == want.tobytes()


@pytest.mark.parametrize("n", [1, 7, 512, 513, 4096])
@pytest.mark.parametrize("scale", [1e-7, 1e-3, 1.0, 3e4, 1e5])
def test_round_fp16_small_and_large_paths_match_numpy(n, scale):
    x = (np.random.default_rng(n).standard_normal(n) * scale).astype(np.float32)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    assert round_fp16(x).tobytes() == want.tobytes()


def test_round_fp16_overflow_warns_nothing():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for n in (2, 2000):
            got = round_fp16(np.full(n, 7e4, np.float32))
            assert np.all(np.isposinf(got))
