"""`anekit scaling`: how much of each data-parallel step the gradient all-reduce takes, per link.

The arithmetic (`anekit.train.distributed.estimate_scaling`, docs/distributed.md): each rank sends
2 (W - 1) / W x the gradient bytes per optimizer step in a ring all-reduce; over a link of L Gb/s that
takes bytes x 8 / L; beside a step of T ms of compute the efficiency is T / (T + exposed all-reduce).
"""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from .common import fail, print_json, stdout_console

#: Links on a desk of Macs, in Gb/s achieved in practice: a Thunderbolt bridge carries ~40 Gb/s of
#: TCP between M-series Macs (issue 11; Thunderbolt 4/5 links are 40/80 Gb/s raw), 10 GbE 10 Gb/s.
DEFAULT_LINKS = {"Thunderbolt": 40.0, "10 GbE": 10.0}


def _step_ms(config, preset: str | None, step_ms: float | None, log: Path | None, batch: int, accum: int):
    """(one process's ms per optimizer step, where the figure comes from)."""
    from ..train.distributed import PUBLISHED_STEP_MS
    from ..train.runlog import read_log

    if step_ms is not None:
        if not (math.isfinite(step_ms) and step_ms > 0):
            raise fail(f"--step-ms must be a number > 0, got {step_ms}")
        return step_ms, "--step-ms"
    if log is not None:
        entries = [e for e in read_log(log) if math.isfinite(e.ms_per_step) and not e.skipped][1:]
        if not entries:
            raise fail(f"--log {log}: holds no measured steps (after the first); train a few steps first")
        ms = sorted(e.ms_per_step for e in entries)[len(entries) // 2]
        return ms, f"median of {len(entries)} steps in {log}"
    name = preset or config.name
    if name in PUBLISHED_STEP_MS:
        ms, source = PUBLISHED_STEP_MS[name]
        return ms * batch * accum, f"published: {ms:g} ms per sequence ({source}) x {batch * accum}"
    raise fail(
        f"no published step time for {name}: pass --step-ms (one process's ms per optimizer step) or --log "
        "runs/<model>/log.jsonl of a single-process run"
    )


def scaling(
    preset: str = typer.Option("stories110m", help="Model preset (its parameter count sets the bytes)."),
    config: Path = typer.Option(None, help="A model config file instead of a preset."),
    world: list[int] = typer.Option([2, 4], help="Processes (Macs) training together; repeat for several."),
    link_gbps: list[float] = typer.Option(
        None, help="Link speed in Gb/s; repeat for several (default: Thunderbolt 40, 10 GbE 10)."
    ),
    allreduce: list[str] = typer.Option(["full", "fp16"], help="Gradient all-reduce precision: full, fp16."),
    step_ms: float = typer.Option(None, help="One process's compute time per optimizer step, in ms."),
    log: Path = typer.Option(None, help="Take the step time from a single-process run's log.jsonl."),
    batch: int = typer.Option(1, help="Sequences per micro-batch (scales a published step time)."),
    accum: int = typer.Option(1, help="Micro-batches per optimizer step (scales a published step time)."),
    overlap: float = typer.Option(
        0.0, help="Share of the all-reduce hidden behind the backward pass, 0 to 1 (0: none, the safe guess)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the estimates as JSON."),
) -> None:
    """Predict the data-parallel all-reduce time per step and the scaling efficiency for a model,
    world sizes and link speeds (arithmetic from the ring all-reduce, not a measurement)."""
    from ..train.distributed import estimate_scaling

    cfg = _model_config(preset, config)
    _check_options(batch, accum, world, allreduce, overlap)
    links = _links(link_gbps)
    ms, source = _step_ms(cfg, None if config else preset, step_ms, log, batch, accum)
    n = cfg.n_params()
    rows = [
        (label, estimate_scaling(n, w, g, ms, p, overlap=overlap))
        for w in world
        for label, g in links.items()
        for p in allreduce
    ]
    if as_json:
        print_json(
            {
                "model": cfg.name,
                "params": n,
                "step_ms": ms,
                "step_ms_source": source,
                "estimates": [{"link": label} | est.to_json() for label, est in rows],
            }
        )
        return
    _print_table(cfg.name, n, ms, source, rows, accum)


def _model_config(preset: str, config: Path | None):
    """The model: `config`'s file, else the preset (a bad one fails the command)."""
    from ..errors import AnekitError
    from ..model.config import ModelConfig
    from ..model.config import preset as get_preset

    try:
        return ModelConfig.from_file(config) if config is not None else get_preset(preset)
    except (AnekitError, ValueError, OSError) as e:
        raise fail(str(e)) from None


def _check_options(batch: int, accum: int, world: list[int], allreduce: list[str], overlap: float) -> None:
    """Fail on the first option out of range: --batch, --accum, --world, --allreduce, --overlap."""
    from ..train.options import ALLREDUCE_PRECISIONS

    for name, value, lo in (("--batch", batch, 1), ("--accum", accum, 1)):
        if value < lo:
            raise fail(f"{name} must be at least {lo}, got {value}")
    if any(w < 1 or w > 1024 for w in world):
        raise fail(f"--world must be from 1 to 1024, got {world}")
    bad = [p for p in allreduce if p not in ALLREDUCE_PRECISIONS]
    if bad:
        raise fail(f"--allreduce must be {' or '.join(ALLREDUCE_PRECISIONS)}, got {bad[0]!r}")
    if not 0.0 <= overlap <= 1.0:
        raise fail(f"--overlap must be from 0 to 1, got {overlap}")


def _links(link_gbps: list[float] | None) -> dict[str, float]:
    """Label -> Gb/s of the links to estimate: --link-gbps, else `DEFAULT_LINKS`."""
    links = {f"{g:g} Gb/s": g for g in link_gbps} if link_gbps else DEFAULT_LINKS
    if any(not (math.isfinite(g) and g > 0) for g in links.values()):
        raise fail(f"--link-gbps must be numbers > 0, got {link_gbps}")
    return links


def _print_table(model: str, n: int, ms: float, source: str, rows: list, accum: int) -> None:
    """The estimates `rows` ((link label, `ScalingEstimate`)) as a table, and what its last column means."""
    table = Table(
        title=escape(
            f"{model}: {n / 1e6:.1f} M parameters, {ms:.0f} ms per step on one process ({source}); "
            "arithmetic, not a measurement"
        ),
        title_justify="left",
    )
    for col in (
        "processes",
        "link",
        "all-reduce",
        "MB sent per rank",
        "all-reduce ms",
        "efficiency",
        "speed-up",
        "--accum for 80 %",
    ):
        table.add_column(col, justify="right")
    for label, est in rows:
        table.add_row(
            str(est.world),
            label,
            est.precision,
            f"{est.wire_bytes / 1e6:.0f}",
            f"{est.comm_ms:.1f}",
            f"{100 * est.efficiency:.0f} %",
            f"{est.tokens_speedup:.2f}x",
            str(accum * est.accum_factor_for(0.8)),
        )
    console = stdout_console()
    console.print(table)
    console.print(
        "--accum for 80 %: micro-batches per optimizer step that make the compute 4x the all-reduce "
        "(the all-reduce runs once per optimizer step; docs/distributed.md)",
        highlight=False,
    )
