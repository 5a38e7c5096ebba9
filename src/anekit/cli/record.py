"""`anekit record` and `anekit replay`: keep a kernel run as a bundle, check a bundle elsewhere."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from ..backends.base import NUMERICS_NAMES
from .common import check_creatable_dir, fail, load_program, output_console, print_json, stdout_console
from .run import _parse_inputs

#: Bundle "source" -> what its timings are (anekit.bundles.SOURCES names the sources).
MEASUREMENT = {"ane-hardware": "engine", "coreml-backend": "engine (through Core ML)"}
EMULATED = "cpu-emulation"


def measurement(source: str) -> str:
    """What a bundle's timings measure: the engine only for hardware runs; anything else is the CPU
    emulating it (the reference backend), never an engine time."""
    return MEASUREMENT.get(source, EMULATED)


def _check_bundle_dir(target: Path, overwrite: bool) -> None:
    """Refuse, before anything runs, a bundle directory that would be written through a symlink, that
    exists as a file, or that holds files and was not meant to be replaced."""
    if target.is_symlink():
        raise fail(f"--out {target} is a symbolic link; bundles are never written through one")
    if target.exists() and not target.is_dir():
        raise fail(f"--out {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise fail(f"--out {target} exists and is not empty; pass --overwrite to replace it")
    check_creatable_dir(target.parent, "--out", target)


def _timing_line(meta: dict[str, Any]) -> str:
    t = meta.get("timings") or {}
    kind = measurement(meta.get("source", ""))
    engine = [x for x in t.get("engine_wall_s") or [] if isinstance(x, (int, float))]
    calls = [x for x in t.get("call_wall_s") or [] if isinstance(x, (int, float))]
    if engine:
        hw = [h for h in t.get("hw_execution_ns") or [] if h is not None]
        return (
            f"eval wall time ({kind}): min {min(engine) * 1e3:.3f} ms over {t.get('runs', len(engine))} "
            f"run(s); hwExecutionTime: {f'{min(hw)} ns' if hw else 'not reported'}"
        )
    if calls:
        label = kind if kind != EMULATED else "CPU emulation on the reference backend, not an engine time"
        return f"call wall time ({label}): min {min(calls) * 1e3:.3f} ms over {len(calls)} run(s)"
    return "no timings recorded"


def record(
    model: Path = typer.Argument(..., help="A model directory (model.mil + weights/) or a model.mil file."),
    input: list[str] = typer.Option([], "--input", "-i", help="NAME=FILE.npy, once per program input."),
    out: Path = typer.Option(None, "--out", "-o", help="Bundle directory (default: ./bundle-<time>)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing non-empty --out directory."
    ),
    backend: str = typer.Option(
        "auto",
        help="auto (the engine where reachable, else the reference backend), ane, reference or coreml; "
        "the bundle's meta.json says which ran.",
    ),
    repeat: int = typer.Option(1, min=1, help="Runs to time (the outputs of run 1 are kept)."),
    numerics: str = typer.Option(
        NUMERICS_NAMES[0],
        help=f"Reference backend numerics: {' or '.join(NUMERICS_NAMES)} (ane: fp16 as on the engine).",
    ),
) -> None:
    """Run a program once (or --repeat times) and store program, inputs, outputs, chip, macOS
    build and timings in a bundle directory, whose meta.json says where the outputs came from."""
    from ..backends import BackendUnavailable, KernelInputError, resolve
    from ..bundles import BundleError, save_bundle
    from ..bundles import record as record_run

    target = out or Path(f"bundle-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    _check_bundle_dir(target, overwrite)
    load_program(model)  # parse errors are reported with their location
    from ..mil.model import load

    source = load(model)
    inputs = _parse_inputs(input)
    try:
        name = resolve(backend)
    except ValueError as e:
        raise fail(str(e)) from None
    options = {"numerics": numerics} if name == "reference" else {}
    try:
        bundle = record_run(source, inputs, backend=name, repeat=repeat, **options)
    except BackendUnavailable as e:
        raise fail(
            f"{e}. To make a bundle here anyway, use --backend reference (or auto): its meta.json will say "
            '"source": "reference-backend", never hardware.'
        ) from None
    except (KernelInputError, BundleError, ValueError, NotImplementedError) as e:
        raise fail(str(e)) from None
    # Off the engine the timings are the CPU's: say so in the bundle itself, beside "source".
    bundle.meta.setdefault("timings", {})["measurement"] = measurement(bundle.source)
    try:
        save_bundle(bundle, target, overwrite=overwrite)
    except OSError as e:
        raise fail(f"cannot write the bundle into {target}: {e.strerror or e}") from None
    console = stdout_console()
    console.print(
        f"recorded {len(bundle.outputs)} output(s) from [bold]{bundle.source}[/] into {escape(str(target))}"
    )
    console.print(escape(_timing_line(bundle.meta)))


def replay(
    bundle: Path = typer.Argument(..., help="A bundle directory written by `anekit record`."),
    backend: str = typer.Option("reference", help="Backend to replay on."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run a bundle's program on its inputs and compare with its recorded outputs (fp16 tolerance)."""
    from ..backends import BackendUnavailable
    from ..bundles import BundleError, check_replay, load_bundle

    if not bundle.exists():
        raise fail(f"{bundle} does not exist")
    if not bundle.is_dir():
        raise fail(f"{bundle} is not a directory; give a bundle directory written by `anekit record`")
    try:
        b = load_bundle(bundle)
        problems = check_replay(b, backend)
    except (BundleError, BackendUnavailable, ValueError, NotImplementedError) as e:
        raise fail(str(e)) from None
    chip = (b.meta.get("machine") or {}).get("chip", "?")
    timings = dict(b.meta.get("timings") or {})
    timings["measurement"] = measurement(b.source)
    if as_json:
        print_json(
            {
                "bundle": str(bundle),
                "source": b.source,
                "chip": chip,
                "backend": backend,
                "ok": not problems,
                "problems": problems,
                "recorded_timings": timings,
            }
        )
    else:
        console = output_console(False)
        table = Table(title=escape(f"{bundle} ({b.source}, {chip}) on {backend}"))
        table.add_column("result")
        for p in problems or ["every output matches within fp16 tolerance"]:
            table.add_row(escape(p))
        console.print(table)
        console.print("recorded " + escape(_timing_line(b.meta | {"timings": timings})))
    if problems:
        raise typer.Exit(1)
