"""Seeded fuzzing of everything anekit reads from a user: MIL text, weight blobs, record bundles,
model directories (`model`) and the OpenAI-compatible server's requests (`serve`).

A target makes one input from a random generator and feeds it to anekit. The only acceptable outcomes are
success or an `AnekitError` (a refusal with a message); any other exception, or a case that runs past
its time limit, is a defect, reported with the seed and case number that reproduce it:

    python -m anekit.fuzz mil --cases 20000 --seed 0
    python -m anekit.fuzz mil --seed 0 --case 1234        # replay one case, with its traceback

Case `i` of seed `s` draws from `numpy.random.default_rng([s, i])`, so a case reproduces on its own.
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

import numpy as np

from ..errors import AnekitError

#: Target name -> module defining `make_case(rng) -> case` and `run_case(case) -> None`.
TARGET_MODULES = {
    "mil": "anekit.fuzz.mil_text",
    "blob": "anekit.fuzz.blob",
    "bundle": "anekit.fuzz.bundle",
    "model": "anekit.fuzz.model_dir",
    "serve": "anekit.fuzz.serve_requests",
}

#: What a case can end in; "other" (an exception that is not an AnekitError) and "hang" are defects.
OUTCOMES = ("ok", "anekit_error", "other", "hang")


@dataclass(frozen=True)
class Target:
    name: str
    make_case: Callable[[np.random.Generator], Any]
    run_case: Callable[[Any], None]
    describe: Callable[[Any], str] = repr


def target(name: str) -> Target:
    """The fuzz target `name` (one of `TARGET_MODULES`)."""
    if name not in TARGET_MODULES:
        raise AnekitError(f"unknown fuzz target {name!r}; choose one of {', '.join(TARGET_MODULES)}")
    module = import_module(TARGET_MODULES[name])
    return Target(name, module.make_case, module.run_case, getattr(module, "describe", repr))


@dataclass
class Defect:
    case: int
    outcome: str  # "other" (an exception that is not an AnekitError) or "hang"
    error: str
    input: str
    traceback: str = ""


@dataclass
class FuzzReport:
    target: str
    seed: int
    cases: int = 0
    counts: dict[str, int] = field(
        default_factory=lambda: {"ok": 0, "anekit_error": 0, "other": 0, "hang": 0}
    )
    defects: list[Defect] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return self.counts["other"] == 0 and self.counts["hang"] == 0

    def as_dict(self) -> dict:
        return {
            "target": self.target,
            "seed": self.seed,
            "cases": self.cases,
            **self.counts,
            "seconds": round(self.seconds, 2),
            "defects": [d.__dict__ for d in self.defects],
        }


class _Hang(BaseException):
    """Raised by the timer inside a case that ran too long (a BaseException, so no `except Exception`
    in the code under test can swallow it)."""


def case_rng(seed: int, case: int) -> np.random.Generator:
    return np.random.default_rng([seed, case])


def run_one(t: Target, seed: int, case: int, timeout_s: float) -> tuple[str, Defect | None]:
    """Run case `case` of `seed`; returns its outcome and, for a defect, what reproduces it."""
    inp = t.make_case(case_rng(seed, case))
    timer = _Timer(timeout_s)
    try:
        with timer:
            t.run_case(inp)
    except _Hang:
        return "hang", Defect(case, "hang", f"ran past {timeout_s} s", _clip(t.describe(inp)))
    except AnekitError:
        return "anekit_error", None
    except Exception as e:  # noqa: BLE001 - anything else escaping is exactly what the fuzz looks for
        return "other", Defect(
            case,
            "other",
            f"{type(e).__name__}: {_clip(str(e), 300)}",
            _clip(t.describe(inp)),
            traceback.format_exc(),
        )
    return "ok", None


def run(
    name: str,
    cases: int,
    seed: int = 0,
    timeout_s: float = 10.0,
    keep: int = 20,
    progress: Callable[[int], None] | None = None,
) -> FuzzReport:
    """Run `cases` cases of target `name`; keeps the first `keep` defects with their reproducers."""
    t = target(name)
    report = FuzzReport(name, seed)
    start = time.perf_counter()
    for i in range(cases):
        outcome, defect = run_one(t, seed, i, timeout_s)
        report.counts[outcome] += 1
        report.cases += 1
        if defect is not None and len(report.defects) < keep:
            report.defects.append(defect)
        if progress is not None:
            progress(i + 1)
    report.seconds = time.perf_counter() - start
    return report


class _Timer:
    """SIGALRM-based time limit; off the main thread (or without SIGALRM) there is no limit."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.active = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()

    def __enter__(self):
        if self.active:
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        return False

    @staticmethod
    def _fire(signum, frame):
        raise _Hang()


def _clip(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"
