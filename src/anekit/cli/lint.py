"""`anekit lint`: report known ANE limits a MIL program runs into."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from .common import fail, load_program, print_json, stdout_console

_STYLE = {"error": "red", "warning": "yellow", "info": "cyan"}
_SEVERITIES = ("error", "warning", "info")


def lint(
    model: Path = typer.Argument(..., help="A model directory (model.mil + weights/) or a model.mil file."),
    chip: str = typer.Option(None, help="Chip family to check for, e.g. m1, m3, m4 (default: all chips)."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the findings as JSON (exit status 1 still means an error was found)."
    ),
) -> None:
    """Check a MIL program against the known ANE limits; exit status 1 if any error is found. Each
    finding cites the fact it rests on: a section of docs/ane-facts.md and its public source."""
    from ..mil.lint import lint as run_lint
    from ..mil.lint import normalize_chip

    if chip is not None:
        try:
            normalize_chip(chip)
        except ValueError as e:
            raise fail(str(e)) from None
    program = load_program(model)
    findings = run_lint(program, chip=chip)
    counts = {s: sum(f.severity == s for f in findings) for s in _SEVERITIES}
    if as_json:
        print_json(
            {
                "model": str(model),
                "chip": chip,
                "findings": [f.to_json() for f in findings],
                "counts": counts,
            }
        )
    else:
        _print(model, chip, findings, counts)
    if counts["error"]:
        raise typer.Exit(1)


def _print(model: Path, chip: str | None, findings, counts: dict[str, int]) -> None:
    console = stdout_console()
    if not findings:
        console.print(f"[green]{escape(str(model))}: no findings[/]")
        return
    table = Table(title=escape(f"lint {model}" + (f" (chip {chip})" if chip else "")))
    for col in ("severity", "rule", "where", "message", "source"):
        table.add_column(col, overflow="fold")
    for f in findings:
        where = f.op or f.var or ""
        table.add_row(
            f"[{_STYLE.get(f.severity, '')}]{f.severity}[/]",
            f.rule,
            escape(where),
            escape(f.message),
            escape(f.citation),
        )
    console.print(table)
    console.print(", ".join(f"{n} {s}(s)" for s, n in counts.items()))
