"""What happens when a command fails: the one place that turns exceptions into exit statuses.

- An `AnekitError` (anekit refused the input and said why) prints `error: <message>`, exit status 1.
- Any other exception is a bug in anekit: a short message says so, where to report it, and which file
  holds the traceback (written to the temp directory); exit status 2. No traceback reaches the terminal.
- Ctrl-C exits with status 130 (128 + SIGINT, the shell convention) without a message; typer does this
  once the interrupt leaves the command (`typer.core._main`). `train` prints its own resume hint first.
- Typer's own usage errors (unknown option, bad value) keep typer's message and status 2.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import traceback
from importlib import metadata

import typer
from rich.markup import escape
from typer.core import TyperGroup

from ..errors import AnekitError
from .common import err

#: What anekit passes through untouched: typer's exits, aborts and usage errors, interrupts, and a
#: closed pipe (`anekit lint ... | head`), which typer turns into a quiet exit.
_PASS_THROUGH = (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt, BrokenPipeError)


def _report_to() -> str:
    """Where to report a bug: the package's issue tracker when its metadata names one."""
    try:
        urls = metadata.metadata("anekit").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    for entry in urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("issues", "bug tracker", "tracker", "source", "homepage"):
            return url.strip()
    return "the issue tracker of the repository you installed anekit from"


def report_bug(exc: BaseException, command: str) -> int:
    """Keep the traceback in a file, tell the user where it is and where to report it; exit status."""
    from .. import __version__

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        with tempfile.NamedTemporaryFile(
            "w", prefix="anekit-crash-", suffix=".txt", delete=False, encoding="utf-8"
        ) as f:
            f.write(f"anekit {__version__}, command: {command}\n\n{text}")
            where = f"the traceback is in {f.name}"
    except OSError as write_error:
        where = f"the traceback could not be saved ({write_error})"
    summary = f"{type(exc).__name__}: {exc}".strip()
    if len(summary) > 300:
        summary = summary[:300] + "..."
    err.print(
        f"[red]internal error:[/] anekit failed unexpectedly ({escape(summary)}). This is a bug in anekit, "
        f"not in your input; {escape(where)}. Please report it to {escape(_report_to())}, with that file "
        "and the command you ran."
    )
    return 2


class AnekitGroup(TyperGroup):
    """The `anekit` command group, with the failure policy above around every subcommand."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except AnekitError as e:
            err.print(f"[red]error:[/] {escape(str(e))}")
            raise typer.Exit(1) from None
        except Exception as e:
            raise typer.Exit(report_bug(e, shlex.join(["anekit", *sys.argv[1:]]))) from None


def version_callback(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"anekit {__version__}")
        raise typer.Exit()
