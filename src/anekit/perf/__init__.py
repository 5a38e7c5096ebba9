"""The per-chip cost model: a program's time on the Neural Engine from its FLOPs, bytes and working set.

    from anekit.perf import estimate, CHIPS
    est = estimate(program, chip="m4")      # Estimate(time_ms, flops, bytes, working_set, breakdown, ...)
    CHIPS["m4-max"].sram_mb                 # published facts, with `.source("sram_mb")`

`chips` holds what is published about each chip (None where nothing is); `count` turns a MIL program
into FLOPs and bytes per op; `model` predicts; `fit` and `calibrate` tie the model's parameters to
every published measurement (`python -m anekit.perf.calibrate`).
"""

from .chips import CHIPS, Chip, chip_id, get_chip
from .count import OpCost, ProgramCost, count_ops
from .model import Estimate, Params, UncalibratedChip, default_params, estimate, predict

__all__ = [
    "BOUNDS",
    "CHIPS",
    "Chip",
    "Estimate",
    "OpCost",
    "Params",
    "ProgramCost",
    "UncalibratedChip",
    "calibration_report",
    "chip_id",
    "count_ops",
    "default_params",
    "estimate",
    "get_chip",
    "predict",
    "summary",
]


def __getattr__(name: str):
    # the calibration report imports the published datasets; loaded on first use only
    if name in ("BOUNDS", "calibration_report", "summary"):
        from . import calibrate

        return getattr(calibrate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
