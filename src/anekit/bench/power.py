"""`power`: TFLOPS per watt of the engine, read from `powermetrics` while a chain of convs runs.

The blog measured 2.8 W at 19 TFLOPS, 6.6 TFLOPS/W, on M4 (ane-private-api.md §4.5); maderix's dashboard
reads "ANE Power: N mW" from `sudo powermetrics --samplers cpu_power,gpu_power,ane_power`. This needs
macOS, the ane backend (the reference backend does not use the engine) and permission to run
powermetrics without a password prompt (`sudo -n`); otherwise it is skipped with a note saying which.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from . import programs
from .core import Context, Experiment, Result, measure, time_kernel
from .published import API

NAME = "power"
TITLE = "Engine power and TFLOPS/W (powermetrics)"
_ANE_MW = re.compile(r"ANE Power:\s*([0-9.]+)\s*mW")


@dataclass
class Config:
    channels: int = 512
    spatial: int = 64
    depth: int = 128
    seconds: float = 5.0
    sample_ms: int = 250

    @classmethod
    def quick(cls) -> Config:
        return cls(depth=32, seconds=2.0)


def n_points(cfg: Config) -> int:
    return 1


def why_not(ctx: Context) -> str | None:
    """Why power cannot be measured here, or None if it can."""
    if sys.platform != "darwin":
        return "powermetrics exists only on macOS"
    if ctx.backend != "ane":
        return f"power needs the ane backend (this run uses {ctx.backend}, which does not run on the engine)"
    if shutil.which("powermetrics") is None:
        return "powermetrics is not on PATH"
    if subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode != 0:
        return "powermetrics needs root: run `sudo -v` first (or run as root) so `sudo -n` works"
    return None


def parse_ane_mw(text: str) -> list[float]:
    """Every "ANE Power: N mW" sample in powermetrics output."""
    return [float(m) for m in _ANE_MW.findall(text)]


def run(ctx: Context, cfg: Config) -> Result:
    reason = why_not(ctx)
    if reason:
        return Result(status="skipped", note=reason)
    case = programs.conv_chain(cfg.channels, cfg.spatial, cfg.depth)
    point = measure(ctx, case, 3, 20)
    proc = subprocess.Popen(
        ["sudo", "-n", "powermetrics", "--samplers", "ane_power", "-i", str(cfg.sample_ms)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with ctx.compile(case.program) as kernel:
            t_end = time.perf_counter() + cfg.seconds
            runs = 0
            while time.perf_counter() < t_end:
                time_kernel(kernel, case.inputs, 0, 10)
                runs += 10
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    samples = [mw for mw in parse_ane_mw(out) if mw > 0]
    if not samples:
        return Result([point], status="skipped", note="powermetrics reported no ANE power samples")
    watts = sum(samples) / len(samples) / 1000
    return Result(
        [point],
        {
            "ane_watts_mean": watts,
            "tflops": point.tflops,
            "tflops_per_watt": point.tflops / watts,
            "samples": len(samples),
        },
    )


EXPERIMENT = Experiment(
    NAME,
    TITLE,
    Config,
    run,
    n_points,
    statements=(("2.8 W at 19 TFLOPS: 6.6 TFLOPS/W; 0 mW when idle (M4)", f"{API} §4.5 (blog)"),),
)
