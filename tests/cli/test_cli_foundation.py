"""The `anekit` command end to end: doctor, run and lint, with their errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from anekit.cli import app
from anekit.mil import ct, dumps, mb, types

runner = CliRunner()


def test_doctor_lists_backends_and_why():
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    for word in ("reference", "ane", "coreml", "coremltools", "numpy"):
        assert word in result.output
    if sys.platform != "darwin":
        assert "needs macOS" in result.output
        assert "runs on: reference" in result.output


def test_run_prints_and_saves_outputs(model_dir, tmp_path):
    root, _, w, _ = model_dir
    x = np.random.default_rng(1).standard_normal((1, 32, 1, 32)).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    result = runner.invoke(
        app,
        ["run", str(root), "--input", f"x={tmp_path / 'x.npy'}", "--out", str(out), "--backend", "reference"],
    )
    assert result.exit_code == 0, result.output
    assert "(1, 32, 1, 32)" in result.output and "float16" in result.output
    y = np.load(out)["y"]
    expected = np.maximum(w[:, :, 0, 0].astype(np.float64) @ x[0, :, 0, :].astype(np.float64), 0)
    np.testing.assert_allclose(y[0, :, 0, :].astype(np.float64), expected, rtol=2e-3, atol=2e-3)
    # exact numerics come back as float64
    result = runner.invoke(
        app,
        [
            "run",
            str(root / "model.mil"),
            "-i",
            f"x={tmp_path / 'x.npy'}",
            "--out",
            str(out),
            "--backend",
            "reference",
            "--numerics",
            "exact",
        ],
    )
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out)["y"][0, :, 0, :], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "x=missing.npy"], "does not exist"),
        (["--input", "xmissing"], "NAME=FILE.npy"),
        ([], "missing input(s): x"),
        (["--backend", "nope"], "unknown backend 'nope'"),
    ],
)
def test_run_errors_are_actionable(model_dir, args, message, tmp_path, monkeypatch):
    root, *_ = model_dir
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", str(root), *args])
    assert result.exit_code == 1
    assert message in result.output


def test_run_wrong_shape_names_the_expected_input(model_dir, tmp_path):
    root, *_ = model_dir
    np.save(tmp_path / "x.npy", np.zeros((1, 32, 1, 31), np.float16))
    result = runner.invoke(app, ["run", str(root), "-i", f"x={tmp_path / 'x.npy'}", "--backend", "reference"])
    assert result.exit_code == 1
    assert "has shape (1, 32, 1, 31)" in result.output and "tensor<fp16, [1, 32, 1, 32]>" in result.output


def test_run_reports_parse_errors_with_location(tmp_path):
    bad = tmp_path / "bad.mil"
    bad.write_text(
        "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, 32]> x) {\n        oops\n    } -> (x);\n}\n"
    )
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 1
    assert "bad.mil:4:9" in result.output.replace("\n", "")


def test_lint_reports_findings_with_sources_and_exit_status(tmp_path, model_dir):
    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 32, 1, 30), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.rsqrt(x=x, name="r")

    bad = dumps(prog).save(tmp_path / "bad")
    result = runner.invoke(app, ["lint", str(bad)])
    assert result.exit_code == 1
    assert "rsqrt" in result.output and "error" in result.output and ".md" in result.output
    root, *_ = model_dir
    result = runner.invoke(app, ["lint", str(root), "--chip", "m4"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["lint", str(root), "--chip", "z80"])
    assert result.exit_code == 1


def test_every_command_has_help():
    for cmd in ([], ["doctor"], ["run"], ["lint"]):
        result = runner.invoke(app, [*cmd, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "anekit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "doctor" in result.stdout
