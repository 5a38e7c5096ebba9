"""`anekit run`: execute a MIL program on NumPy inputs and show or save its outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from ..backends.base import NUMERICS_NAMES
from .common import check_output_file, fail, load_program, stdout_console, write_atomically


def _parse_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    """NAME=FILE.npy options, each file read without trusting its header (anekit.arrays_io)."""
    from ..arrays_io import ArrayFileError, read_npy

    inputs = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise fail(f"--input takes NAME=FILE.npy, got {spec!r}")
        if name in inputs:
            raise fail(f"--input {name} is given twice")
        path = Path(file)
        if not path.exists():
            raise fail(f"input file {path} does not exist")
        try:
            inputs[name] = read_npy(path)
        except ArrayFileError as e:
            raise fail(str(e)) from None
    return inputs


def save_outputs(path: Path, outputs: dict[str, np.ndarray]) -> None:
    """Write the outputs as an .npz at exactly `path` (numpy.savez given a file name appends `.npz`
    when the name lacks it; given an open file it writes there), atomically."""
    try:
        write_atomically(path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in outputs.items()}))
    except OSError as e:
        raise fail(f"cannot write --out {path}: {e.strerror or e}") from None


def run(
    model: Path = typer.Argument(..., help="A model directory (model.mil + weights/) or a model.mil file."),
    input: list[str] = typer.Option([], "--input", "-i", help="NAME=FILE.npy, once per program input."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Write all outputs to this file, as .npz (the name is used as given)."
    ),
    backend: str = typer.Option("auto", help="auto, reference, ane or coreml."),
    numerics: str = typer.Option(
        NUMERICS_NAMES[0],
        help=f"Reference backend numerics: {' or '.join(NUMERICS_NAMES)} (ane: fp16 as on the engine).",
    ),
    function: str = typer.Option(
        None, help="Function of a multi-function program to run (default: main, or the program's default)."
    ),
) -> None:
    """Run a MIL program once and print a summary of each output (shape, dtype, range)."""
    from .. import compile as anekit_compile
    from ..backends import BackendUnavailable, KernelInputError, resolve

    if out is not None:
        check_output_file(out, "--out")
    program = load_program(model)
    inputs = _parse_inputs(input)
    try:
        name = resolve(backend)
        options = {"numerics": numerics} if name == "reference" else {}
        if function is not None:
            options["function"] = function
        kernel = anekit_compile(program, backend=name, **options)
    except (BackendUnavailable, ValueError, NotImplementedError) as e:
        raise fail(str(e)) from None
    with kernel:
        try:
            outputs = kernel(**inputs)
        except KernelInputError as e:
            raise fail(
                f"{e}. The program takes: {', '.join(str(s) for s in kernel.inputs.values())}"
            ) from None
    console = stdout_console()
    table = Table(title=escape(f"{model} on {kernel.backend}"))
    for col in ("output", "shape", "dtype", "min", "max", "mean", "non-finite"):
        table.add_column(col)
    for oname, arr in outputs.items():
        a = np.asarray(arr)
        finite = a[np.isfinite(a)] if a.dtype.kind in "fc" else a
        stats = (
            [f"{finite.min():.6g}", f"{finite.max():.6g}", f"{finite.astype(np.float64).mean():.6g}"]
            if finite.size and a.dtype.kind in "biuf"
            else ["-", "-", "-"]
        )
        bad = int((~np.isfinite(a)).sum()) if a.dtype.kind in "fc" else 0
        table.add_row(escape(oname), str(tuple(a.shape)), str(a.dtype), *stats, str(bad))
    console.print(table)
    if out is not None:
        save_outputs(out, outputs)
        console.print(f"outputs written to {escape(str(out))}")
