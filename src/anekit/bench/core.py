"""What every experiment shares: a benchmark case, its verification, its timing and its cost-model column.

The order is fixed and is the point of this module: build a program, run it once, check its outputs,
and only then time it. A program whose outputs are wrong is never timed (`OutputMismatch`), because a
fast wrong kernel is not a benchmark result.

Verification is never circular. On the reference backend the outputs are compared with a float64 NumPy
computation written by the experiment itself; on the engine (or Core ML) they are compared with the
reference backend's outputs (ANE numerics), which the reference backend's own tests pin to float64.

Timing: `warmup` untimed runs, then `iters` runs each timed with `time.perf_counter` (the published
benchmarks do the same with `mach_absolute_time`, ane-private-api.md §4 first paragraph). Reported:
median, p10, p90, mean, min and n. TFLOPS = FLOPs / median time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AnekitError

Arrays = dict[str, np.ndarray]


class OutputMismatch(AnekitError, RuntimeError):
    """A benchmark program computed the wrong thing; it is not timed."""


@dataclass
class Case:
    """One program to benchmark, its inputs, and the float64 NumPy computation of what it must return.

    expected: inputs -> {output name: float64 array}. Written in the experiment, independently of the
        reference backend; may return a subset of rows (see `rows`) for outputs too large to recompute.
    rows: for outputs checked on a subset of channels: {output name: (axis, indices)}.
    """

    label: str
    params: dict
    program: object
    inputs: Arrays
    expected: Callable[[Arrays], Arrays]
    flops: float
    tol: float = 1e-2
    rows: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)


@dataclass(frozen=True)
class Timing:
    samples_ms: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.samples_ms)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    @property
    def median_ms(self) -> float:
        return self.pct(50)

    def to_json(self, keep_samples: bool = False) -> dict:
        a = np.asarray(self.samples_ms)
        d = {
            "median_ms": float(np.median(a)),
            "p10_ms": self.pct(10),
            "p90_ms": self.pct(90),
            "mean_ms": float(a.mean()),
            "min_ms": float(a.min()),
            "n": int(a.size),
        }
        if keep_samples:
            d["samples_ms"] = [float(x) for x in a]
        return d


@dataclass(frozen=True)
class Check:
    max_rel_error: float
    tolerance: float
    passed: bool
    reference: str  #: "float64 numpy" or "reference backend"

    def to_json(self) -> dict:
        return {
            "max_rel_error": self.max_rel_error,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "reference": self.reference,
        }


@dataclass
class Point:
    """One measured point of a sweep."""

    label: str
    params: dict
    flops: float
    timing: Timing
    check: Check
    predicted: dict | None = None  #: the cost model's engine time for the chosen chip
    published: dict | None = None  #: a published figure for the same config, if any
    keep_samples: bool = False

    @property
    def tflops(self) -> float:
        return self.flops / (self.timing.median_ms * 1e9) if self.timing.median_ms > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "params": self.params,
            "flops": self.flops,
            "timing": self.timing.to_json(self.keep_samples),
            "tflops": self.tflops,
            "check": self.check.to_json(),
            "predicted": self.predicted,
            "published": self.published,
        }


@dataclass
class Context:
    """Where and how an experiment runs."""

    backend: str  #: resolved backend name: "reference", "ane" or "coreml"
    chip: str = "m4"  #: chip for the cost-model column
    quick: bool = False
    progress: Callable[[str], None] | None = None  #: called after each point with its label

    @property
    def engine(self) -> bool:
        """Whether the numbers are measurements of the Neural Engine (or Core ML on it)."""
        return self.backend in ("ane", "coreml")

    def compile(self, program, backend: str | None = None):
        from .. import compile as anekit_compile

        name = backend or self.backend
        options = {"numerics": "ane"} if name == "reference" else {}
        return anekit_compile(program, backend=name, **options)


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """Normwise relative error ||got - want|| / ||want|| in float64 (inf for non-finite outputs)."""
    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    if g.shape != w.shape:
        return float("inf")
    if not np.all(np.isfinite(g)):
        return float("inf")
    denom = np.linalg.norm(w)
    return float(np.linalg.norm(g - w) / (denom if denom > 0 else 1.0))


def verify(ctx: Context, case: Case, kernel) -> Check:
    """Run `kernel` once and compare its outputs with the case's independent expectation."""
    got = kernel(**case.inputs)
    if ctx.backend == "reference":
        want = case.expected(case.inputs)
        source = "float64 numpy"
    else:
        with ctx.compile(case.program, backend="reference") as ref:
            want = {k: np.asarray(v, dtype=np.float64) for k, v in ref(**case.inputs).items()}
        want = {k: _take(v, case.rows.get(k)) for k, v in want.items()}
        source = "reference backend"
    if set(want) - set(got):
        raise OutputMismatch(f"{case.label}: the program has no output(s) {sorted(set(want) - set(got))}")
    err = max(rel_error(_take(got[k], case.rows.get(k)), v) for k, v in want.items())
    return Check(err, case.tol, bool(err <= case.tol), source)


