"""Tests on the Neural Engine itself (macOS on Apple silicon). Deselected elsewhere by
tests/conftest.py; run them with `python -m pytest -m requires_ane -ra`.

Each compares the engine with the reference backend within fp16 tolerance; nothing is skipped
silently except an op the engine's compiler rejects, and that skip carries the compiler's message.
"""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
from ane_op_catalogue import CASES
from ane_programs import conv_program, dynamic_program

import anekit
from anekit.backends.ane import ANEError
from anekit.backends.ane.doctor import smoke_test
from anekit.backends.ane.runtime import COMPILES, AneKernel, default_budget
from anekit.backends.reference import compile as reference_compile
from anekit.mil import ct, dumps, mb, types
from anekit.record import compare

pytestmark = pytest.mark.requires_ane


def ane(program, **options):
    return anekit.compile(program, backend="ane", **options)


def test_smoke_conv1x1_matches_the_reference_backend():
    result = smoke_test(lambda p: ane(p, cache=False))
    assert result.ok, result.detail
    assert result.hw_ns is None or result.hw_ns > 0  # §1.10: reported, or None; never 0/invented


def test_many_requests_on_one_compiled_kernel():
    prog = dynamic_program(c=64, s=64)
    ref = reference_compile(prog)
    before = COMPILES.used
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # two equal-size inputs: the §1.12 advice
        kernel = ane(prog, cache=False)
    # in this process unless earlier tests spent its compile budget (then in a worker)
    here = isinstance(kernel, AneKernel)
    assert COMPILES.used == before + (1 if here else 0)
    rng = np.random.default_rng(0)
    layers = []
    for _ in range(12):  # 12 layers share one compiled kernel and its output surface
        w = rng.uniform(-1, 1, (1, 64, 1, 64)).astype(np.float16)
        b = kernel.new_binding()
        b.write(w=w)
        layers.append((b, w))
    for _ in range(3):
        x = rng.uniform(-1, 1, (1, 64, 1, 64)).astype(np.float16)
        for b, w in layers:
            assert not compare(ref(x=x, w=w), b.run(x=x), rtol=1e-2, atol=1e-2)
    assert COMPILES.used == before + (1 if here else 0)  # one compile served 36 evaluations
    if here:
        assert len(kernel.timings) == 36 and all(t.wall_s > 0 for t in kernel.timings)
    assert kernel.last_eval is not None and kernel.last_eval.wall_s > 0
    kernel.close()


def test_150_compiles_in_one_run_without_failure():
    """§1.11: ~119 compiles per process is the limit; past the budget (100) anekit compiles in
    worker processes, so 150 distinct programs all compile, run and match."""
    x = np.random.default_rng(1).uniform(-1, 1, (1, 32, 1, 32)).astype(np.float16)
    kinds = collections.Counter()
    room = max(0, default_budget() - COMPILES.used)  # compiles this process may still do
    for i in range(150):
        prog = conv_program(1000 + i, scale=6.0)  # distinct weights: distinct programs, no cache hits
        with ane(prog, cache=False) as kernel:
            kinds[type(kernel).__name__] += 1
            got = kernel(x=x)
        assert not compare(reference_compile(prog)(x=x), got, rtol=1e-2, atol=1e-2), f"compile {i}"
    assert sum(kinds.values()) == 150
    assert COMPILES.used <= default_budget()  # this process never went past its budget
    assert kinds["WorkerKernel"] == 150 - min(room, 150)


def test_fp32_io_program():
    """§1.8: fp32 I/O with casts inside; M1/M2 cannot cast (PR #6), so a rejection is reported."""

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 16, 1, 32), dtype=types.fp32)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.cast(x=mb.relu(x=mb.cast(x=x, dtype="fp16")), dtype="fp32", name="y")

    x = np.random.default_rng(2).standard_normal((1, 16, 1, 32)).astype(np.float32)
    try:
        kernel = ane(prog, cache=False)
    except ANEError as e:
        pytest.skip(f"fp32 I/O rejected on this chip (expected on M1/M2, §1.8): {e}")
    with kernel:
        got = kernel(x=x)["y"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(
        got, np.maximum(x.astype(np.float16), 0).astype(np.float32), rtol=1e-3, atol=1e-3
    )


def test_a_rejected_program_raises_ane_error_and_the_interpreter_survives():
    """`rsqrt` is reported not to compile (ane-private-api.md §6). Either it compiles and matches,
    or the failure arrives as an ANEError naming the step and carrying a message."""

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 32, 1, 32), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.rsqrt(x=x, name="y")

    x = np.random.default_rng(3).uniform(0.5, 2, (1, 32, 1, 32)).astype(np.float16)
    try:
        with ane(prog, cache=False) as kernel:
            got = kernel(x=x)
    except ANEError as e:
        assert e.step in ("compile", "load", "eval") and e.message
        return
    assert not compare(reference_compile(prog)(x=x), got, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reference_op_on_the_engine(case):
    model = dumps(case.program())
    inputs = case.sample(seed=1)
    try:
        kernel = ane(model, cache=False)
    except ANEError as e:
        if e.step in ("descriptor", "model", "compile", "load"):
            pytest.skip(f"the engine's compiler rejects {case.op}: {e}")
        raise
    with kernel:
        assert isinstance(kernel, AneKernel) or kernel.backend == "ane"
        got = kernel(**inputs)
    expected = reference_compile(model)(**inputs)
    problems = compare(expected, got, rtol=case.tol, atol=case.tol)
    assert not problems, f"{case.op}: {problems}"
