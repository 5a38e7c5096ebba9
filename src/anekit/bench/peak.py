"""`peak`: how close chained 1x1 convs get to the engine's peak, against width, spatial size and depth.

The published "peak" and "chaining depth" benchmark (inmem_peak, ane-private-api.md §4.1): one program
of `depth` chained C -> C 1x1 convs on `[1, C, 1, S]`, FLOPs = 2*C*C*S*depth. Instead of the full grid
(128 programs, some of 300 GFLOP), the default is three sweeps through one base config: depth at
(base C, base S), channels at (base S, base depth), spatial at (base C, base depth). `grid=True` runs
every combination (meant for the engine, where each point takes milliseconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import programs
from .core import Context, Experiment, Result, measure
from .plots import line_plot
from .published import API, published_for

NAME = "peak"
TITLE = "Chained 1x1 convs: throughput against width, spatial size and depth"


@dataclass
class Config:
    base_channels: int = 512
    base_spatial: int = 64
    base_depth: int = 32
    channels: tuple[int, ...] = (256, 384, 512, 768)
    spatial: tuple[int, ...] = (64, 256, 1024, 2048)
    depths: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    grid: bool = False
    warmup: int = 2
    iters: int = 10

    @classmethod
    def quick(cls) -> Config:
        # Small, but one point (32x 512ch sp64, published 6.73 TFLOPS on M4, §4.1) is large enough for
        # the engine to show > 1 TFLOPS: the requires_ane smoke test checks that.
        return cls(
            base_channels=512,
            base_spatial=64,
            base_depth=32,
            channels=(256,),
            spatial=(64,),
            depths=(1, 32),
            warmup=1,
            iters=3,
        )


def configs(cfg: Config) -> list[tuple[int, int, int]]:
    """(channels, spatial, depth) of every point, deduplicated, in sweep order."""
    if cfg.grid:
        pts = [(c, s, d) for c in cfg.channels for s in cfg.spatial for d in cfg.depths]
    else:
        pts = [(cfg.base_channels, cfg.base_spatial, d) for d in cfg.depths]
        pts += [(c, cfg.base_spatial, cfg.base_depth) for c in cfg.channels]
        pts += [(cfg.base_channels, s, cfg.base_depth) for s in cfg.spatial]
    return list(dict.fromkeys(pts))


def n_points(cfg: Config) -> int:
    return len(configs(cfg))


def run(ctx: Context, cfg: Config) -> Result:
    points = []
    for c, s, d in configs(cfg):
        case = programs.conv_chain(c, s, d, seed=d)
        pub = published_for(NAME, ctx.chip, channels=c, spatial=s, depth=d)
        points.append(measure(ctx, case, cfg.warmup, cfg.iters, published=pub))
    best = max(points, key=lambda p: p.tflops)
    pred = [p for p in points if p.predicted]
    summary = {"best_tflops": best.tflops, "best_config": best.label}
    if pred:
        pbest = max(pred, key=lambda p: p.predicted["tflops"])
        summary["predicted_best_tflops"] = pbest.predicted["tflops"]
        summary["predicted_best_config"] = pbest.label
    return Result(points, summary)


def plot(rec: dict, out_dir: Path) -> list[Path]:
    cfg = rec["config"]
    c, s = cfg["base_channels"], cfg["base_spatial"]
    return [
        line_plot(
            rec,
            "depth",
            "convs per program (depth)",
            lambda p: p["params"]["channels"] == c and p["params"]["spatial"] == s,
            out_dir / "peak_depth.png",
            f"Chained 1x1 convs, {c} ch, spatial {s}",
        )
    ]


EXPERIMENT = Experiment(
    NAME,
    TITLE,
    Config,
    run,
    n_points,
    plot=plot,
    datasets=("chain", "peak"),
    statements=(
        ("M4 true FP16 peak ~19 TFLOPS; chain 16-64 ops in one program to approach it", f"{API} §4.1"),
        ("M3 Pro: 9.98 TFLOPS at spatial 64, 16.77 at spatial 2048 (128x 512ch)", f"{API} §4.1"),
    ),
)
