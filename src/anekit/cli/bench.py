"""`anekit bench`: run engine benchmarks (or their CPU emulation) and compare with published figures."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import fail

NAMES = ("peak", "chain", "conv-vs-matmul", "sram", "int8", "dispatch", "coreml", "power")


def bench(
    experiment: str = typer.Argument(..., help=f"One of: {', '.join(NAMES)}, or all."),
    backend: str = typer.Option("auto", help="auto, ane, reference or coreml."),
    quick: bool = typer.Option(False, "--quick", help="Small sizes and few iterations (a smoke test)."),
    out: Path = typer.Option(
        None, "--out", "-o", help="JSON file to write (default bench-results/NAME-TIME.json)."
    ),
    plot: Path = typer.Option(None, "--plot", help="Write PNG charts into this directory."),
    chip: str = typer.Option("m4", "--chip", help="Chip for the cost model's predicted-engine-time column."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Override a config field: NAME=VALUE, or EXPERIMENT.NAME=VALUE with 'all' (tuples as 1,2,4).",
    ),
) -> None:
    """Run a benchmark experiment: verify each program's output, time it, write a JSON record, print a
    table beside the published figures and, off the engine, the cost model's predicted engine times."""
    from ..backends import BackendUnavailable
    from ..perf import chip_id

    if experiment == "all":
        names = list(NAMES)
    elif experiment in NAMES:
        names = [experiment]
    else:
        raise fail(f"unknown experiment {experiment!r}; choose one of {', '.join(NAMES)} or all")
    try:
        chip_id(chip)
    except ValueError as e:
        raise fail(str(e)) from None
    from ..bench.runner import run, split_overrides

    try:
        overrides = split_overrides(names, set_)
        records, _path = run(
            names, backend=backend, quick=quick, chip=chip, out=out, plot_dir=plot, overrides=overrides
        )
    except (BackendUnavailable, ValueError) as e:
        raise fail(str(e)) from None
    failed = [r["experiment"] for r in records if r["status"] == "failed"]
    if failed:
        raise fail(f"output check failed in: {', '.join(failed)} (see the record's note)")
