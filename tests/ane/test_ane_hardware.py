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
from anekit.backends.ane.runtime import CACHE, COMPILES, AneKernel, default_loaded_program_budget
from anekit.backends.reference import compile as reference_compile
from anekit.bundles import compare
from anekit.mil import ct, dumps, mb, types

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
    # in this process unless every program loaded here is in use (then in a worker, §10.1)
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


def test_300_compiles_in_one_process_when_each_is_unloaded_after_use():
    """§10.1: the cap is on loaded programs, not compiles: 300 distinct programs, each unloaded
    when its kernel closes (cache=False), all compile, run and match in this process."""
    x = np.random.default_rng(1).uniform(-1, 1, (1, 32, 1, 32)).astype(np.float16)
    before = COMPILES.used
    for i in range(300):
        prog = conv_program(1000 + i, scale=6.0)  # distinct weights: distinct programs
        with ane(prog, cache=False) as kernel:
            assert isinstance(kernel, AneKernel), f"compile {i} went to a worker"
            got = kernel(x=x)
        assert not compare(reference_compile(prog)(x=x), got, rtol=1e-2, atol=1e-2), f"compile {i}"
    assert COMPILES.used == before + 300


def test_idle_programs_are_unloaded_least_recently_used_and_reloaded_on_use():
    """§10.1 + §1.10: more cached programs than the budget, each idle after use: the oldest are
    unloaded (never more than the budget loaded), and using the first again reloads it without
    compiling."""
    budget = default_loaded_program_budget()
    x = np.random.default_rng(2).uniform(-1, 1, (1, 32, 1, 32)).astype(np.float16)
    progs = [conv_program(5000 + i, scale=6.0) for i in range(budget + 10)]
    for prog in progs:
        with ane(prog) as kernel:
            kernel(x=x)
        assert CACHE.loaded <= budget
    compiles, reloads = COMPILES.used, CACHE.reloads
    with ane(progs[0]) as kernel:  # unloaded long ago: reloaded, not compiled
        got = kernel(x=x)
    assert COMPILES.used == compiles and CACHE.reloads == reloads + 1
    assert not compare(reference_compile(progs[0])(x=x), got, rtol=1e-2, atol=1e-2)


def test_more_programs_live_at_once_than_the_budget_go_to_workers():
    """§10.1: worker processes only when more programs must be loaded at once than the budget."""
    budget = default_loaded_program_budget()
    x = np.random.default_rng(3).uniform(-1, 1, (1, 32, 1, 32)).astype(np.float16)
    room = budget - CACHE.in_use
    kernels, kinds = [], collections.Counter()
    try:
        for i in range(room + 5):
            prog = conv_program(9000 + i, scale=6.0)
            kernel = ane(prog, cache=False)
            kernels.append((prog, kernel))
            kinds[type(kernel).__name__] += 1
        for prog, kernel in kernels:
            assert not compare(reference_compile(prog)(x=x), kernel(x=x), rtol=1e-2, atol=1e-2)
    finally:
        for _, kernel in kernels:
            kernel.close()
    assert kinds["AneKernel"] == room and kinds["WorkerKernel"] == 5
    assert CACHE.loaded <= budget


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
