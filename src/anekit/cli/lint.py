"""`anekit lint`: report known ANE limits a MIL program runs into."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .common import fail, load_program, stdout_console

_STYLE = {"error": "red", "warning": "yellow", "info": "cyan"}


def lint(
    model: Path = typer.Argument(..., help="A model directory (model.mil + weights/) or a model.mil file."),
    chip: str = typer.Option(None, help="Chip family to check for, e.g. m1, m3, m4 (default: all chips)."),
) -> None:
    """Check a MIL program against the known ANE limits; exit status 1 if any error is found."""
    from ..mil import lint as run_lint

    program = load_program(model)
    try:
        findings = run_lint(program, chip=chip)
    except ValueError as e:
        raise fail(str(e)) from None
    console = stdout_console()
    if not findings:
        console.print(f"[green]{model}: no findings[/]")
        return
    table = Table(title=f"lint {model}" + (f" (chip {chip})" if chip else ""))
    for col in ("severity", "rule", "where", "message", "source"):
        table.add_column(col, overflow="fold")
    for f in findings:
        where = f.op or f.var or ""
        table.add_row(f"[{_STYLE.get(f.severity, '')}]{f.severity}[/]", f.rule, where, f.message, f.source)
    console.print(table)
    counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
    console.print(", ".join(f"{n} {s}(s)" for s, n in counts.items()))
    if counts["error"]:
        raise typer.Exit(1)
