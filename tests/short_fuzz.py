"""The one check of a short, fixed-seed fuzz run, shared by the tests of every fuzz target."""

from __future__ import annotations

from anekit.fuzz import run


def assert_short_run_clean(name: str, cases: int, ok_at_least: int) -> None:
    """`cases` cases of target `name` (seed 20261130): no raw exception, no hang, at least
    `ok_at_least` successes and a fifth refusals (a target whose cases all fail the same way, or all
    pass, would prove little)."""
    report = run(name, cases, seed=20261130, timeout_s=10.0)
    assert report.cases == cases
    details = [f"case {d.case}: {d.outcome}: {d.error}\n{d.input}\n{d.traceback}" for d in report.defects]
    assert report.counts["other"] == 0 and report.counts["hang"] == 0, "\n\n".join(details)
    assert report.counts["ok"] >= ok_at_least, report.counts
    assert report.counts["anekit_error"] >= cases // 5, report.counts
