"""`sram`: one 1x1 conv whose weight grows from 1 to 128 MB: throughput, throughput per MB, and the cliff.

sram_probe / sram_bench (ane-private-api.md §4.3): one C -> C conv at spatial 64, weight C*C*2 bytes;
GFLOPS/MB = TFLOPS * 1000 / weight MB, which the probe flags below 100. The blog puts the M4's SRAM at
~32 MB with a gradual (cache-like) slow-down beyond it. The cliff is located as the first size whose
throughput falls below `cliff_fraction` of the best throughput at any smaller size. On the reference
backend the curve shows this CPU's caches, not the engine's SRAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import programs
from .core import Context, Experiment, Result, measure
from .plots import line_plot
from .published import API, published_for

NAME = "sram"
TITLE = "Weight working set: throughput per MB and the SRAM cliff"


@dataclass
class Config:
    sizes_mb: tuple[float, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128)
    spatial: int = 64
    check_rows: int = 64  #: output channels recomputed in float64 (a 128 MB weight is 8192 channels)
    cliff_fraction: float = 0.7
    warmup: int = 1
    iters: int = 5

    @classmethod
    def quick(cls) -> Config:
        return cls(sizes_mb=(0.125, 0.5, 1.0), spatial=16, check_rows=32, warmup=1, iters=3)


def n_points(cfg: Config) -> int:
    return len(cfg.sizes_mb)


def locate_cliff(mbs: list[float], tflops: list[float], fraction: float) -> float | None:
    """The first weight size whose throughput is below `fraction` of the best at smaller sizes."""
    best = 0.0
    for mb_, t in zip(mbs, tflops):
        if best and t < fraction * best:
            return mb_
        best = max(best, t)
    return None


def run(ctx: Context, cfg: Config) -> Result:
    points = []
    for size in cfg.sizes_mb:
        c = programs.channels_for_mb(size, multiple=16 if size < 1 else 64)
        case = programs.conv_chain(c, cfg.spatial, 1, check_rows=cfg.check_rows)
        w = programs.weight_mb(c)
        case.params["weight_mb"] = w
        pub = published_for(NAME, ctx.chip, channels=c, spatial=cfg.spatial, depth=1)
        p = measure(ctx, case, cfg.warmup, cfg.iters, published=pub)
        p.params["gflops_per_mb"] = p.tflops * 1000 / w
        points.append(p)
    mbs = [p.params["weight_mb"] for p in points]
    summary = {
        "cliff_mb": locate_cliff(mbs, [p.tflops for p in points], cfg.cliff_fraction),
        "cliff_rule": f"first size below {cfg.cliff_fraction:g} x the best throughput at smaller sizes",
    }
    if all(p.predicted for p in points):
        summary["predicted_cliff_mb"] = locate_cliff(
            mbs, [p.predicted["tflops"] for p in points], cfg.cliff_fraction
        )
    note = (
        ""
        if ctx.engine
        else "CPU emulation: the measured curve reflects this CPU's caches, not the ANE's SRAM"
    )
    return Result(points, summary, note=note)


def plot(rec: dict, out_dir: Path) -> list[Path]:
    return [
        line_plot(
            rec,
            "weight_mb",
            "weight (MB)",
            lambda p: True,
            out_dir / "sram.png",
            "One 1x1 conv against its weight size",
        )
    ]


EXPERIMENT = Experiment(
    NAME,
    TITLE,
    Config,
    run,
    n_points,
    plot=plot,
    datasets=("sram",),
    statements=(
        ("24 MB working set fits, 96 MB spills (-30 %): ~32 MB SRAM, gradual (M4)", f"{API} §4.3 (blog)"),
    ),
)
