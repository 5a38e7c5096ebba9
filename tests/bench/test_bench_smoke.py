"""`anekit bench all --quick` on the reference backend: every experiment runs (or is skipped with a
reason), every record validates against the schema, and the output says the times are CPU emulation.
No timing is asserted."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from anekit.bench import EXPERIMENTS
from anekit.bench.schema import validate
from anekit.cli import app

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    out, plots = d / "all.json", d / "plots"
    result = runner.invoke(
        app,
        [
            "bench",
            "all",
            "--quick",
            "--backend",
            "reference",
            "--out",
            str(out),
            "--plot",
            str(plots),
            "--chip",
            "m4",
        ],
    )
    return result, json.loads(out.read_text()), plots


def test_bench_all_quick_runs(quick_run):
    result, data, _ = quick_run
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "CPU emulation" in text and "needs an ANE" not in text or "not the Apple Neural Engine" in text
    assert "predicted" in text and "published figures" in text
    validate(data)
    assert data["kind"] == "anekit.bench.run"
    assert [r["experiment"] for r in data["records"]] == list(EXPERIMENTS)


def test_every_record_validates_and_is_labelled_cpu_emulation(quick_run):
    _, data, _ = quick_run
    for rec in data["records"]:
        validate(rec)
        assert rec["measurement"] == "cpu-emulation" and rec["backend"] == "reference"
        assert rec["quick"] is True and rec["cost_model"]["chip"] == "m4"
        if sys.platform != "darwin":
            assert rec["chip"] == "n/a"
        if rec["status"] == "ok":
            assert rec["points"], rec["experiment"]
            for p in rec["points"]:
                assert p["check"]["passed"] and p["check"]["reference"] == "float64 numpy"
                assert p["timing"]["n"] >= 1 and p["tflops"] > 0
                assert p["predicted"]["chip"] == "m4" and p["predicted"]["time_ms"] > 0
        else:
            assert rec["status"] == "skipped" and rec["note"]


def test_experiment_specific_summaries(quick_run):
    _, data, plots = quick_run
    recs = {r["experiment"]: r for r in data["records"]}
    assert recs["peak"]["summary"]["best_tflops"] > 0
    # the published M4 figure for the one published config in the quick sweep (§4.1: 32x 512ch sp64)
    pub = [p["published"] for p in recs["peak"]["points"] if p["published"]]
    assert pub and pub[0]["value"] == 6.73
    assert set(recs["int8"]["summary"]["speedup_over_fp16"]["depth 2"]) >= {"w8a8", "predicted_w8a8"}
    d = recs["dispatch"]["summary"]
    assert d["p50_ms"] <= d["p90_ms"] <= d["p99_ms"]
    assert len(recs["dispatch"]["points"][0]["timing"]["samples_ms"]) == recs["dispatch"]["config"]["iters"]
    assert "cliff_mb" in recs["sram"]["summary"] and "CPU" in recs["sram"]["note"]
    assert recs["conv-vs-matmul"]["summary"]["time_ratios"]
    if sys.platform != "darwin":
        assert recs["coreml"]["status"] == "skipped" and "macOS" in recs["coreml"]["note"]
        assert recs["power"]["status"] == "skipped" and "macOS" in recs["power"]["note"]
    names = {p.name for p in plots.iterdir()}
    assert {
        "peak_depth.png",
        "chain.png",
        "conv_vs_matmul.png",
        "sram.png",
        "int8.png",
        "dispatch_hist.png",
    } <= names


def test_single_experiment_writes_a_record(tmp_path):
    out = tmp_path / "d.json"
    result = runner.invoke(
        app, ["bench", "dispatch", "--quick", "--backend", "reference", "--out", str(out), "--set", "iters=7"]
    )
    assert result.exit_code == 0, result.output
    rec = json.loads(out.read_text())
    validate(rec)
    assert rec["kind"] == "anekit.bench.record" and rec["config"]["iters"] == 7


def test_bad_arguments_are_refused(tmp_path):
    r = runner.invoke(app, ["bench", "nope", "--backend", "reference"])
    assert r.exit_code == 1 and "unknown experiment" in r.output
    r = runner.invoke(
        app,
        [
            "bench",
            "peak",
            "--quick",
            "--backend",
            "reference",
            "--set",
            "colour=red",
            "--out",
            str(tmp_path / "x.json"),
        ],
    )
    assert r.exit_code == 1 and "no config field" in " ".join(r.output.split())
    r = runner.invoke(app, ["bench", "peak", "--quick", "--chip", "m9"])
    assert r.exit_code == 1 and "unknown chip" in " ".join(r.output.split())
