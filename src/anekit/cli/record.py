"""`anekit record` and `anekit replay`: keep a kernel run as a bundle, check a bundle elsewhere."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer
from rich.table import Table

from .common import fail, load_program, stdout_console
from .run import _parse_inputs


def record(
    model: Path = typer.Argument(..., help="A model directory (model.mil + weights/) or a model.mil file."),
    input: list[str] = typer.Option([], "--input", "-i", help="NAME=FILE.npy, once per program input."),
    out: Path = typer.Option(None, "--out", "-o", help="Bundle directory (default: ./bundle-<time>)."),
    backend: str = typer.Option("ane", help="ane (the engine), or reference (marked as such)."),
    repeat: int = typer.Option(1, min=1, help="Runs to time (the outputs of run 1 are kept)."),
    numerics: str = typer.Option("ane", help="Reference backend numerics: ane (fp16) or exact."),
) -> None:
    """Run a program once (or --repeat times) and store program, inputs, outputs, chip, macOS
    build and timings in a bundle directory, whose meta.json says where the outputs came from."""
    from ..backends import BackendUnavailable, KernelInputError
    from ..mil.model import MilModel
    from ..record import BundleError, save_bundle
    from ..record import record as record_run

    if backend not in ("ane", "reference"):
        raise fail(f"--backend must be ane or reference, not {backend!r}")
    if not model.exists():
        raise fail(f"{model} does not exist")
    load_program(model)  # parse errors are reported with their location
    from ..mil.model import load

    source: MilModel = load(model)
    inputs = _parse_inputs(input)
    options = {"numerics": numerics} if backend == "reference" else {}
    try:
        bundle = record_run(source, inputs, backend=backend, repeat=repeat, **options)
    except BackendUnavailable as e:
        raise fail(
            f"{e}. To make a bundle here anyway, use --backend reference: its meta.json will say "
            '"source": "reference-backend", never hardware.'
        ) from None
    except (KernelInputError, BundleError, ValueError, NotImplementedError) as e:
        raise fail(str(e)) from None
    target = out or Path(f"bundle-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    save_bundle(bundle, target)
    console = stdout_console()
    t = bundle.meta["timings"]
    console.print(f"recorded {len(bundle.outputs)} output(s) from [bold]{bundle.source}[/] into {target}")
    if t["engine_wall_s"]:
        hw = [h for h in t["hw_execution_ns"] if h is not None]
        console.print(
            f"eval wall time: min {min(t['engine_wall_s']) * 1e3:.3f} ms over {t['runs']} run(s); "
            f"hwExecutionTime: {f'{min(hw)} ns' if hw else 'not reported'}"
        )


def replay(
    bundle: Path = typer.Argument(..., help="A bundle directory written by `anekit record`."),
    backend: str = typer.Option("reference", help="Backend to replay on."),
) -> None:
    """Run a bundle's program on its inputs and compare with its recorded outputs (fp16 tolerance)."""
    from ..backends import BackendUnavailable
    from ..record import BundleError, check_replay, load_bundle

    try:
        b = load_bundle(bundle)
        problems = check_replay(b, backend)
    except (BundleError, BackendUnavailable, ValueError, NotImplementedError) as e:
        raise fail(str(e)) from None
    console = stdout_console()
    table = Table(title=f"{bundle} ({b.source}, {b.meta.get('machine', {}).get('chip', '?')}) on {backend}")
    table.add_column("result")
    for p in problems or ["every output matches within fp16 tolerance"]:
        table.add_row(p)
    console.print(table)
    if problems:
        raise typer.Exit(1)
