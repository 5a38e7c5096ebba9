"""`coreml`: the same program through Core ML and through the direct path, to measure Core ML's overhead.

The blog claims Core ML adds 2-4x on small ops and nothing much on large ones (ane-private-api.md §4.6);
no committed benchmark measured it. Core ML prediction exists only on macOS, so elsewhere this
experiment is skipped with a note. "Direct" is the ane backend where it is available, else the
reference backend (then the comparison says nothing about the engine, and the record says so).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import programs
from .core import Context, Experiment, Result, measure
from .published import API

NAME = "coreml"
TITLE = "Core ML vs direct, same program"


@dataclass
class Config:
    channels: tuple[int, ...] = (256, 1024)
    spatial: int = 64
    depth: int = 16
    warmup: int = 3
    iters: int = 20

    @classmethod
    def quick(cls) -> Config:
        return cls(channels=(64,), spatial=32, depth=2, warmup=1, iters=3)


def n_points(cfg: Config) -> int:
    return 2 * len(cfg.channels)


def run(ctx: Context, cfg: Config) -> Result:
    from ..backends import availability

    ok, why = availability("coreml")
    if not ok:
        return Result(status="skipped", note=f"Core ML prediction is unavailable here: {why}")
    ane_ok, _ = availability("ane")
    direct = "ane" if ane_ok else ctx.backend
    points, ratios = [], {}
    for c in cfg.channels:
        pair = {}
        for backend in ("coreml", direct):
            case = programs.conv_chain(c, cfg.spatial, cfg.depth)
            case.label += f" [{backend}]"
            case.params["path"] = backend
            sub = Context(backend, ctx.chip, ctx.quick, ctx.progress)
            pair[backend] = measure(sub, case, cfg.warmup, cfg.iters)
        points += pair.values()
        ratios[f"{c}ch"] = pair["coreml"].timing.median_ms / pair[direct].timing.median_ms
    note = (
        ""
        if direct == "ane"
        else "the direct path is the reference backend here: the ratio is not an engine figure"
    )
    return Result(points, {"coreml_over_direct": ratios, "direct_backend": direct}, note=note)


EXPERIMENT = Experiment(
    NAME,
    TITLE,
    Config,
    run,
    n_points,
    statements=(
        ("Core ML adds 2-4x overhead on small ops; negligible on large matmuls", f"{API} §4.6 (blog, HN)"),
    ),
)
