"""The `anekit` command. Each subcommand lives in its own module and imports heavy parts lazily."""

from __future__ import annotations

import typer

from . import bench, doctor, estimate, lint, llm, record, run, scaling, serve, tokenizer, train
from .toplevel import AnekitGroup, version_callback

app = typer.Typer(
    name="anekit",
    help="Program, measure and train on Apple's Neural Engine (ANE) from Python.",
    cls=AnekitGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print anekit's version and exit."
    ),
) -> None:
    """Program, measure and train on Apple's Neural Engine (ANE) from Python."""


app.command("train")(train.train)
app.command("eval")(train.evaluate)
app.command("generate")(llm.generate)
app.command("chat")(llm.chat)
app.command("train-tokenizer")(tokenizer.train_tokenizer)
app.command("doctor")(doctor.doctor)
app.command("run")(run.run)
app.command("lint")(lint.lint)
app.command("record")(record.record)
app.command("replay")(record.replay)
app.command("bench")(bench.bench)
app.command("estimate")(estimate.estimate)
app.command("serve")(serve.serve)
app.command("scaling")(scaling.scaling)


def main() -> None:
    app()
