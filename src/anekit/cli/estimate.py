"""`anekit estimate`: predict a MIL program's time on a chip's Neural Engine with the cost model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from .common import fail, load_program, print_json, stdout_console


def _mb(b: float) -> str:
    return f"{b / 2**20:.2f} MB"


def estimate(
    model: Path = typer.Argument(..., help="A model directory (model.mil + weights/) or a model.mil file."),
    chip: str = typer.Option(
        "m4", "--chip", help="Chip id: m1, m1-pro, ..., m4, m4-pro, m4-max, m5, m5-max."
    ),
    top: int = typer.Option(8, "--top", min=0, help="Show this many most expensive ops."),
    as_json: bool = typer.Option(False, "--json", help="Print the estimate as JSON."),
) -> None:
    """Predict one evaluation's time on the engine from the program's FLOPs, bytes and working set
    (a calibrated model, not a measurement: see docs/benchmarks.md)."""
    from ..perf import UncalibratedChip, chip_id, count_ops, get_chip, predict

    try:
        cid = chip_id(chip)
    except ValueError as e:
        raise fail(str(e)) from None
    program = load_program(model)
    try:
        est = predict(count_ops(program), cid)
    except UncalibratedChip as e:
        raise fail(str(e)) from None
    if as_json:
        print_json(est.to_json())
        return
    console = stdout_console()
    head = Table(
        title=escape(f"{model}: predicted on {get_chip(cid).name} (cost model, not a measurement)"),
        show_header=False,
        title_justify="left",
    )
    head.add_row("time per evaluation", f"{est.time_ms:.4f} ms")
    head.add_row("FLOPs", f"{est.flops / 1e9:.4g} GFLOP ({est.tflops:.3g} TFLOPS effective)")
    head.add_row("utilisation of peak", f"{100 * est.utilisation:.1f} %")
    head.add_row(
        "bytes moved",
        f"{_mb(est.bytes)} (inputs {_mb(est.input_bytes)}, outputs {_mb(est.output_bytes)}, "
        f"weights {_mb(est.weight_bytes)})",
    )
    head.add_row("largest op working set", _mb(est.working_set))
    head.add_row("ops", str(est.n_ops))
    console.print(head)
    bd = Table(title="breakdown (ms)", title_justify="left")
    for k in est.breakdown:
        bd.add_column(k, justify="right")
    bd.add_row(*(f"{v:.4f}" for v in est.breakdown.values()))
    console.print(bd)
    if top > 0 and est.ops:
        ops = Table(title=f"most expensive ops (of {len(est.ops)})", title_justify="left")
        for col in ("op", "type", "kind", "MFLOP", "ms", "working set"):
            ops.add_column(col)
        for o in sorted(est.ops, key=lambda o: -o.time_ms)[:top]:
            ops.add_row(
                escape(o.name),
                o.op_type,
                o.kind,
                f"{o.flops / 1e6:.3g}",
                f"{o.time_ms:.4f}",
                _mb(o.working_set),
            )
        console.print(ops)
    for note in est.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
