"""A run's log (``log.jsonl``, one strict-JSON line per step) and its loss plot.

A line is written and flushed after each step; a line half-written when a machine died is skipped on
reading. Logs are replaced atomically (write beside, rename), so a crash leaves the old or the new.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np


@dataclass
class StepLog:
    """One line of log.jsonl (strict JSON: non-finite numbers are written as null)."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    loss_scale: float
    skipped: bool
    tokens_per_s: float
    ms_per_step: float
    engine_ms: float
    cpu_ms: float
    val_loss: float | None = None  #: loss on the held-out slice, on the steps it is measured
    skip_reason: str = ""  #: "non-finite gradients" or "non-finite update" when skipped
    run: str = ""  #: the run's id: lines of a replaced run are never mixed in on resume
    comm_ms: float | None = (
        None  #: data-parallel runs: waiting for the gradient all-reduce after the backward
    )
    world: int = 1  #: processes training together (each `tokens_per_s` counts them all)

    def to_json(self) -> str:
        d = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }
        return json.dumps(d, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> StepLog:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in (
            "loss",
            "lr",
            "grad_norm",
            "loss_scale",
            "tokens_per_s",
            "ms_per_step",
            "engine_ms",
            "cpu_ms",
        ):
            if kw.get(k) is None:
                kw[k] = float("nan")
        return cls(**kw)


def read_log(path: Path) -> list[StepLog]:
    """The entries of a log.jsonl; a damaged line (e.g. half-written when a machine died) is skipped."""
    if not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            out.append(StepLog.from_dict(json.loads(line)))
        except (ValueError, TypeError, AttributeError):
            continue
    return out


def write_log(path: Path, entries: Iterable[StepLog]) -> None:
    """Replace `path` atomically with `entries` (a crash leaves the old or the new log, whole)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(e.to_json() + "\n" for e in entries), encoding="utf-8")
    os.replace(tmp, path)


def tail_mean(logs: list[StepLog], n: int = 10) -> float | None:
    """The final loss as the mean of the last `n` steps: single batches are noisy."""
    tail = [e.loss for e in logs[-n:] if math.isfinite(e.loss)]
    return float(np.mean(tail)) if tail else None


def plot_losses(log_path: Path, png_path: Path, title: str = "") -> Path:
    """The loss curve (a 10-step running mean, the validation loss where measured) as a PNG, written
    beside and renamed into place."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = read_log(log_path)
    steps = [e.step for e in logs]
    losses = [e.loss for e in logs]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    if len(losses) >= 10:
        k = 10
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, lw=1.8, label="10-step mean")
    val = [(e.step, e.val_loss) for e in logs if e.val_loss is not None]
    if val:
        ax.plot(*zip(*val), "o-", lw=1.2, ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png_path.with_name(f".{png_path.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, png_path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return png_path
