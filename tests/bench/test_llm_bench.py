"""`anekit bench llm --quick` on the reference backend: the record validates, both sides were checked
against the float64 reference before being timed, the measured part is labelled CPU emulation and the
predicted part a prediction. No timing is asserted."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from anekit.bench import EXPERIMENTS
from anekit.bench.schema import validate
from anekit.cli import app

pytest.importorskip("torch")
pytest.importorskip("transformers")

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "llm.json"
    result = runner.invoke(
        app, ["bench", "llm", "--quick", "--backend", "reference", "--out", str(out), "--chip", "m4"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_registered():
    assert "llm" in EXPERIMENTS and EXPERIMENTS["llm"].config.quick().design_choices is False


def test_record_valid_and_labelled(record):
    validate(record)
    assert record["experiment"] == "llm" and record["status"] == "ok"
    assert record["measurement"] == "cpu-emulation" and record["backend"] == "reference"
    labels = [p["label"] for p in record["points"]]
    assert labels == ["anekit prefill", "anekit decode", "transformers prefill", "transformers decode"]
    for p in record["points"]:
        assert p["check"]["passed"] and p["check"]["reference"] == "float64 numpy"
        assert p["timing"]["n"] >= 1 and p["predicted"]["chip"] == "m4" and p["predicted"]["time_ms"] > 0
    m = record["summary"]["measured"]
    assert "cpu-emulation" in m["kind"] and m["threads"] >= 1
    assert m["prefill_ratio"] == pytest.approx(
        m["transformers"]["prefill_tok_s"] / m["anekit"]["prefill_tok_s"]
    )
    assert m["decode_ratio"] == pytest.approx(m["transformers"]["decode_tok_s"] / m["anekit"]["decode_tok_s"])


def test_predicted_part(record):
    pred = record["summary"]["predicted"]
    assert "predicted" in pred["kind"] and "not measured" in pred["kind"] and pred["chip"] == "m4"
    rows = pred["decode"]
    assert set(rows) == {f"{m} {q}" for m in ("qwen3-0.6b", "llama-3.2-1b") for q in ("fp16", "int8", "int4")}
    for m in ("qwen3-0.6b", "llama-3.2-1b"):
        gb = [rows[f"{m} {q}"]["weight_gb_per_token"] for q in ("fp16", "int8", "int4")]
        assert gb == sorted(gb, reverse=True)
        g = pred["goal"][m]
        assert g["goal_met_by_prediction"] == (g["best_predicted_tok_s"] >= 2 * g["best_published_tok_s"])
    assert pred["goal"]["llama-3.2-1b"]["best_published_tok_s"] == 50.2
    assert any("§10.5" in p["source"] for p in record["published"])


def test_predicted_summary_with_design_choices():
    from anekit.bench.llm import predicted_summary

    s = predicted_summary("m4", 256, design=True)
    rows = s["design_choices"]["qwen3-0.6b"]
    assert any(k.startswith("layers per program: ") for k in rows)
    assert all(r["tok_s_ours"] > 0 and r["effect"] > 0 for r in rows.values())
    assert "50.2 tok/s" in s["published"]["llama-3.2-1b"]
