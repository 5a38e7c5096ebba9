"""`anekit estimate` end to end: a saved model directory, a model.mil file, JSON output, bad chips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from anekit.cli import app
from anekit.mil import ct, dumps, mb, types

runner = CliRunner(env={"COLUMNS": "200"})
C, S, DEPTH = 128, 64, 4


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    ws = [(rng.standard_normal((C, C, 1, 1)) / np.sqrt(C)).astype(np.float16) for _ in range(DEPTH)]

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, C, 1, S), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        for i, w in enumerate(ws):
            x = mb.conv(x=x, weight=mb.const(val=w, name=f"w{i}"), name=f"c{i}")
        return mb.relu(x=x, name="y")

    return dumps(prog).save(tmp_path_factory.mktemp("est") / "model")


def test_estimate_prints_time_flops_and_breakdown(model_dir):
    result = runner.invoke(app, ["estimate", str(model_dir), "--chip", "m4"])
    assert result.exit_code == 0, result.output
    out = flat(result.output)
    assert "Apple M4" in out and "not a measurement" in out
    assert f"{(2 * C * C * S * DEPTH + C * S) / 1e9:.4g} GFLOP" in out  # convs + relu
    for word in ("dispatch", "load", "mac", "working set", "most expensive ops"):
        assert word in out


def test_estimate_json_from_model_mil(model_dir):
    result = runner.invoke(app, ["estimate", str(model_dir / "model.mil"), "--chip", "M4 Max", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["chip"] == "m4-max"
    assert data["flops"] == 2 * C * C * S * DEPTH + C * S  # + the relu
    assert data["time_ms"] == pytest.approx(sum(data["breakdown"].values()))
    assert data["weight_bytes"] == DEPTH * C * C * 2


def test_estimate_refuses_unknown_and_uncalibrated_chips(model_dir):
    result = runner.invoke(app, ["estimate", str(model_dir), "--chip", "m9"])
    assert result.exit_code == 1 and "unknown chip" in flat(result.output)
    result = runner.invoke(app, ["estimate", str(model_dir), "--chip", "m2-pro"])
    assert result.exit_code == 1 and "no calibration" in flat(result.output)


def test_estimate_missing_file(tmp_path):
    result = runner.invoke(app, ["estimate", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "does not exist" in flat(result.output)


def test_calibrate_module_prints_markdown(capsys):
    from anekit.perf.calibrate import main

    main(["--markdown"])
    out = capsys.readouterr().out
    assert "#### Chained 1x1 convs" in out and "All datasets:" in out
