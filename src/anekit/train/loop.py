"""The training loop: data, kernels (through `ModelRunner`), AdamW, loss scaling, checkpoints, logs.

One optimizer step = `accum` micro-batches, each a forward + input-gradient pass on the kernels
with weight gradients on the CPU, summed; then a global-norm clip, a cosine learning rate and an
AdamW update, after which the new weights are staged into the kernels' inputs (the dynamic-weight
design of ane-private-api.md §5.4: nothing is recompiled). A step whose gradients are not finite is
skipped and the loss scale backs off, so no weight is ever corrupted (§6).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..model.config import ModelConfig, preset
from .checkpoint import TrainState, is_checkpoint, load_checkpoint, save_checkpoint
from .optim import AdamW, LossScaler, clip_by_global_norm, cosine_lr

CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "log.jsonl"
PLOT_FILE = "loss.png"


@dataclass
class TrainOptions:
    """Everything `anekit train` takes; the defaults train `tiny` on the bundled corpus."""

    preset: str = "tiny"
    config_file: Path | None = None
    data: Path | None = None  #: None: the bundled stories; .bin: llama2.c tokens; else text
    tokenizer: Path | None = None  #: None: the bundled tokenizer
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
    out: Path = Path("runs/tiny")
    resume: bool = False
    overwrite: bool = False  #: start afresh even though OUT holds a checkpoint
    seed: int = 0
    loss_scale: float = 256.0  #: initial dynamic loss scale (ane-private-api.md §5.4 uses 256)
    save_every: int = 100
    sample_tokens: int = 80
    init: str = "dynamic"

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_file(self.config_file) if self.config_file else preset(self.preset)


@dataclass
class StepLog:
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

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass
class TrainResult:
    steps_done: int
    first_loss: float | None
    final_loss: float | None
    seconds: float
    out: Path
    backend: str
    sample: str = ""
    history: list[StepLog] = field(default_factory=list)


class Trainer:
    """Sets up a run (fresh or resumed) and trains it; `run(on_step)` reports each step."""

    def __init__(self, opts: TrainOptions):
        from ..backends import resolve
        from .data import Batches, load_dataset
        from .tokenizers import load_tokenizer

        self.opts = opts
        if opts.steps < 1 or opts.batch < 1 or opts.accum < 1:
            raise ValueError("steps, batch and accum must be at least 1")
        self.out = Path(opts.out)
        self.ckpt_path = self.out / CHECKPOINT_DIR
        self.tokenizer = load_tokenizer(opts.tokenizer)
        config = opts.model_config()
        if self.tokenizer.vocab_size > config.vocab_size:
            raise ValueError(
                f"the tokenizer has {self.tokenizer.vocab_size} ids but model {config.name!r} only "
                f"{config.vocab_size}; pick a matching --preset/--config or --tokenizer"
            )
        self.data = load_dataset(opts.data, self.tokenizer, vocab_size=config.vocab_size)
        self.batches = Batches(self.data, opts.batch, config.seq_len, seed=opts.seed)
        self.optimizer = AdamW(lr=opts.lr, weight_decay=opts.weight_decay)
        self.scaler = LossScaler(scale=opts.loss_scale)
        self.start_step = 0
        if not opts.resume and not opts.overwrite and is_checkpoint(self.ckpt_path):
            raise ValueError(
                f"{self.ckpt_path} already holds a checkpoint; pass --resume to continue it, --overwrite to "
                "start afresh, or --out for another run directory"
            )
        if opts.resume:
            if not is_checkpoint(self.ckpt_path):
                raise ValueError(f"--resume: no checkpoint at {self.ckpt_path}")
            config, self.params, opt_state, state = load_checkpoint(self.ckpt_path, config)
            if opt_state is not None:
                self.optimizer.load_state_dict(*opt_state)
            if state.loss_scaler:
                self.scaler.load_state_dict(state.loss_scaler)
            if state.sampler:
                self.batches.load_state_dict(state.sampler)
            self.start_step = state.step
        else:
            from ..model.reference import init_params

            self.params = init_params(config, rng=opts.seed, scheme=opts.init)
        self.config = config
        self.backend = resolve(opts.backend)
        options = {"numerics": opts.numerics} if self.backend == "reference" else {}
        from .step import ModelRunner

        self.runner = ModelRunner(config, opts.batch, backend=self.backend, **options)
        self.runner.set_params(self.params)

    def close(self) -> None:
        self.runner.close()

    # -- one optimizer step ----------------------------------------------------------------------
    def train_step(self, step: int) -> StepLog:
        t0 = time.perf_counter()
        opts = self.opts
        grads: dict[str, np.ndarray] | None = None
        losses, finite, engine, cpu = [], True, 0.0, 0.0
        for _ in range(opts.accum):
            tokens, targets = next(self.batches)
            res = self.runner.step(tokens, targets, loss_scale=self.scaler.scale)
            engine += res.timing.engine_s
            cpu += res.timing.total_s - res.timing.engine_s
            losses.append(res.loss)
            finite &= res.finite and math.isfinite(res.loss)
            if grads is None:
                grads = res.grads
            else:
                for k, g in res.grads.items():
                    grads[k] += g
        assert grads is not None
        if opts.accum > 1:
            for g in grads.values():
                g /= opts.accum
        lr = cosine_lr(step, opts.lr, opts.steps, opts.warmup, opts.min_lr_ratio)
        norm = clip_by_global_norm(grads, opts.clip) if finite else float("nan")
        finite &= math.isfinite(norm)
        applied = self.scaler.update(finite)
        if applied:
            t = time.perf_counter()
            self.optimizer.step(self.params, grads, lr=lr)
            self.runner.set_params(self.params)  # restage the weights; nothing recompiles
            cpu += time.perf_counter() - t
        dt = time.perf_counter() - t0
        n_tokens = opts.accum * opts.batch * self.config.seq_len
        return StepLog(
            step=step + 1,
            loss=float(np.mean(losses)),
            lr=lr,
            grad_norm=norm,
            loss_scale=self.scaler.scale,
            skipped=not applied,
            tokens_per_s=n_tokens / dt,
            ms_per_step=dt * 1e3,
            engine_ms=engine * 1e3,
            cpu_ms=cpu * 1e3,
        )

    def save(self, step: int) -> Path:
        state = TrainState(
            step=step,
            loss_scaler=self.scaler.state_dict(),
            sampler=self.batches.state_dict(),
            data=getattr(self.data, "identity", None),
            tokenizer=self.tokenizer.identity,
            extra={"options": {k: str(v) for k, v in asdict(self.opts).items()}},
        )
        return save_checkpoint(self.ckpt_path, self.config, self.params, self.optimizer.state_dict(), state)

    # -- the run ---------------------------------------------------------------------------------
    def run(self, on_step: Callable[[StepLog], None] | None = None) -> TrainResult:
        self.out.mkdir(parents=True, exist_ok=True)
        log_path = self.out / LOG_FILE
        if not self.opts.resume:
            log_path.write_text("")
        else:
            _truncate_log(log_path, self.start_step)
        history: list[StepLog] = []
        t0 = time.perf_counter()
        step = self.start_step
        with open(log_path, "a", encoding="utf-8") as log:
            for step in range(self.start_step, self.opts.steps):
                entry = self.train_step(step)
                history.append(entry)
                log.write(entry.to_json() + "\n")
                log.flush()
                if on_step:
                    on_step(entry)
                done = step + 1
                if done % self.opts.save_every == 0 or done == self.opts.steps:
                    self.save(done)
        seconds = time.perf_counter() - t0
        all_logs = read_log(log_path)
        return TrainResult(
            steps_done=self.opts.steps - self.start_step,
            first_loss=all_logs[0].loss if all_logs else None,
            final_loss=_tail_mean(all_logs),
            seconds=seconds,
            out=self.out,
            backend=self.backend,
            history=history,
        )


def _tail_mean(logs: list[StepLog], n: int = 10) -> float | None:
    """The final loss as the mean of the last `n` steps: single batches are noisy."""
    tail = [e.loss for e in logs[-n:] if math.isfinite(e.loss)]
    return float(np.mean(tail)) if tail else None


def read_log(path: Path) -> list[StepLog]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(StepLog(**json.loads(line)))
    return out


def _truncate_log(path: Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint's step (they will be trained again)."""
    kept = [e for e in read_log(path) if e.step <= step]
    path.write_text("".join(e.to_json() + "\n" for e in kept))


def plot_losses(log_path: Path, png_path: Path, title: str = "") -> Path:
    """The loss curve (and a 10-step running mean) as a PNG."""
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
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path
