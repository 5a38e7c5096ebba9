"""The `anekit` command. Each subcommand lives in its own module and imports heavy parts lazily."""

from __future__ import annotations

import typer

from . import doctor, lint, run

app = typer.Typer(
    name="anekit",
    help="Program, measure and train on Apple's Neural Engine (ANE) from Python.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("doctor")(doctor.doctor)
app.command("run")(run.run)
app.command("lint")(lint.lint)


def main() -> None:
    app()
