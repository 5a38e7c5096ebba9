"""What `anekit train` takes (`TrainOptions`), each option's range, and the command that resumes a run.

Every option is checked by `TrainOptions.validate` before anything is read or written; the error names
the option as the command line spells it (``--lr must be a finite number > 0 and <= 1, got nan``).
The command line reads its defaults from here: each default is written once.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backends.base import NUMERICS_NAMES
from ..errors import AnekitError
from ..model.config import ModelConfig, preset

DEFAULT_PRESET = "tiny"
#: `--allreduce` values (stated here, not in `anekit.train.distributed`, so that reading the options
#: never imports torch).
ALLREDUCE_PRECISIONS = ("full", "fp16")
#: The reference backend's numerics (stated once, in `backends.base`, cheap to import at start-up).
NUMERICS = NUMERICS_NAMES
#: `--optimizer` values: AdamW on the host (`anekit.train.optim.AdamW`, the default until the engine
#: version is shown to match on hardware) or its moments on the engine (`anekit.train.engine_adamw`).
OPTIMIZERS = ("host", "engine")


class OptionError(AnekitError, ValueError):
    """A training option out of range or inconsistent; the message names the option."""


@dataclass
class TrainOptions:
    """Everything `anekit train` takes; the defaults train `tiny` on the bundled corpus.

    `anekit.cli.train` reads its defaults from here (one place for each default)."""

    preset: str | None = None  #: None: `tiny`, or on resume the checkpoint's model
    config_file: Path | None = None
    data: Path | None = None  #: None: the bundled stories; .bin: llama2.c tokens; else text
    tokenizer: Path | None = None  #: None: the bundled one, or on resume the checkpoint's
    steps: int = 400
    batch: int = 8
    accum: int = 1
    lr: float = 3e-3
    warmup: int = 20
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    weight_decay: float = 0.1
    backend: str = "auto"
    numerics: str = "ane"  #: reference backend only
    out: Path | None = None  #: None: runs/<preset or config name>
    resume: bool = False
    overwrite: bool = False  #: start afresh even though OUT holds a run
    reschedule: bool = False  #: on resume, decay the LR over the new --steps
    force: bool = False  #: start even if the memory estimate exceeds the machine's
    seed: int = 0
    loss_scale: float = 256.0  #: initial dynamic loss scale (ane-private-api.md §5.4 uses 256)
    save_every: int = 100
    eval_every: int = 100  #: validation loss every N steps and at the end (0: never)
    eval_batches: int = 4  #: batches of the held-out slice per validation
    max_skipped: int = 20  #: consecutive skipped steps that stop the run
    sample_tokens: int = 80
    init: str = "dynamic"
    optimizer: str = "host"  #: where AdamW runs (OPTIMIZERS); a resumed run keeps its checkpoint's
    # -- data parallelism (several processes under torchrun: anekit.train.distributed) -----------
    allreduce: str = "full"  #: gradient all-reduce precision: "full" (the CPU float type) or "fp16"
    bucket_mb: float = 25.0  #: gradient bucket size (PyTorch DDP's default bucket_cap_mb)
    dist_timeout: float = 180.0  #: seconds a rank waits for the others before the run stops
    check_every: int = 100  #: compare the ranks' parameter checksums every N steps (and at each save)

    # -- checks that need no file ----------------------------------------------------------------
    def validate(self) -> None:
        """Raise `OptionError` naming the first option out of range (before any file is touched)."""
        _int_option("--steps", self.steps, 1, 10**9)
        _int_option("--batch", self.batch, 1, 1 << 16)
        _int_option("--accum", self.accum, 1, 1 << 16)
        _float_option("--lr", self.lr, 0.0, 1.0, lo_open=True)
        _int_option("--warmup", self.warmup, 0, 10**9)
        _float_option("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _float_option("--clip", self.clip, 0.0, 1e9)
        _float_option("weight_decay", self.weight_decay, 0.0, 1.0)
        _int_option("--seed", self.seed, 0, 2**63 - 1)
        _float_option("--loss-scale", self.loss_scale, 1.0, 2.0**64)  # a big one just backs off
        _int_option("--save-every", self.save_every, 1, 10**9)
        _int_option("--eval-every", self.eval_every, 0, 10**9)
        _int_option("--eval-batches", self.eval_batches, 1, 1 << 20)
        _int_option("--max-skipped", self.max_skipped, 1, 10**9)
        _int_option("--sample-tokens", self.sample_tokens, 0, 1 << 20)
        _float_option("--bucket-mb", self.bucket_mb, 0.0, 1 << 16, lo_open=True)
        _float_option("--dist-timeout", self.dist_timeout, 1.0, 86400.0)
        _int_option("--check-every", self.check_every, 1, 10**9)
        if self.allreduce not in ALLREDUCE_PRECISIONS:
            raise OptionError(
                f"--allreduce must be {' or '.join(ALLREDUCE_PRECISIONS)}, got {self.allreduce!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise OptionError(
                f"{flag('optimizer')} must be {' or '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if self.numerics not in NUMERICS:
            raise OptionError(f"--numerics must be {' or '.join(NUMERICS)}, got {self.numerics!r}")
        from ..model.reference import INIT_SCHEMES

        if self.init not in INIT_SCHEMES:
            raise OptionError(f"init must be one of {', '.join(INIT_SCHEMES)}, got {self.init!r}")
        if self.resume and self.overwrite:
            raise OptionError("--resume and --overwrite exclude each other: continue the run, or replace it")
        if self.reschedule and not self.resume:
            raise OptionError("--reschedule only applies with --resume")
        if self.preset is not None and self.config_file is not None:
            raise OptionError("give --preset or --config, not both (a config file may name a base preset)")

    def model_config(self) -> ModelConfig:
        if self.config_file:
            return ModelConfig.from_file(self.config_file)
        return preset(self.preset or DEFAULT_PRESET)

    def run_dir(self, config: ModelConfig | None = None) -> Path:
        """--out, else runs/<the preset's or config's name>."""
        if self.out is not None:
            return Path(self.out)
        name = self.preset or (config.name if config is not None else DEFAULT_PRESET)
        return Path("runs") / name

    def schedule(self) -> dict:
        return {
            "lr": self.lr,
            "warmup": self.warmup,
            "min_lr_ratio": self.min_lr_ratio,
            "total_steps": self.steps,
        }


def _int_option(name: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise OptionError(f"{name} must be an integer from {lo} to {hi:,}, got {value!r}")


def _float_option(name: str, value, lo: float, hi: float, lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    try:
        ok = ok and math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
    except OverflowError:  # an integer beyond float range
        ok = False
    if not ok:
        rng = f"{'>' if lo_open else '>='} {lo:g} and <= {hi:g}"
        raise OptionError(f"{name} must be a finite number {rng}, got {value!r}")


#: The one field whose `anekit train` flag is not its name with dashes.
_FLAG_EXCEPTIONS = {"config_file": "--config"}


def flag(name: str) -> str:
    """The `anekit train` flag of the TrainOptions field `name` (`save_every` -> `--save-every`)."""
    return _FLAG_EXCEPTIONS.get(name, "--" + name.replace("_", "-"))


#: The options a resume command repeats (the rest come from the checkpoint).
_RESUME_OPTIONS = (
    "preset", "config_file", "data", "steps", "batch", "accum", "backend", "numerics", "save_every",
    "eval_every", "eval_batches", "max_skipped", "sample_tokens", "allreduce", "bucket_mb",
    "dist_timeout", "check_every",
)  # fmt: skip


def resume_command(opts: TrainOptions, out: Path) -> str:
    """The `anekit train --resume ...` command that continues the run `opts` describe: the output
    directory and every option that differs from its default and matters after the checkpoint
    (model, data, shapes, schedule horizon, intervals); the LR schedule and the tokenizer are in
    the checkpoint."""
    defaults = TrainOptions()
    parts = ["anekit", "train", "--resume", "--out", str(out)]
    for name in _RESUME_OPTIONS:
        value = getattr(opts, name)
        if value is not None and value != getattr(defaults, name):
            parts += [flag(name), str(value)]
    return shlex.join(parts)
