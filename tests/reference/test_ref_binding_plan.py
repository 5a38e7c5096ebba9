"""The reference backend's fast paths give what the plain paths give, bit for bit: a binding's
incrementally converted inputs against a whole-input run, round_fp16 on 0-d values against NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from anekit._coreml import Function, Program, ct, mb, types
from anekit.backends.reference import compile as ref_compile
from anekit.backends.reference.fp16 import round_fp16, round_fp16_


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


def _specials(n: int, seed: int) -> np.ndarray:
    """float32 values of every kind the rounding branches on, shuffled: normal and subnormal fp16
    magnitudes, ties, +-0, overflow, +-inf, NaN, huge float32."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-10, 6, n)
    x = (rng.standard_normal(n) * scale).astype(np.float32)
    bits = rng.integers(0, (1 << 16) - 1, n).astype(np.uint16)
    with np.errstate(invalid="ignore", over="ignore"):
        # midpoints of neighbouring fp16 values (exact in float32): ties, to even
        ties = (bits.view(np.float16).astype(np.float64) + (bits + 1).view(np.float16).astype(np.float64)) / 2
    pick = rng.integers(0, 8, n)
    x = np.where(pick == 1, ties.astype(np.float32), x)
    x = np.where(pick == 2, np.float32(-0.0), x)
    special = np.array([np.inf, -np.inf, np.nan, 3e38, -65520, 65519], np.float32)
    x = np.where(pick == 3, rng.choice(special, n), x)
    return x.astype(np.float32)


@pytest.mark.parametrize("n", [600, 70_000, 200_000])
@pytest.mark.parametrize("only", ["mixed", "finite", "non-negative", "signed"])
def test_round_fp16_blocks_match_numpy_with_specials(n, only):
    """The block-wise rounding (new array and in place) against NumPy's casts: every block branch
    (no sign bit; both signs with or without x in [-2**-25, -0]; inf / NaN / overflow present)."""
    x = _specials(n, n)
    if only != "mixed":
        x = np.where(np.abs(x) <= 65504, x, np.float32(1.5))
    if only == "non-negative":
        x = np.abs(x)
    if only == "signed":  # both signs, none rounding to -0: the signed splitting
        x = np.where((x < 0) & (x >= -(2.0**-25)) | (x.view(np.uint32) == 0x80000000), np.float32(-3e-5), x)
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    for got in (round_fp16(x), round_fp16_(x.copy())):
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan)
        assert got[~nan].tobytes() == want[~nan].tobytes()


def _two_output_program(n: int = 64):
    spec = {"x": mb.TensorSpec(shape=(1, 8, 1, n), dtype=types.fp16)}
    with Function(spec, ct.target.iOS18) as func:
        x = func.inputs["x"]
        w = np.random.default_rng(0).standard_normal((8, 8, 1, 1)).astype(np.float16)
        y = mb.conv(x=x, weight=w, name="y")
        s = mb.sigmoid(x=y, name="s")
        func.set_outputs([mb.mul(x=s, y=y, name="out"), mb.reshape(x=x, shape=[1, 8, n], name="same")])
    prog = Program()
    prog.add_function("main", func)
    return prog


def test_run_float32_is_the_widened_fp16_output_and_stays_valid():
    """run_float32 hands out what run's float16 outputs widen to, bit for bit; the arrays are the
    caller's: later runs (and writing into them) change nothing else, an output that is a view of
    the input is a copy."""
    kernel = ref_compile(_two_output_program())
    binding = kernel.new_binding()
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((1, 8, 1, 64)) * 4).astype(np.float16)
    binding.write(x=x)
    first = binding.run_float32()
    want = {k: v.astype(np.float32) for k, v in kernel(x=x).items()}
    for name in want:
        assert first[name].dtype == np.float32
        assert first[name].tobytes() == want[name].tobytes()
    keep = {k: v.copy() for k, v in first.items()}
    first["same"][...] = 7.0  # the caller's array: the binding's input is not touched
    binding.write_slice(
        "x", (0, slice(None), 0, slice(0, 16)), rng.standard_normal((8, 16)).astype(np.float32)
    )
    second = binding.run_float32()
    assert first["out"].tobytes() == keep["out"].tobytes()
    assert not np.array_equal(second["out"], keep["out"])
    assert np.array_equal(second["same"][..., 16:].reshape(8, -1), keep["same"][..., 16:].reshape(8, -1))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("whole", [np.float16, np.float32])
