"""The held-out corpus of real MIL (`../shared/mil-corpus`, text nobody on the project wrote): its own
checker's parse, structure, constant, round-trip, value and smoke checks all pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "mil-corpus"


@pytest.mark.skipif(
    not (CORPUS / "check.py").is_file(),
    reason=f"the real MIL corpus is not at {CORPUS} (CI has ../shared beside the checkout)",
)
def test_every_real_mil_case_passes_the_corpus_checker():
    cases = json.loads((CORPUS / "cases.json").read_text(encoding="utf-8"))
    assert len(cases) >= 58
    done = subprocess.run(
        [sys.executable, str(CORPUS / "check.py")], capture_output=True, text=True, timeout=1800
    )
    summary = f"{len(cases)}/{len(cases)} real MIL cases pass"
    assert summary in done.stdout and done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
