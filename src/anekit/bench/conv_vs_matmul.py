"""`conv-vs-matmul`: the same FLOPs as a 1x1 conv, a matmul with a constant weight, and a matmul whose
weight is packed into the input (the dynamic-weight idiom of the training pipeline, ane-private-api.md
§5.4). The blog measured the conv ~3x faster than the matmul (§4.2); the dynamic form is what lets
weights change without a recompile (§1.10).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import programs
from .core import Context, Experiment, Result, measure
from .plots import bars
from .published import API

NAME = "conv-vs-matmul"
TITLE = "1x1 conv vs matmul (constant weight) vs matmul (weight packed in the input)"
KINDS = ("conv", "matmul-const", "matmul-dynamic")


@dataclass
class Config:
    channels: tuple[int, ...] = (256, 512, 1024)
    spatial: tuple[int, ...] = (64, 256)
    warmup: int = 2
    iters: int = 10

    @classmethod
    def quick(cls) -> Config:
        return cls(channels=(32,), spatial=(16,), warmup=1, iters=3)


def n_points(cfg: Config) -> int:
    return len(cfg.channels) * len(cfg.spatial) * len(KINDS)


def run(ctx: Context, cfg: Config) -> Result:
    points = []
    ratios = {}
    for c in cfg.channels:
        for s in cfg.spatial:
            conv = programs.conv_chain(c, s, 1)
            conv.params["kind"] = "conv"
            group = [
                measure(ctx, case, cfg.warmup, cfg.iters)
                for case in (conv, programs.matmul_const(c, s), programs.matmul_dynamic(c, s))
            ]
            points += group
            t = {p.params["kind"]: p for p in group}
            key = f"{c}ch sp{s}"
            ratios[key] = {
                "matmul_const_over_conv": t["matmul-const"].timing.median_ms / t["conv"].timing.median_ms,
                "matmul_dynamic_over_conv": t["matmul-dynamic"].timing.median_ms / t["conv"].timing.median_ms,
            }
            if all(p.predicted for p in group):
                ratios[key]["predicted_matmul_const_over_conv"] = (
                    t["matmul-const"].predicted["time_ms"] / t["conv"].predicted["time_ms"]
                )
                ratios[key]["predicted_matmul_dynamic_over_conv"] = (
                    t["matmul-dynamic"].predicted["time_ms"] / t["conv"].predicted["time_ms"]
                )
    return Result(points, {"time_ratios": ratios})


def plot(rec: dict, out_dir: Path) -> list[Path]:
    return [bars(rec, out_dir / "conv_vs_matmul.png")]


EXPERIMENT = Experiment(
    NAME,
    TITLE,
    Config,
    run,
    n_points,
    plot=plot,
    statements=(
        ("a 1x1 conv is ~3x faster than the same matmul", f"{API} §4.2 (blog)"),
        ("matmul 2048x2048: 5.7 TFLOPS; 4096x4096: 4.0 TFLOPS (M4)", f"{API} §4.2 (blog)"),
        ("256x256 matmul: 0.101 ms, ~0.095 ms of it dispatch (M4)", f"{API} §4.2 (blog)"),
    ),
)