def test_write_slice_converts_as_a_staged_array_would(dtype, whole):
    """Slices of each dtype into an input written whole as float16 or float32: the same result as
    running the kernel on the array a generic binding would have staged."""
    kernel = ref_compile(_program())
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((1, 8, 1, 32)) * 100).astype(whole)
    binding = kernel.new_binding()
    binding.write(x=x)
    values = (rng.standard_normal((8, 5)) * 10.0 ** rng.integers(-9, 5, (8, 5))).astype(dtype)
    binding.write_slice("x", (0, slice(None), 0, slice(3, 8)), values)
    x[0, :, 0, 3:8] = values
    assert binding.run()["out"].tobytes() == kernel(x=x)["out"].tobytes()


def test_two_bindings_of_one_kernel_run_on_two_threads():
    """Each binding's results on two threads at once equal its results run alone."""
    import threading

    kernel = ref_compile(_two_output_program(4096))
    rng = np.random.default_rng(5)
    inputs = [(rng.standard_normal((1, 8, 1, 4096)) * 3).astype(np.float16) for _ in range(2)]
    bindings = [kernel.new_binding() for _ in inputs]
    for b, x in zip(bindings, inputs):
        b.write(x=x)
    alone = [b.run_float32()["out"] for b in bindings]
    got: list[list[np.ndarray]] = [[], []]

    def work(i):
        for _ in range(20):
            got[i].append(bindings[i].run_float32()["out"])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert all(g.tobytes() == alone[i].tobytes() for g in got[i])


@pytest.mark.parametrize("cols", [slice(100, 1100), slice(0, 4096), slice(5, 6)])
def test_write_slice_rounds_into_the_bound_input(cols):
    """float32 blocks rounded straight into rows of the bound input (blocks of rows, one column,
    the whole width): what a generic binding staging float16 gives, bit for bit, the rest intact."""
    kernel = ref_compile(_two_output_program(4096))
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((1, 8, 1, 4096)) * 3).astype(np.float16)
    binding = kernel.new_binding()
    binding.write(x=x)
    width = len(range(4096)[cols])
    values = (rng.standard_normal((8, width)) * 10.0 ** rng.integers(-9, 6, (8, width))).astype(np.float32)
    values[0, 0] = np.float32(-0.0)
    with np.errstate(over="ignore"):
        binding.write_slice("x", (0, slice(None), 0, cols), values)
        x[0, :, 0, cols] = values
    assert binding._staged["x"].tobytes() == x.astype(np.float32).tobytes()
    assert binding.run()["out"].tobytes() == kernel(x=x)["out"].tobytes()


def _concat_program():
    """Outputs joined by one concat on channels, as the training kernels end: a matmul (also read
    by a later op), an add and a mul seen through reshapes, a relu (copied by the concat)."""
    spec = {"x": mb.TensorSpec(shape=(1, 1, 16, 64), dtype=types.fp16)}
    with Function(spec, ct.target.iOS18) as func:
        x = func.inputs["x"]
        w = np.random.default_rng(7).standard_normal((1, 1, 16, 16)).astype(np.float16)
        m = mb.matmul(x=w, y=x, transpose_x=True, name="m")
        a = mb.add(x=m, y=x, name="a")
        p = mb.mul(x=a, y=m, name="p")
        r = mb.relu(x=p, name="r")
        parts = [mb.reshape(x=t, shape=[1, 16, 1, 64], name=f"{t.name}_r") for t in (m, a, p, r)]
        func.set_outputs([mb.concat(values=parts, axis=1, name="out")])
    prog = Program()
    prog.add_function("main", func)
    return prog, w


def test_concat_operands_computed_in_place_match_numpy():
    """Steps computing straight into the concat's result give NumPy's float32 ops rounded by
    NumPy's float16 casts; every run's result is new (an earlier one stays as it was)."""
    prog, w = _concat_program()
    kernel = ref_compile(prog)
    binding = kernel.new_binding()
    rng = np.random.default_rng(8)
    results = []
    for _ in range(2):
        x = (rng.standard_normal((1, 1, 16, 64)) * 2).astype(np.float16)
        binding.write(x=x)
        got = binding.run_float32()["out"]
        r16 = lambda t: t.astype(np.float16).astype(np.float32)  # noqa: E731
        xf, wf = x.astype(np.float32), w.astype(np.float32)
        m = r16(np.matmul(np.swapaxes(wf, -1, -2), xf))
        a = r16(m + xf)
        p = r16(a * m)
        want = np.concatenate([t.reshape(1, 16, 1, 64) for t in (m, a, p, np.maximum(p, 0))], axis=1)
        assert got.tobytes() == want.tobytes()
        results.append((got, got.copy()))
    assert results[0][0].tobytes() == results[0][1].tobytes()
