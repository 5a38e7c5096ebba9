"""Printing bench results: the CPU-emulation banner, one table per experiment, the published figures."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table


def banner(console: Console, backend: str, chip: str) -> None:
    """Say plainly, before any number, whether the numbers are engine measurements."""
    if backend in ("ane", "coreml"):
        console.print(Panel(f"Engine measurements: backend [bold]{backend}[/].", style="green", expand=False))
        return
    console.print(
        Panel(
            f"[bold]CPU emulation[/]: these times are the NumPy [bold]{backend}[/] backend on this "
            "machine's CPU, not the Apple Neural Engine. Every engine figure needs an ANE (run with "
            "--backend ane on an Apple silicon Mac). The 'predicted' columns are the anekit cost model's "
            f"engine times for [bold]{chip}[/] (anekit.perf, calibrated on published measurements), "
            "not measurements.",
            title="not an ANE measurement",
            style="yellow",
            expand=False,  # a console writing to a file is laid out wide; the box fits its text
        )
    )


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    return (f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}") + unit


def experiment_table(console: Console, record: dict, title: str) -> None:
    """One row per point: measured spread and TFLOPS, predicted engine time, published value."""
    name = record["experiment"]
    if record["status"] != "ok":
        console.print(f"[bold]{name}[/]: [yellow]{record['status']}[/] - {record['note']}")
        return
    chip = record["cost_model"]["chip"]
    kind = "engine" if record["measurement"] == "engine" else "CPU"
    t = Table(title=f"{name}: {title}", title_justify="left")
    for col in (
        "point",
        f"{kind} median ms",
        "p10-p90 ms",
        "n",
        f"{kind} TFLOPS",
        "check",
        f"pred. {chip} ms",
        f"pred. {chip} TFLOPS",
        f"published ({chip})",
    ):
        t.add_column(col, justify="left" if col == "point" else "right")
    for p in record["points"]:
        tm = p["timing"]
        pred = p["predicted"] or {}
        pub = p["published"]
        pub_s = f"{pub['value']:g} {pub['unit']}" if pub else "-"
        t.add_row(
            p["label"],
            _fmt(tm["median_ms"]),
            f"{_fmt(tm['p10_ms'])}-{_fmt(tm['p90_ms'])}",
            str(tm["n"]),
            _fmt(p["tflops"]),
            f"{p['check']['max_rel_error']:.1e}",
            _fmt(pred.get("time_ms")),
            _fmt(pred.get("tflops")),
            pub_s,
        )
    console.print(t)
    if record["summary"]:
        items = ", ".join(f"{k}={_short(v)}" for k, v in record["summary"].items())
        console.print(f"[dim]summary:[/] {items}")
    if record["note"]:
        console.print(f"[dim]note:[/] {record['note']}")


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    return str(v)


def published_table(console: Console, record: dict, limit: int = 8) -> None:
    """The published figures the experiment compares with: the chosen chip's numbers, then statements."""
    figs = record["published"]
    if not figs:
        return
    chip = record["cost_model"]["chip"]
    numbers = [f for f in figs if f["value"] is not None]
    mine = [f for f in numbers if f["chip"] == chip]
    shown = mine[:limit] + [f for f in figs if f["value"] is None]
    t = Table(
        title=f"{record['experiment']}: published figures (reference, not measured here)",
        title_justify="left",
    )
    for col in ("chip", "what", "value", "source"):
        t.add_column(col)
    for f in shown:
        val = f"{f['value']:g} {f['unit']}" if f["value"] is not None else ""
        t.add_row(f["chip"] or "", f["label"], val, f["source"])
    console.print(t)
    rest = len(numbers) - min(len(mine), limit)
    if rest > 0:
        console.print(
            f"[dim]{rest} more published rows (other chips) are in the JSON record; "
            "`python -m anekit.perf.calibrate` lists them all beside the cost model[/]"
        )
