"""`chain`: throughput against the number of ops per program, for a fixed amount of work.

The same `total_ops` convs (C -> C, spatial S) are run as `total_ops / k` programs of `k` chained ops,
for each `k`. Every dispatch has a fixed cost (~0.1 ms of XPC + IOKit on M4, ane-private-api.md §4.2),
so few ops per program waste the engine: "a single op reaches ~30 % of peak; chain 16-64 ops"
(§4.1, landscape.md §8). Throughput = FLOPs of the whole work / (number of programs x time of one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import programs
from .core import Context, Experiment, Result, measure
from .plots import line_plot
from .published import API, LAND, published_for

NAME = "chain"
TITLE = "Throughput against ops per program (fixed total work)"


@dataclass
class Config:
    channels: int = 512
    spatial: int = 64
    total_ops: int = 64
    ops_per_program: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    warmup: int = 2
    iters: int = 10

    @classmethod
    def quick(cls) -> Config:
        return cls(channels=64, spatial=32, total_ops=8, ops_per_program=(1, 8), warmup=1, iters=3)


def n_points(cfg: Config) -> int:
    return len(cfg.ops_per_program)


def _first_reaching(values: dict[int, float], frac: float) -> int | None:
    best = max(values.values())
    return next((k for k in sorted(values) if values[k] >= frac * best), None)


def run(ctx: Context, cfg: Config) -> Result:
    points = []
    for k in cfg.ops_per_program:
        if cfg.total_ops % k:
            raise ValueError(f"ops_per_program {k} does not divide total_ops {cfg.total_ops}")
        case = programs.conv_chain(cfg.channels, cfg.spatial, k, seed=k)
        case.params["programs_for_total"] = cfg.total_ops // k
        pub = published_for(NAME, ctx.chip, channels=cfg.channels, spatial=cfg.spatial, depth=k)
        points.append(measure(ctx, case, cfg.warmup, cfg.iters, published=pub))
    total_flops = 2.0 * cfg.channels**2 * cfg.spatial * cfg.total_ops
    measured = {p.params["depth"]: p.tflops for p in points}
    summary = {
        "total_flops": total_flops,
        "tflops_by_ops_per_program": {str(k): v for k, v in measured.items()},
        "ops_per_program_for_90pct": _first_reaching(measured, 0.9),
    }
    if all(p.predicted for p in points):
        pred = {p.params["depth"]: p.predicted["tflops"] for p in points}
        summary["predicted_tflops_by_ops_per_program"] = {str(k): v for k, v in pred.items()}
        summary["predicted_ops_per_program_for_90pct"] = _first_reaching(pred, 0.9)
        summary["predicted_single_op_utilisation"] = points[0].predicted["utilisation"]
    return Result(points, summary)


def plot(rec: dict, out_dir: Path) -> list[Path]:
    return [
        line_plot(
            rec,
            "depth",
            "ops per program",
            lambda p: True,
            out_dir / "chain.png",
            f"Fixed work ({rec['config']['total_ops']} convs) split into programs",
        )
    ]


EXPERIMENT = Experiment(
    NAME,
    TITLE,
    Config,
    run,
    n_points,
    plot=plot,
    datasets=("chain",),
    statements=(
        (
            "a single op reaches ~30 % of peak (wastes up to ~70 %); chain 16-64 ops per program",
            f"{API} §4.1; {LAND} §8",
        ),
    ),
)
