"""`dispatch`: the latency distribution of a tiny kernel, i.e. the fixed cost of one evaluation.

One 1x1 conv on `[1, 64, 1, 64]` (0.5 MFLOP: compute is negligible) evaluated `iters` times, each timed.
Published floors: ~0.095 ms of XPC + IOKit on M4 (ane-private-api.md §4.2), 0.06-0.08 ms on M5 (§4.7),
~0.2 ms per production kernel (§1.10); `beginRealTimeTask` cut p99 jitter 90 % (PR #22, §1.10).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import programs
from .core import Context, Experiment, Result, measure
from .plots import histogram
from .published import API, published_for

NAME = "dispatch"
TITLE = "Dispatch latency of a tiny kernel (p50 / p90 / p99)"


@dataclass
class Config:
    channels: int = 64
    spatial: int = 64
    warmup: int = 20
    iters: int = 500

    @classmethod
    def quick(cls) -> Config:
        return cls(channels=32, spatial=32, warmup=5, iters=50)


def n_points(cfg: Config) -> int:
    return 1


def run(ctx: Context, cfg: Config) -> Result:
    case = programs.conv_chain(cfg.channels, cfg.spatial, 1)
    pub = published_for(NAME, ctx.chip, channels=cfg.channels, spatial=cfg.spatial, depth=1)
    p = measure(ctx, case, cfg.warmup, cfg.iters, published=pub, keep_samples=True)
    t = p.timing
    summary = {
        "p50_ms": t.pct(50),
        "p90_ms": t.pct(90),
        "p99_ms": t.pct(99),
        "min_ms": min(t.samples_ms),
        "jitter_p99_over_p50": t.pct(99) / t.pct(50),
    }
    if p.predicted:
        summary["predicted_ms"] = p.predicted["time_ms"]
    return Result([p], summary)


def plot(rec: dict, out_dir: Path) -> list[Path]:
    return [histogram(rec, out_dir / "dispatch_hist.png")]


EXPERIMENT = Experiment(
    NAME,
    TITLE,
    Config,
    run,
    n_points,
    plot=plot,
    datasets=("single-conv",),
    statements=(
        ("~0.095 ms of XPC + IOKit per evaluation (M4)", f"{API} §4.2 (blog)"),
        ("eval avg 0.06-0.08 ms for a 256x256 conv S=64, no QoS effect (M5)", f"{API} §4.7"),
        ("~0.2 ms per production-size kernel, any eval path (fork)", f"{API} §1.10"),
    ),
)
