"""A benchmark program whose output is wrong is never timed, and the run says so."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from anekit.bench import core, peak, programs
from anekit.bench.core import Case, Context, OutputMismatch, measure
from anekit.bench.schema import validate
from anekit.cli import app
from anekit.mil import ct, mb, types

_honest_chain = programs.conv_chain


def _wrong_chain(channels, spatial, depth, **kw):
    """The honest case's inputs and float64 expectation, but a program that adds a ReLU at the end."""
    honest = _honest_chain(channels, spatial, depth, **kw)
    shape = honest.inputs["x"].shape
    w = np.eye(channels, dtype=np.float16)[:, :, None, None]

    @mb.program(input_specs=[mb.TensorSpec(shape=shape, dtype=types.fp16)], opset_version=ct.target.iOS18)
    def prog(x):
        return mb.relu(x=mb.conv(x=x, weight=w), name="y")

    honest.program = prog
    return honest


@pytest.fixture
def no_timing(monkeypatch):
    calls = []

    def forbidden(*a, **k):
        calls.append(a)
        raise AssertionError("a wrong program was timed")

    monkeypatch.setattr(core, "time_kernel", forbidden)
    return calls


def test_wrong_program_is_refused_before_timing(monkeypatch, no_timing):
    monkeypatch.setattr(programs, "conv_chain", _wrong_chain)
    cfg = peak.Config(
        base_channels=16,
        base_spatial=8,
        base_depth=2,
        channels=(16,),
        spatial=(8,),
        depths=(2,),
        warmup=1,
        iters=2,
    )
    with pytest.raises(OutputMismatch, match="not timed"):
        peak.run(Context("reference"), cfg)
    assert no_timing == []


def test_wrong_output_name_is_refused(no_timing):
    case = programs.conv_chain(16, 8, 1)
    case.expected = lambda inputs: {"z": np.zeros((1, 16, 1, 8))}
    with pytest.raises(OutputMismatch, match="no output"):
        measure(Context("reference"), case, 1, 2)
    assert no_timing == []


def test_non_finite_output_is_refused(no_timing):
    c, s = 8, 4

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, c, 1, s), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.mul(x=x, y=np.float16(60000.0), name="y")  # overflows fp16

    x = np.full((1, c, 1, s), 4.0, np.float16)
    case = Case("overflow", {}, prog, {"x": x}, lambda i: {"y": i["x"].astype(np.float64) * 60000.0}, 1.0)
    with pytest.raises(OutputMismatch):
        measure(Context("reference"), case, 1, 2)


def test_cli_records_the_failure_and_exits_nonzero(monkeypatch, tmp_path):
    monkeypatch.setattr(programs, "conv_chain", _wrong_chain)
    out = tmp_path / "peak.json"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        app,
        [
            "bench",
            "peak",
            "--quick",
            "--backend",
            "reference",
            "--out",
            str(out),
            "--set",
            "base_channels=16",
            "--set",
            "channels=16",
            "--set",
            "base_spatial=8",
            "--set",
            "spatial=8",
        ],
    )
    assert result.exit_code == 1
    assert "output check failed" in " ".join(result.output.split())
    rec = json.loads(out.read_text())
    validate(rec)
    assert rec["status"] == "failed" and rec["points"] == [] and "not timed" in rec["note"]


@pytest.mark.parametrize(
    "build",
    [
        lambda: programs.conv_chain(16, 4, 3, spatial2d=True, weights="int8", w8a8=True),
        lambda: programs.conv_chain(16, 4, 2, weights="int8"),
        lambda: programs.conv_chain(64, 8, 1, check_rows=8),
        lambda: programs.matmul_const(24, 8),
        lambda: programs.matmul_dynamic(24, 8),
    ],
)
def test_honest_programs_pass_their_float64_check(build):
    case = build()
    ctx = Context("reference")
    with ctx.compile(case.program) as k:
        check = core.verify(ctx, case, k)
    assert check.passed and check.max_rel_error < case.tol / 4, check
