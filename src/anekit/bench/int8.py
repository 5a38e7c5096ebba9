"""`int8`: FP16 weights against INT8 weights (constexpr_affine_dequantize) against W8A8 (quantize ->
dequantize between layers), on chained 1x1 convs over a 2-D spatial input `[1, C, S, S]`.

ane_int8_bench (ane-private-api.md §4.4): W8A8 ran 1.88x faster than FP16 on M4 (35.1 vs 18.6 TOPS) —
int8 activations halve the traffic between tiles — while int8 weights alone only save bandwidth
(mil-text.md §3.12). FLOPs = 2*C*C*S*S*depth for all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import programs
from .core import Context, Experiment, Result, measure
from .plots import bars
from .published import API, published_for

NAME = "int8"
TITLE = "FP16 vs INT8 weights vs W8A8"
MODES = ("fp16", "int8-weights", "w8a8")


@dataclass
class Config:
    channels: int = 256
    spatial: int = 16  #: the input is spatial x spatial
    depths: tuple[int, ...] = (4, 16)
    warmup: int = 2
    iters: int = 10

    @classmethod
    def quick(cls) -> Config:
        return cls(channels=32, spatial=4, depths=(2,), warmup=1, iters=3)


def n_points(cfg: Config) -> int:
    return len(cfg.depths) * len(MODES)


def run(ctx: Context, cfg: Config) -> Result:
    points = []
    speedups = {}
    for d in cfg.depths:
        cases = {
            "fp16": programs.conv_chain(cfg.channels, cfg.spatial, d, spatial2d=True),
            "int8-weights": programs.conv_chain(cfg.channels, cfg.spatial, d, spatial2d=True, weights="int8"),
            "w8a8": programs.conv_chain(
                cfg.channels, cfg.spatial, d, spatial2d=True, weights="int8", w8a8=True
            ),
        }
        group = {}
        for mode, case in cases.items():
            pub = (
                published_for(
                    NAME,
                    ctx.chip,
                    channels=cfg.channels,
                    spatial=f"{cfg.spatial}x{cfg.spatial}",
                    depth=d,
                    mode="W8A8" if mode == "w8a8" else "FP16",
                )
                if mode != "int8-weights"
                else None
            )
            group[mode] = measure(ctx, case, cfg.warmup, cfg.iters, published=pub)
        points += group.values()
        base = group["fp16"]
        s = {m: base.timing.median_ms / p.timing.median_ms for m, p in group.items() if m != "fp16"}
        if all(p.predicted for p in group.values()):
            s.update(
                {
                    f"predicted_{m}": base.predicted["time_ms"] / p.predicted["time_ms"]
                    for m, p in group.items()
                    if m != "fp16"
                }
            )
        speedups[f"depth {d}"] = s
    return Result(points, {"speedup_over_fp16": speedups})


def plot(rec: dict, out_dir: Path) -> list[Path]:
    return [bars(rec, out_dir / "int8.png")]


EXPERIMENT = Experiment(
    NAME,
    TITLE,
    Config,
    run,
    n_points,
    plot=plot,
    datasets=("int8",),
    statements=(
        (
            "W8A8 (quantize/dequantize between layers) 1.88x over FP16; int8 weights alone save only "
            "bandwidth",
            f"{API} §4.4; mil-text.md §3.12",
        ),
        ("Core ML (Anemll): 17.99 TFLOPS FP16 vs 33.86 TOPS W8A8 on M5", f"{API} §4.4"),
    ),
)