def _take(arr: np.ndarray, sel: tuple[int, np.ndarray] | None) -> np.ndarray:
    if sel is None:
        return np.asarray(arr)
    axis, idx = sel
    return np.take(np.asarray(arr), idx, axis=axis)


def time_kernel(kernel, inputs: Arrays, warmup: int, iters: int) -> Timing:
    """`warmup` untimed runs, then `iters` runs timed one by one with `time.perf_counter`.

    Inputs are staged once (a `Binding` where the backend offers one, so the engine's input buffers are
    written before the clock starts, as the published benchmarks do); each timed call is one evaluation.
    """
    from ..backends.base import check_inputs

    new_binding = getattr(kernel, "new_binding", None)
    binding = new_binding() if new_binding is not None else None
    if binding is not None:
        binding.write(**inputs)
        run = binding.run
    else:
        arrays = check_inputs(kernel.inputs, inputs)

        def run():
            return kernel.run(arrays)

    try:
        for _ in range(warmup):
            run()
        samples = []
        for _ in range(iters):
            t0 = time.perf_counter()
            run()
            samples.append((time.perf_counter() - t0) * 1e3)
    finally:
        if binding is not None:
            binding.close()
    return Timing(tuple(samples))


def predict_point(program, chip: str) -> dict | None:
    """The cost model's time for `program` on `chip`'s engine (None if the chip is not calibrated)."""
    from ..perf import UncalibratedChip, count_ops, predict

    try:
        est = predict(count_ops(program), chip)
    except UncalibratedChip:
        return None
    return {"chip": est.chip, "time_ms": est.time_ms, "tflops": est.tflops, "utilisation": est.utilisation}


def measure(
    ctx: Context,
    case: Case,
    warmup: int,
    iters: int,
    published: dict | None = None,
    keep_samples: bool = False,
) -> Point:
    """Compile, verify (refusing to time a wrong program), time, and predict one case."""
    with ctx.compile(case.program) as kernel:
        check = verify(ctx, case, kernel)
        if not check.passed:
            raise OutputMismatch(
                f"{case.label}: output differs from the {check.reference} by {check.max_rel_error:.3g} "
                f"(relative, tolerance {check.tolerance:g}); not timed"
            )
        timing = time_kernel(kernel, case.inputs, warmup, iters)
    point = Point(
        case.label,
        case.params,
        case.flops,
        timing,
        check,
        predict_point(case.program, ctx.chip),
        published,
        keep_samples,
    )
    if ctx.progress:
        ctx.progress(case.label)
    return point


@dataclass
class Result:
    """What an experiment returns: its points, a summary, and whether it ran at all."""

    points: list[Point] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    status: str = "ok"  #: "ok" or "skipped"
    note: str = ""


@dataclass(frozen=True)
class Experiment:
    """Everything anekit knows about one benchmark; each experiment module defines one as `EXPERIMENT`,
    and `anekit.bench.EXPERIMENTS` (the registry) lists them. The CLI's names and help, `all`, the
    runner, the charts, the published figures and the record schema's experiment names all read it.

    config: a dataclass of the defaults; `config.quick()` gives the `--quick` config.
    run(ctx, config) -> Result; n_points(config): how many points `run` measures (the progress bar).
    plot(record, out_dir) -> the PNG files written (None: the experiment has no chart).
    datasets: the `anekit.perf.published` datasets whose rows it is compared with.
    statements: published statements without a number table, as (text, source).
    """

    name: str
    title: str
    config: type
    run: Callable[[Context, Any], Result]
    n_points: Callable[[Any], int]
    plot: Callable[[dict, Path], list[Path]] | None = None
    datasets: tuple[str, ...] = ()
    statements: tuple[tuple[str, str], ...] = ()
