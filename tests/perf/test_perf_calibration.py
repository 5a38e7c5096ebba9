"""The cost model against every published row: error per dataset within the documented bounds.

Bounds (anekit.perf.calibrate.BOUNDS, documented in docs/benchmarks.md) are asserted on the fitted rows;
rows whose published data contradict themselves carry a reason and are shown but not fitted.
"""

from __future__ import annotations

import math

import pytest

from anekit.perf import calibrate
from anekit.perf.published import DATASETS, published_rows


@pytest.fixture(scope="module")
def report():
    return calibrate.calibration_report()


@pytest.mark.parametrize("dataset", DATASETS)
def test_errors_within_bounds(report, dataset):
    s = calibrate.summary(report)[dataset]
    med, mx = calibrate.BOUNDS[dataset]
    assert s["fitted"] >= 1
    assert s["median_abs_error_pct"] < med, s
    assert s["max_abs_error_pct"] < mx, s


def test_overall_median(report):
    assert calibrate.summary(report)["all"]["median_abs_error_pct"] < calibrate.OVERALL_MEDIAN_BOUND


def test_headline_rows(report):
    """The figures the brief names: M4 chain peak, M4 training step, M4 W8A8, the M4 Max SRAM probe."""
    by = {(r.chip, r.label): r for r in report}
    peak = by[("m4", "128x conv 512ch sp64 [M4 Mac mini, issue #3]")]
    assert abs(peak.error_pct) < 10
    train = by[("m4", "Stories110M static, forward ANE ms/step [m4]")]
    assert abs(train.error_pct) < 15
    w8a8 = by[("m4", "W8A8 128x conv 512ch 64x64 [M4, README]")]
    assert abs(w8a8.error_pct) < 10
    big = by[("m4-max", "1x conv 8192ch sp32 (128.0 MB) [sram_probe]")]
    small = by[("m4-max", "1x conv 3072ch sp64 (18.0 MB) [sram_probe]")]
    assert big.predicted < 0.5 * small.predicted  # the cliff: 128 MB collapses (§4.3)


def test_every_row_has_a_source_and_unfitted_rows_say_why():
    rows = published_rows()
    assert len(rows) > 60
    for r in rows:
        assert ".md §" in r.source, r
        assert r.value > 0 and math.isfinite(r.value)
        if not r.fit:
            assert r.flag.startswith("self-inconsistent"), r


def test_markdown_tables_are_generated(report):
    md = calibrate.markdown(report)
    for ds in DATASETS:
        assert calibrate._TITLES[ds] in md
    assert md.count("| chip | config | published | predicted | error | note |") == len(DATASETS)
    assert "not fitted" in md
    assert "| m4 |" in calibrate.params_markdown()


def test_stored_parameters_are_the_fit_of_the_published_rows():
    """params.json is what `python -m anekit.perf.calibrate --fit --write` produces from today's code and
    data: refitting moves no prediction by more than 2 %."""
    from anekit.perf.fit import fit, predicted_value
    from anekit.perf.model import default_params

    stored = default_params()
    refit = fit()
    for r in published_rows():
        a, b = predicted_value(r, stored), predicted_value(r, refit)
        assert abs(a - b) / b < 0.02, (r.label, a, b)
