"""`anekit bench`: run engine benchmarks (or their CPU emulation) and compare with published figures."""

from __future__ import annotations

from pathlib import Path

import typer

from ..bench import EXPERIMENTS, select
from .common import check_output_dir, check_output_file, fail, output_console, print_json


def bench(
    experiment: str = typer.Argument(..., help=f"One of: {', '.join(EXPERIMENTS)}, or all."),
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
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print the record (what the JSON file holds) on stdout; banner, progress, tables to stderr.",
    ),
) -> None:
    """Run a benchmark experiment: verify each program's output, time it, write a JSON record, print a
    table beside the published figures and, off the engine, the cost model's predicted engine times.
    Off the engine every time is CPU emulation, and the record says so ("measurement": "cpu-emulation")."""
    from ..backends import BackendUnavailable, resolve
    from ..perf import chip_id

    try:
        names = select(experiment)
        chip_id(chip)
        resolve(backend)
    except ValueError as e:
        raise fail(str(e)) from None
    from ..bench.record import document
    from ..bench.runner import config_for, default_out, run, split_overrides

    target = out or default_out(names)
    check_output_file(target, "--out")
    if plot is not None:
        check_output_dir(plot, "--plot")
    try:
        overrides = split_overrides(names, set_)
        for n in names:  # every --set value is checked before the first program runs
            config_for(n, quick, overrides.get(n))
    except ValueError as e:
        raise fail(str(e)) from None
    console = output_console(as_json)
    try:
        records, _path = run(
            names,
            backend=backend,
            quick=quick,
            chip=chip,
            out=target,
            plot_dir=plot,
            overrides=overrides,
            console=console,
        )
    except (BackendUnavailable, ValueError) as e:
        raise fail(str(e)) from None
    except MemoryError:
        raise fail("ran out of memory; use --quick or smaller sizes with --set") from None
    except OSError as e:
        raise fail(f"cannot write the results: {e}") from None
    if as_json:
        print_json(document(records))
    failed = [r["experiment"] for r in records if r["status"] == "failed"]
    if failed:
        raise fail(f"output check failed in: {', '.join(failed)} (see the record's note)")
