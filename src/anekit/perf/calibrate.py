"""The calibration report: every published row beside the cost model's prediction, and the error bounds.

    python -m anekit.perf.calibrate              # a table in the terminal
    python -m anekit.perf.calibrate --markdown   # the tables of docs/benchmarks.md
    python -m anekit.perf.calibrate --fit        # refit the parameters and show the result
    python -m anekit.perf.calibrate --fit --write  # ... and store them in anekit/perf/params.json

Error = (predicted - published) / published. Rows whose published data contradict themselves are shown
with the reason and left out of the fit and of the bounds (see published.py). The bounds below are what
the test suite asserts over the fitted rows of each dataset; they were chosen after looking at the
spread of the data itself (e.g. the M4 Max fork's chain column and the M3 Ultra column disagree with
the M4 column by 20-30 % at small depth), not to flatter the model.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from .fit import predicted_value
from .model import Params, default_params
from .published import DATASETS, Row, published_rows

#: dataset -> (bound on the median |error| %, bound on the largest |error| %), over fitted rows.
BOUNDS: dict[str, tuple[float, float]] = {
    "chain": (15.0, 40.0),  # per-machine columns disagree with each other by up to ~30 % at small depth
    "peak": (15.0, 25.0),
    "single-conv": (15.0, 35.0),  # a 0.01 ms change is 10 % of a tiny conv; M3 Ultra has one row
    "sram": (15.0, 30.0),
    "int8": (10.0, 10.0),
    "training": (15.0, 30.0),  # M1 Max is published as a range, 35-45 ms; error is against the midpoint
}
#: bound on the median |error| % over all fitted rows
OVERALL_MEDIAN_BOUND = 10.0


@dataclass(frozen=True)
class CalibrationRow:
    dataset: str
    chip: str
    label: str
    unit: str
    published: float
    predicted: float
    error_pct: float
    fitted: bool
    flag: str
    source: str
    value_range: tuple[float, float] | None = None


def calibration_report(params: Params | None = None, rows: list[Row] | None = None) -> list[CalibrationRow]:
    """Published against predicted for every published row (fitted or not)."""
    params = params or default_params()
    out = []
    for r in rows if rows is not None else published_rows():
        pred = predicted_value(r, params)
        out.append(
            CalibrationRow(
                r.dataset,
                r.chip,
                r.label,
                r.unit,
                r.value,
                pred,
                100.0 * (pred - r.value) / r.value,
                r.fit,
                r.flag,
                r.source,
                r.value_range,
            )
        )
    return out


def summary(report: list[CalibrationRow]) -> dict[str, dict[str, float]]:
    """Per dataset: fitted rows, shown-only rows, median and max |error| % over fitted rows."""
    out: dict[str, dict[str, float]] = {}
    for ds in DATASETS + ("all",):
        rows = [r for r in report if ds in ("all", r.dataset)]
        errs = [abs(r.error_pct) for r in rows if r.fitted]
        if not rows:
            continue
        out[ds] = {
            "rows": len(rows),
            "fitted": len(errs),
            "median_abs_error_pct": statistics.median(errs) if errs else float("nan"),
            "max_abs_error_pct": max(errs) if errs else float("nan"),
        }
    return out


def _fmt(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.2f}"


_TITLES = {
    "chain": "Chained 1x1 convs against depth (ane-private-api.md §4.1), TFLOPS",
    "peak": "Best chained-conv throughput per chip (§4.1), TFLOPS",
    "single-conv": "One op per program: dispatch latency (§4.2, §4.7), ms",
    "sram": "Weight working set and the SRAM cliff (§4.3; blog matmuls §4.2), TFLOPS",
    "int8": "FP16 against INT8 W8A8 (§4.4)",
    "training": "Static Stories110M training, forward ANE ms per step (§4.8)",
}


def markdown(report: list[CalibrationRow] | None = None, params: Params | None = None) -> str:
    """The calibration tables of docs/benchmarks.md, generated so they stay true."""
    params = params or default_params()
    report = report if report is not None else calibration_report(params)
    summ = summary(report)
    lines = []
    for ds in DATASETS:
        rows = [r for r in report if r.dataset == ds]
        s = summ[ds]
        med, mx = BOUNDS[ds]
        lines += [
            f"#### {_TITLES[ds]}",
            "",
            f"{s['fitted']} of {s['rows']} rows fitted; median |error| {s['median_abs_error_pct']:.1f} % "
            f"(bound {med:g} %), max {s['max_abs_error_pct']:.1f} % (bound {mx:g} %).",
            "",
            "| chip | config | published | predicted | error | note |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            pub = _fmt(r.published) + (
                f" ({_fmt(r.value_range[0])}-{_fmt(r.value_range[1])})" if r.value_range else ""
            )
            note = r.flag if r.flag else ""
            if not r.fitted:
                note = "**not fitted**: " + note
            lines.append(
                f"| {r.chip} | {r.label} | {pub} {r.unit} | {_fmt(r.predicted)} {r.unit} | "
                f"{r.error_pct:+.1f} % | {note} |"
            )
        lines.append("")
    a = summ["all"]
    lines.append(
        f"All datasets: {a['fitted']} fitted rows, median |error| {a['median_abs_error_pct']:.1f} % "
        f"(bound {OVERALL_MEDIAN_BOUND:g} %)."
    )
    return "\n".join(lines) + "\n"


def params_markdown(params: Params | None = None) -> str:
    """The fitted parameters as markdown tables, with where each came from."""
    p = params or default_params()
    g = p.globals
    lines = [
        "| parameter | value | meaning |",
        "|---|---|---|",
        f"| B_onchip | {g.onchip_tbs:.3g} TB/s | reading a MAC op's weight operand |",
        f"| eff_matmul | {g.matmul_eff:.3g} | matmul rate / 1x1 conv rate |",
        f"| eff_vector | {g.vector_eff:.3g} | elementwise rate / peak (assumed, not fitted) |",
        f"| B_move | {g.move_gbs:.3g} GB/s | data movement (reshape, transpose, concat, cast) |",
        f"| int8 | {g.int8_speedup:.3g} | W8A8 MAC speed-up |",
        f"| alpha, gamma | {g.sram_alpha:.3g}, {g.sram_gamma:.3g} | "
        "SRAM slow-down 1 + alpha (ws/SRAM - 1)^gamma |",
        "",
        "| chip | P (TFLOPS) | BW (GB/s) | dispatch (ms) | SRAM (MB) | provenance |",
        "|---|---|---|---|---|---|",
    ]
    for cid, c in p.chips.items():
        prov = "; ".join(f"{k}: {v}" for k, v in c.provenance.items())
        lines.append(
            f"| {cid} | {c.peak_tflops:.3g} | {c.bandwidth_gbs:.4g} | {c.dispatch_ms:.3g} | {c.sram_mb:g} "
            f"| {prov} |"
        )
    if p.setups:
        lines += ["", "| measurement setup | dispatch (ms) |", "|---|---|"]
        lines += [f"| {k} | {v:.3g} |" for k, v in p.setups.items()]
    return "\n".join(lines) + "\n"


def _round(obj):
    if isinstance(obj, float):
        return float(f"{obj:.6g}")
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v) for v in obj]
    return obj


def write_params(params: Params, path: Path | None = None) -> Path:
    """Store fitted parameters (6 significant digits) where `default_params` reads them."""
    path = path or Path(__file__).with_name("params.json")
    path.write_text(json.dumps(_round(params.to_json()), indent=1) + "\n", encoding="utf-8")
    return path


def _print_table(report: list[CalibrationRow]) -> None:
    from rich.console import Console
    from rich.table import Table

    # Never hard-wrapped when redirected: soft_wrap keeps printed lines whole, and off a terminal the
    # table is laid out wide (one line per row) instead of folded at rich's default 80 columns.
    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console.width = 10_000
    table = Table(title="anekit cost model: published vs predicted")
    for col in ("dataset", "chip", "config", "published", "predicted", "error", "fitted"):
        table.add_column(col)
    for r in report:
        err = f"{r.error_pct:+.1f} %"
        table.add_row(
            r.dataset,
            r.chip,
            r.label,
            f"{_fmt(r.published)} {r.unit}",
            f"{_fmt(r.predicted)} {r.unit}",
            err,
            "yes" if r.fitted else "[yellow]no[/]",
        )
    console.print(table)
    for ds, s in summary(report).items():
        console.print(
            f"{ds}: {s['fitted']}/{s['rows']} fitted, median |err| {s['median_abs_error_pct']:.1f} %, "
            f"max {s['max_abs_error_pct']:.1f} %"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Compare the cost model with every published ANE measurement.")
    ap.add_argument(
        "--markdown", action="store_true", help="print the markdown tables for docs/benchmarks.md"
    )
    ap.add_argument("--params", action="store_true", help="with --markdown: also print the parameter tables")
    ap.add_argument("--fit", action="store_true", help="refit the parameters to the published rows")
    ap.add_argument("--write", action="store_true", help="with --fit: store them in anekit/perf/params.json")
    args = ap.parse_args(argv)
    params = None
    if args.fit:
        from .fit import fit

        params = fit()
        if args.write:
            print(f"wrote {write_params(params)}")
            default_params.cache_clear()
    report = calibration_report(params)
    if args.markdown:
        if args.params:
            print(params_markdown(params))
        print(markdown(report, params))
    else:
        _print_table(report)


if __name__ == "__main__":
    main()
