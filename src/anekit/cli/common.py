"""Helpers shared by commands: loading a model argument with errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

err = Console(stderr=True, soft_wrap=True)  # paths and file:line:col stay on one line


def stdout_console() -> Console:
    """The console every command prints its results on.

    soft_wrap: rich hard-wraps at 80 columns when stdout is not a terminal, which put newlines inside
    generated text and long paths; with soft_wrap a line is written whole and the terminal wraps it.
    """
    return Console(soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/] {message}")
    return typer.Exit(code)


def load_program(path: Path):
    """Parse a model directory or a `model.mil` file; parse errors are printed with their location."""
    from ..mil import MilParseError
    from ..mil import load_program as _load

    if not path.exists():
        raise fail(f"{path} does not exist")
    try:
        return _load(path)
    except MilParseError as e:
        raise fail(str(e)) from None
    except (OSError, ValueError) as e:
        raise fail(f"{path}: {e}") from None
