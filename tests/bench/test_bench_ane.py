"""On a Mac with a Neural Engine: the quick peak benchmark runs on the engine and is recorded as such.

Deselected elsewhere (tests/conftest.py). The threshold is deliberately loose: M4 published 6.73
TFLOPS for the 32x 512ch sp64 point of the quick sweep (ane-private-api.md §4.1), M1-class engines
are slower but still far above 1 TFLOPS on it.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from anekit.bench.schema import validate
from anekit.cli import app


@pytest.mark.requires_ane
def test_peak_quick_on_the_engine_exceeds_one_tflops(tmp_path):
    out = tmp_path / "peak.json"
    result = CliRunner().invoke(app, ["bench", "peak", "--quick", "--backend", "ane", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rec = json.loads(out.read_text())
    validate(rec)
    assert rec["measurement"] == "engine" and rec["backend"] == "ane"
    assert rec["chip"].startswith("Apple")
    assert all(p["check"]["reference"] == "reference backend" for p in rec["points"])
    assert rec["summary"]["best_tflops"] > 1.0
