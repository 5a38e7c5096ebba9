"""Running experiments: resolve the backend, run each with a progress bar, record, print, plot, write."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from pathlib import Path

from rich.console import Console

from . import EXPERIMENTS
from .core import Context, OutputMismatch, Result
from .record import make_record, write


def config_for(name: str, quick: bool = False, overrides: dict[str, str] | None = None):
    """The experiment's default (or `--quick`) config, with NAME=VALUE overrides applied."""
    exp = EXPERIMENTS[name]
    cfg = exp.config.quick() if quick else exp.config()
    changes = {}
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key, text in (overrides or {}).items():
        if key not in fields:
            raise ValueError(f"{name} has no config field {key!r}; fields: {', '.join(fields)}")
        changes[key] = _coerce(getattr(cfg, key), text, f"{name}.{key}")
    return dataclasses.replace(cfg, **changes)


def _coerce(default, text: str, where: str):
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, tuple):
            kind = type(default[0]) if default else float
            values = tuple(kind(x) for x in text.split(",") if x.strip())
            if not values:
                raise ValueError(f"{where}: give at least one value (e.g. {where.split('.')[-1]}=1,2,4)")
            for v in values:
                _check_number(v, where, minimum=1)
            return values
        value = type(default)(text)
    except ValueError as e:
        if str(e).startswith(where):
            raise
        raise ValueError(f"{where}: cannot read {text!r} as {type(default).__name__}") from None
    # Every count, size and duration of a config is positive; `warmup` (untimed runs) may be 0.
    _check_number(value, where, minimum=0 if where.endswith(".warmup") else 1)
    return value


def _check_number(value, where: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not a finite number")
    if isinstance(value, int) and value < minimum:
        raise ValueError(f"{where}: must be at least {minimum}, got {value}")
    if isinstance(value, float) and value <= 0:
        raise ValueError(f"{where}: must be greater than 0, got {value}")


def split_overrides(names: list[str], sets: list[str]) -> dict[str, dict[str, str]]:
    """`--set` values ("NAME=VALUE", or "experiment.NAME=VALUE" with several experiments) per experiment."""
    out: dict[str, dict[str, str]] = {n: {} for n in names}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes NAME=VALUE, got {item!r}")
        exp, dot, field = key.rpartition(".")
        targets = [exp] if dot else names
        for t in targets:
            if t not in out:
                raise ValueError(f"--set {item!r}: experiment {t!r} is not being run")
            out[t][field] = value
    return out


def default_out(names: list[str]) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    tag = names[0] if len(names) == 1 else "all"
    return Path("bench-results") / f"{tag}-{stamp}.json"


def run(
    names: list[str],
    backend: str = "auto",
    quick: bool = False,
    chip: str = "m4",
    out: Path | None = None,
    plot_dir: Path | None = None,
    console: Console | None = None,
    overrides: dict[str, dict[str, str]] | None = None,
    show_progress: bool = True,
) -> tuple[list[dict], Path]:
    """Run `names` in order; return their records and the JSON file written."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..backends import resolve
    from ..perf import chip_id
    from .plots import plot_record
    from .report import banner, experiment_table, published_table

    # soft_wrap: a line (a path, a command to run) is never broken when the output is a file.
    console = console or Console(soft_wrap=True)
    chip = chip_id(chip)
    name = resolve(backend)
    configs = {n: config_for(n, quick, (overrides or {}).get(n)) for n in names}
    banner(console, name, chip)
    records = []
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not show_progress,
    )
    with progress:
        for n in names:
            exp = EXPERIMENTS[n]
            cfg = configs[n]
            task = progress.add_task(f"{n}", total=max(1, exp.n_points(cfg)))
            ctx = Context(
                name,
                chip,
                quick,
                lambda label, task=task, n=n: progress.update(task, advance=1, description=f"{n}: {label}"),
            )
            try:
                result = exp.run(ctx, cfg)
                error = None
            except OutputMismatch as e:
                result, error = Result(status="failed"), f"output check failed, nothing timed: {e}"
            progress.update(task, completed=max(1, exp.n_points(cfg)))
            records.append(make_record(n, ctx, cfg, result, error))
    for rec in records:
        experiment_table(console, rec, EXPERIMENTS[rec["experiment"]].title)
        published_table(console, rec)
    path = write(out or default_out(names), records)
    console.print(f"record written to {path}")
    if plot_dir is not None:
        pngs = [p for rec in records for p in plot_record(rec, plot_dir)]
        console.print(f"{len(pngs)} chart(s) written to {plot_dir}")
    return records, path
