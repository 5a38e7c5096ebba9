"""Helpers shared by commands: consoles, errors a user can act on, JSON output, checking and writing
the paths a command was given before any work starts."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape

#: Width a console lays tables out at when it writes to a file or pipe: wide enough that no table row
#: is folded, so redirected output has one line per row and never a newline inside a path or a message.
FILE_WIDTH = 10_000


class _Console(Console):
    """A rich console that never hard-wraps when it is not writing to a terminal.

    rich lays out at 80 columns when its stream is not a terminal: tables fold cells and long lines
    break, which put newlines inside generated text and paths. With `soft_wrap` a printed line is
    written whole, and off a terminal the layout width is FILE_WIDTH, so tables keep one line per row.
    In a terminal, the terminal's width applies as usual.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(soft_wrap=True, **kwargs)
        self._asked_width = kwargs.get("width")

    @property
    def size(self) -> ConsoleDimensions:
        dims = super().size
        # rich also takes its width from a COLUMNS variable in the environment; off a terminal that
        # would bring the 80-column wrapping back, so only an explicit width= is honoured there.
        if self._asked_width is None and not self.is_terminal:
            return ConsoleDimensions(FILE_WIDTH, dims.height)
        return dims

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


err = _Console(stderr=True)  # paths and file:line:col stay on one line


def stdout_console() -> Console:
    """The console every command prints its results on (see `_Console`: never hard-wrapped)."""
    return _Console()


def output_console(as_json: bool) -> Console:
    """Where a command's human-readable report goes: stdout, or stderr when stdout carries JSON."""
    return err if as_json else stdout_console()


def fail(message: str, code: int = 1) -> typer.Exit:
    # escape: messages quote MIL text such as `[name = string("x")]`, which rich would read as markup
    err.print(f"[red]error:[/] {escape(message)}")
    return typer.Exit(code)


def jsonable(value: Any) -> Any:
    """`value` with NumPy scalars and arrays, paths and tuples made plain JSON; NaN and inf become
    null (JSON has no spelling for them, and `json.dumps` would write invalid `NaN`)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalars and arrays
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_json(data: Any) -> None:
    """The one thing a `--json` command writes on stdout."""
    typer.echo(json.dumps(jsonable(data), indent=1, allow_nan=False))


def load_program(path: Path):
    """Parse a model directory or a `model.mil` file; parse errors are printed with their location."""
    from ..errors import AnekitError
    from ..mil import load_program as _load

    if not path.exists():
        raise fail(f"{path} does not exist")
    if path.is_dir() and not (path / "model.mil").is_file():
        raise fail(f"{path} is a directory without a model.mil; give a model directory or a .mil file")
    try:
        return _load(path)
    except AnekitError as e:
        raise fail(str(e)) from None
    except (OSError, ValueError, UnicodeError) as e:
        raise fail(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Paths a command will write: checked before any work, written atomically
# ---------------------------------------------------------------------------------------------


def check_creatable_dir(directory: Path, option: str, target: Path | None = None) -> None:
    """`directory` exists as a directory we may write into, or could be created (its nearest
    existing ancestor is a writable directory). `target` is what the option named, for the message."""
    named = f"{option} {target if target is not None else directory}"
    probe = directory
    while not probe.exists():
        if probe.is_symlink():
            raise fail(f"{named}: {probe} is a dangling symbolic link; remove it or choose another path")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise fail(f"{named}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise fail(f"{named}: cannot write into {probe} (permission denied)")


def check_output_file(path: Path, option: str) -> None:
    """Refuse before any work an output file path that cannot be written: an existing directory, or a
    parent that is a file or cannot be created."""
    if path.is_dir():
        raise fail(f"{option} {path} is a directory; give the path of a file to write")
    if path.exists() and not path.is_file():
        raise fail(f"{option} {path} exists and is not a regular file")
    check_creatable_dir(path.parent, option, path)


def check_output_dir(path: Path, option: str) -> None:
    """Refuse before any work an output directory that exists as something else or cannot be created."""
    if path.exists() and not path.is_dir():
        raise fail(f"{option} {path} exists and is not a directory")
    check_creatable_dir(path, option)


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write exactly `path` through `write(file)`: into a temporary file beside it, then renamed over
    it, so a failure leaves no partial file and an existing one untouched. A symlink at `path` is
    replaced, never written through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
