"""The training loop: data, kernels (through `ModelRunner`), AdamW, loss scaling, checkpoints, logs.

One optimizer step = `accum` micro-batches, each a forward + input-gradient pass on the kernels
with weight gradients on the CPU, summed; then a global-norm clip, a cosine learning rate and an
AdamW update, after which the new weights are staged into the kernels' inputs (the dynamic-weight
design of ane-private-api.md §5.4: nothing is recompiled).

A run is never lost or poisoned:

- every option is checked before anything is read or written (`TrainOptions.validate`), and the
  model, tokenizer, memory estimate and output directory before the data is loaded;
- a step whose gradients are not finite is skipped and the loss scale backs off (§6); an update that
  would make a weight non-finite is not applied (`AdamW.step`); `max_skipped` skipped steps in a row
  stop the run (`TrainingStalled`), naming the last good checkpoint;
- checkpoints are atomic and the one before is kept (`anekit.train.checkpoint`); a fresh run never
  starts over an existing one without `overwrite`, and even then the old run is replaced only when
  the new one first saves (its log is written to a side file until then);
- a resumed run is checked against the data (sha256), model, tokenizer and LR schedule it was
  started with; Ctrl-C ends with `RunInterrupted`, which says how to resume.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import AnekitError
from ..model.config import ConfigError, ModelConfig
from .checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    TrainState,
    config_differences,
    is_checkpoint,
    load_checkpoint,
    load_checkpoint_tokenizer,
    previous_path,
    read_state,
    save_checkpoint,
)
from .distributed import DistributedError
from .optim import AdamW, LossScaler, clip_factor, cosine_lr, global_norm
from .options import OPTIMIZERS, OptionError, TrainOptions, flag, resume_command
from .runlog import StepLog, plot_losses, read_log, tail_mean, write_log

__all__ = [
    "OptionError",
    "RunInterrupted",
    "RunIOError",
    "StepLog",
    "Trainer",
    "TrainingStalled",
    "TrainOptions",
    "TrainResult",
    "dataset_loss",
    "plot_losses",
    "read_log",
    "resume_command",
]

CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "log.jsonl"
PENDING_LOG_FILE = ".log.jsonl.new"  #: a run replacing another logs here until its first save
PLOT_FILE = "loss.png"
RUN_FILES = (CHECKPOINT_DIR, CHECKPOINT_DIR + ".prev", LOG_FILE, PLOT_FILE)
#: Set by `anekit train --nproc N` for its ranks: the run's id (so a torchrun restart recognises the
#: run's own checkpoint) and N (for the resume command).
RUN_ID_ENV = "ANEKIT_RUN_ID"
NPROC_ENV = "ANEKIT_NPROC"


class TrainingStalled(AnekitError, RuntimeError):
    """Too many consecutive steps were skipped; the message names the last good checkpoint."""


class RunIOError(AnekitError, OSError):
    """The run's log could not be written; the message names the last checkpoint and how to resume."""


class RunInterrupted(AnekitError):
    """Ctrl-C: the message says where the run stopped and the command that resumes it."""

    exit_code = 130  # 128 + SIGINT, what a shell reports for a process ended by Ctrl-C


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class TrainResult:
    steps_done: int
    first_loss: float | None
    final_loss: float | None
    seconds: float
    out: Path
    backend: str
    val_loss: float | None = None
    history: list[StepLog] = field(default_factory=list)


def dataset_loss(runner, data, batch: int, seq_len: int, max_batches: int | None) -> tuple[float, int]:
    """(mean cross-entropy, tokens scored) of `data` in file order (`sequential_batches`), the last
    batch padded with ignored targets to the runner's compiled batch shape. Used for the validation
    loss during training and by `anekit eval`."""
    from .cpu_ops import IGNORE
    from .data import sequential_batches

    total, count = 0.0, 0
    for tokens, targets in sequential_batches(data, batch, seq_len, max_batches):
        if len(tokens) < batch:  # the kernels are compiled for one batch shape: pad the last
            pad = batch - len(tokens)
            tokens = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]), tokens.dtype)])
            targets = np.concatenate([targets, np.full((pad, targets.shape[1]), IGNORE, targets.dtype)])
        n = int((targets != IGNORE).sum())
        total += runner.loss(tokens, targets) * n
        count += n
    return total / max(count, 1), count


def _check_option_paths(opts: TrainOptions) -> None:
    """--data, --config and --tokenizer name files that exist (before anything is read or written)."""
    from .data import check_data_path

    if opts.data is not None:
        check_data_path(opts.data, "--data")
    if opts.config_file is not None:
        check_data_path(opts.config_file, "--config")
    if opts.tokenizer is not None and not Path(opts.tokenizer).exists():
        raise OptionError(f"--tokenizer {opts.tokenizer}: no such file or directory")


# ---------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Sets up a run (fresh or resumed) and trains it; `run(on_step)` reports each step.

    Construction does every check that can fail before any file is written (see module docstring);
    `notes` collects what the caller should tell the user (schedule kept or changed, ...)."""

    def __init__(self, opts: TrainOptions, group=None):
        """group: the `anekit.train.distributed.Group` of a data-parallel run; by default joined when
        torchrun's variables say this process is one of several (`distributed.world_from_env`)."""

        opts.validate()
        self.opts = opts
        self.notes: list[str] = []
        self.group = group if group is not None else _join_group(opts)
        self.rank = self.group.rank if self.group else 0
        self.world = self.group.world_size if self.group else 1
        self.is_main = self.rank == 0  #: rank 0 alone reads the checkpoint and writes files
        self.replacing = False
        self.last_saved_step: int | None = None
        try:
            if self.is_main:
                self._plan()
                # -- the work starts here: data, weights ----------------------------------------
                _make_out_dir(self.out)
                self._load_data(self._info)
                self._init_state(self._info)
        except (AnekitError, ValueError, OSError) as e:
            if self.group:  # the other ranks wait for rank 0's set-up: tell them why it stopped
                self.group.broadcast_object({"error": str(e)})
                self.group.close()
            raise
        if self.group:
            self._share_start()
        options = {"numerics": opts.numerics} if self.backend == "reference" else {}
        from .step import ModelRunner

        self.runner = ModelRunner(self.config, opts.batch, backend=self.backend, **options)
        self.runner.set_params(self.params)
        self._spare_grads: dict[str, np.ndarray] | None = None  #: the last update's, reused
        self.step = self.start_step  #: optimizer steps done so far
        self.val_loss: float | None = None
        if self.group:
            self._init_reducer()

    # -- construction helpers ------------------------------------------------------------------
    def _plan(self) -> None:
        """Every check that needs no data, on rank 0 (the only process of a single-process run):
        model, output directory, checkpoint, schedule, tokenizer, memory."""
        from ..backends import resolve

        opts = self.opts
        _check_option_paths(opts)
        config = opts.model_config() if (opts.preset or opts.config_file or not opts.resume) else None
        self.out = opts.run_dir(config)
        _check_out_dir(self.out)
        self.ckpt_path = self.out / CHECKPOINT_DIR
        self.backend = resolve(opts.backend)
        self._after_restart()
        info, config = self._checkpoint_info(config)  # also sets self.replacing
        _check_trainable(config)
        self._info = info
        self.config = config
        self.start_step = info.train_state.step if info else 0
        self.run_id = (
            (info.train_state.extra.get("run_id") if info else None)
            or os.environ.get(RUN_ID_ENV)
            or uuid.uuid4().hex[:12]
        )
        self.schedule = self._pick_schedule(info)
        self._pick_optimizer(info)
        if opts.steps <= self.start_step:
            raise OptionError(
                f"--steps {opts.steps}: the checkpoint at {self.ckpt_path} is already at step "
                f"{self.start_step}; give a larger --steps to train further"
            )
        self.tokenizer = self._pick_tokenizer(info)
        _check_vocab(config, self.tokenizer, opts)
        self.memory = self._check_memory()

    def _after_restart(self) -> None:
        """When torchrun restarts the workers of a failed run (--max-restarts), continue from the run's
        last checkpoint, or start it again when it saved none (its run id comes from the launcher)."""
        from .distributed import world_from_env

        info = world_from_env()
        if info is None or info.restart_count == 0 or self.opts.resume:
            return
        ours = os.environ.get(RUN_ID_ENV)
        if is_checkpoint(self.ckpt_path):
            saved = read_state(self.ckpt_path).train_state.extra.get("run_id")
            if ours is None or saved == ours:
                self.opts.resume, self.opts.overwrite = True, False
                self.notes.append(f"restart {info.restart_count}: resuming from {self.ckpt_path}")
                return
        self.opts.overwrite = True
        self.notes.append(f"restart {info.restart_count}: no checkpoint of this run yet, starting again")

    def _share_start(self) -> None:
        """Rank 0's starting point (model, tokenizer, schedule, weights, optimizer, sampler, loss scale)
        on every rank; each other rank loads its own copy of the data and checks it is rank 0's."""
        group = self.group
        if self.is_main:
            tensors, scalars = self.optimizer.state_dict()
            start = {
                "config": self.config,
                "out": str(self.out),
                "backend": self.backend,
                "start_step": self.start_step,
                "run_id": self.run_id,
                "schedule": self.schedule,
                "tokenizer": self.tokenizer,
                "resume": self.opts.resume,
                "data": self.data.identity,
                "sampler": self.batches.state_dict(),
                "scaler": self.scaler.state_dict(),
                "optimizer": scalars,
                "optimizer_kind": self.opts.optimizer,
                "moments": {k: (a.shape, a.dtype.str) for k, a in tensors.items()},
                "last_saved_step": self.last_saved_step,
                "world": self.world,
            }
            group.broadcast_object(start)
        else:
            start = group.broadcast_object()
            if "error" in start:
                group.close()
                raise DistributedError(f"rank 0 stopped before training: {start['error']}")
            self._follow(start)
            tensors = {k: np.zeros(shape, dtype) for k, (shape, dtype) in start["moments"].items()}
        group.broadcast_arrays(self.params)
        group.broadcast_arrays(tensors)
        if not self.is_main and tensors:
            self.optimizer.load_state_dict(tensors, start["optimizer"])
        group.check_identical(self.params, self.start_step)

    def _follow(self, start: dict) -> None:
        """A rank other than 0 takes rank 0's starting point (its arrays come next, by broadcast)."""
        from ..backends import resolve
        from .data import DataError, data_differences

        opts = self.opts
        self.config, self.tokenizer = start["config"], start["tokenizer"]
        self.out = Path(start["out"])
        self.ckpt_path = self.out / CHECKPOINT_DIR
        self.backend = resolve(opts.backend)
        self.start_step, self.run_id, self.schedule = start["start_step"], start["run_id"], start["schedule"]
        opts.optimizer = start["optimizer_kind"]
        opts.resume = start["resume"]
        self.last_saved_step = start["last_saved_step"]
        self.memory = self._check_memory()
        self._load_data(None)
        diff = data_differences(start["data"], self.data.identity)
        if diff:
            raise DataError(
                f"{self.group.describe(self.rank)}: its data {self.data.source} is not rank 0's ("
                + "; ".join(diff)
                + "); every machine needs the same data file (docs/distributed.md)"
            )
        self._init_state(None)
        self.batches.load_state_dict(start["sampler"])
        self.scaler.load_state_dict(start["scaler"])
        # rank 0's weights overwrite these (broadcast); zeros, not an initialisation, to make that plain
        self.params = {k: np.zeros(shape, np.float32) for k, shape in self.config.param_shapes().items()}

    def _init_reducer(self) -> None:
        from .distributed import GradBuckets, GradReducer, backward_order

        shapes = self.config.param_shapes()
        order = backward_order(shapes, self.config.n_layers)
        self.buckets = GradBuckets(shapes, order, self.runner.dtype, int(self.opts.bucket_mb * (1 << 20)))
        self.reducer = GradReducer(self.group, self.buckets, self.opts.allreduce)

    def _checkpoint_info(self, config: ModelConfig | None):
        """(the checkpoint's state or None, the run's model). On --resume: the checkpoint, whose
        model must match a given one; else the check that a fresh run may start in OUT."""
        self.replacing = False
        if not self.opts.resume:
            self.replacing = self._check_fresh_target()
            return None, config
        if not is_checkpoint(self.ckpt_path) and not self.ckpt_path.exists():
            raise CheckpointError(
                f"--resume: no checkpoint at {self.ckpt_path}; start a new run without --resume"
            )
        info = read_state(self.ckpt_path)
        if config is not None:
            diff = config_differences(info.config, config)
            if diff:
                raise OptionError(
                    f"the model does not match the checkpoint at {self.ckpt_path} (checkpoint vs given): "
                    + "; ".join(diff)
                    + "; resume without --preset/--config to use the checkpoint's model"
                )
        return info, info.config

    def _check_memory(self):
        """The memory estimate; refused when it exceeds the machine's, unless --force."""
        from .budget import estimate_memory

        opts, config = self.opts, self.config
        exact = opts.numerics == "exact" and self.backend == "reference"
        memory = estimate_memory(
            config, opts.batch, opts.accum, exact=exact, reference=self.backend == "reference"
        )
        if not memory.fits and not opts.force:
            raise OptionError(
                f"not enough memory for {config.name} at --batch {opts.batch}: {memory.describe()}. "
                "Lower --batch (and raise --accum to keep the tokens per step), pick a smaller model, or "
                "pass --force to start anyway"
            )
        return memory

    def _load_data(self, info) -> None:
        """The data (on resume: the data the checkpoint was trained on) and its held-out split."""
        from .data import data_differences, load_dataset, train_val_split

        config = self.config
        self.data = load_dataset(self.opts.data, self.tokenizer, vocab_size=config.vocab_size)
        if info is not None:
            diff = data_differences(info.train_state.data, self.data.identity)
            if diff:
                recorded = info.train_state.data or {}
                was = (
                    "the bundled stories: resume without --data"
                    if recorded.get("kind") == "bundled"
                    else f"--data {recorded.get('path', '?')}"
                )
                raise CheckpointError(
                    f"--resume: the data is not what {self.ckpt_path} was trained on ("
                    + "; ".join(diff)
                    + f"). Resume with the same data (it was {was}), or start a new run"
                )
        self.train_data, self.val_data = train_val_split(self.data, config.seq_len)
        if self.val_data is None:
            self.notes.append(
                f"no validation loss: the data ({len(self.data):,} tokens) is too short to hold out a slice "
                f"of {config.seq_len + 1} tokens"
            )

    def _init_state(self, info) -> None:
        """Batches, optimizer, loss scaler and weights: fresh, or as the checkpoint left them."""
        from .data import Batches

        opts, config = self.opts, self.config
        self.batches = Batches(
            self.train_data, opts.batch, config.seq_len, seed=opts.seed, rank=self.rank, world=self.world
        )
        self.optimizer = self._make_optimizer()
        self.scaler = LossScaler(scale=opts.loss_scale)
        if not self.is_main:
            return  # rank 0's state arrives by broadcast (`_share_start`)
        if info is None:
            from ..model.reference import init_params

            self.params = init_params(config, rng=opts.seed, scheme=opts.init)
            return
        _, self.params, opt_state, state = load_checkpoint(self.ckpt_path, config)
        if opt_state is not None:
            self.optimizer.load_state_dict(*opt_state)
        if state.loss_scaler:
            self.scaler.load_state_dict(state.loss_scaler)
        if state.sampler:
            self.batches.load_state_dict(state.sampler)
        self.last_saved_step = state.step

    def _check_fresh_target(self) -> bool:
        """Refuse to start over an existing run without --overwrite; returns whether one is replaced."""
        present = [n for n in RUN_FILES if (self.out / n).exists() or (self.out / n).is_symlink()]
        if not present:
            return False
        if not self.opts.overwrite:
            raise OptionError(
                f"{self.out} already holds a run ({', '.join(present)}); pass --resume to continue it, "
                "--overwrite to replace it with a new run (the old one stays until the new one first "
                "saves), or --out for another directory"
            )
        for path in (self.ckpt_path, previous_path(self.ckpt_path)):
            if (path.exists() or path.is_symlink()) and not is_checkpoint(path):
                if path.is_symlink() or not path.is_dir() or any(path.iterdir()):
                    raise OptionError(
                        f"--overwrite: {path} is not an anekit checkpoint; refusing to replace it (move it "
                        "away or pick another --out)"
                    )
        return True

    def _pick_schedule(self, info) -> dict:
        opts = self.opts
        recorded = info.train_state.schedule if info else None
        if recorded is None or opts.reschedule:
            if opts.warmup >= opts.steps:
                self.notes.append(
                    f"the learning rate warms up for the whole run (--warmup {opts.warmup} >= --steps "
                    f"{opts.steps}) and never decays"
                )
            if recorded is not None:
                self.notes.append(
                    f"--reschedule: the learning rate now follows peak {opts.lr:g}, warm-up {opts.warmup}, "
                    f"cosine to step {opts.steps} (was peak {recorded['lr']:g}, cosine to step "
                    f"{recorded['total_steps']})"
                )
            return opts.schedule()
        differs = [
            f"{flag} {getattr(opts, key if key != 'total_steps' else 'steps')}"
            for key, flag in (("total_steps", "--steps"), ("lr", "--lr"), ("warmup", "--warmup"))
            if recorded[key] != getattr(opts, key if key != "total_steps" else "steps")
        ]
        if differs:
            self.notes.append(
                f"learning-rate schedule kept from the checkpoint (peak {recorded['lr']:g}, warm-up "
                f"{recorded['warmup']}, cosine to step {recorded['total_steps']}) although "
                f"{', '.join(differs)} was given; pass --reschedule to follow the new options"
            )
        return dict(recorded)

    def _pick_optimizer(self, info) -> None:
        """On resume, the optimizer the run was started with (recorded in the checkpoint's options)."""
        options = info.train_state.extra.get("options") if info else None
        recorded = options.get("optimizer") if isinstance(options, dict) else None
        if recorded is None or recorded == self.opts.optimizer:
            return
        if recorded not in OPTIMIZERS:
            raise CheckpointError(f"--resume: the checkpoint names an unknown optimizer {recorded!r}")
        self.notes.append(
            f"optimizer kept from the checkpoint: {recorded} (not {flag('optimizer')} {self.opts.optimizer})"
        )
        self.opts.optimizer = recorded

    def _make_optimizer(self):
        """AdamW on the host, or with its moments on the engine (`--optimizer engine`), on the run's
        backend."""
        lr, wd = self.schedule["lr"], self.opts.weight_decay
        if self.opts.optimizer == "engine":
            from .engine_adamw import EngineAdamW

            options = {"numerics": self.opts.numerics} if self.backend == "reference" else {}
            return EngineAdamW(lr=lr, weight_decay=wd, backend=self.backend, **options)
        return AdamW(lr=lr, weight_decay=wd)

    def _pick_tokenizer(self, info):
        """The checkpoint's tokenizer on resume (an explicit different --tokenizer is an error); else
        --tokenizer or the bundled one."""
        from .tokenizers import load_tokenizer

        given = load_tokenizer(self.opts.tokenizer) if self.opts.tokenizer is not None else None
        if info is None:
            return given or load_tokenizer(None)
        stored = load_checkpoint_tokenizer(self.ckpt_path)
        recorded = info.train_state.tokenizer
        if stored is None:  # a checkpoint saved without a tokenizer file: check the identity only
            stored = given or load_tokenizer(None)
        if recorded is not None and stored.identity != recorded:
            raise CheckpointError(
                f"--resume: the run was trained with tokenizer {recorded}, not {stored.identity}; give the "
                "tokenizer it was trained with (--tokenizer)"
            )
        if given is not None and given.identity != stored.identity:
            raise OptionError(
                f"--tokenizer {self.opts.tokenizer} is not the tokenizer this run was trained with (the "
                f"checkpoint holds {stored.identity}); resume without --tokenizer"
            )
        return stored

    def close(self) -> None:
        self.runner.close()
        if hasattr(self.optimizer, "close"):
            self.optimizer.close()
        if self.group:
            self.group.close()

    # -- one optimizer step ----------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        s = self.schedule
        return cosine_lr(step, s["lr"], s["total_steps"], s["warmup"], s["min_lr_ratio"])

    def train_step(self, step: int) -> StepLog:
        t0 = time.perf_counter()
        grad_sq = None
        if self.group:
            grads, loss, finite, engine, cpu, comm = self._gradients_dp(step)
        else:
            grads, loss, finite, engine, cpu, grad_sq = self._gradients()
            comm = None
        return self._update(step, grads, loss, finite, engine, cpu, comm, t0, grad_sq)

    def _grad_factor(self) -> float:
        """What the summed gradients of a step are multiplied by to be the mean gradient: 1/accum for
        one process (`_gradients` sums), 1 for data parallelism (`GradReducer.finish` scales)."""
        return 1.0 if self.group else 1.0 / self.opts.accum

    def _gradients(self):
        """(sum of the gradients of `accum` micro-batches, mean loss, finite, engine s, CPU s, their
        sum of squares or None). The step's own sum of squares (`StepResult.grad_sq`, taken as its
        gradients were written) is that of the sum only for one micro-batch; otherwise None."""
        opts = self.opts
        grads: dict[str, np.ndarray] | None = None
        grad_sq = None
        losses, finite, engine, cpu = [], True, 0.0, 0.0
        # one micro-batch: the previous step's gradient arrays, done with, take this step's
        # (`ModelRunner.step(reuse=)`: no fresh pages to fault in)
        reuse, self._spare_grads = (self._spare_grads if opts.accum == 1 else None), None
        for _ in range(opts.accum):
            tokens, targets = next(self.batches)
            res = self.runner.step(tokens, targets, loss_scale=self.scaler.scale, reuse=reuse)
            engine += res.timing.engine_s
            cpu += res.timing.total_s - res.timing.engine_s
            losses.append(res.loss)
            finite &= res.finite and math.isfinite(res.loss)
            if grads is None:
                grads, grad_sq = res.grads, res.grad_sq
            else:
                grad_sq = None
                for k, g in res.grads.items():
                    grads[k] += g
        assert grads is not None  # the sum: `_update` folds 1/accum into the optimizer's pass
        return grads, float(np.mean(losses)), finite, engine, cpu, grad_sq

    def _gradients_dp(self, step: int):
        """As `_gradients`, summed over the ranks: the micro-batches accumulate (loss-scaled) into the
        gradient buckets, whose all-reduce starts during the last backward pass (`GradReducer`).
        Also returns the seconds spent waiting for the all-reduce after the backward pass."""
        opts, scale = self.opts, self.scaler.scale
        self.group.step = step + 1
        self.buckets.zero()
        self.reducer.start(scale, opts.accum)
        loss, engine, cpu = 0.0, 0.0, 0.0
        for a in range(opts.accum):
            tokens, targets = next(self.batches)
            last = a == opts.accum - 1
            res = self.runner.step(
                tokens,
                targets,
                loss_scale=scale,
                grads=self.buckets.views,
                on_ready=self.reducer.ready if last else None,
            )
            engine += res.timing.engine_s
            cpu += res.timing.total_s - res.timing.engine_s
            loss += res.loss
        comm = self.reducer.finish()
        # the logged loss is the mean over the global batch; a non-finite loss anywhere skips the step
        # everywhere (a non-finite gradient already reaches every rank through the sum)
        summary = np.array([loss / opts.accum, 0.0 if math.isfinite(loss) else 1.0])
        self.group.all_reduce_(summary, "loss all-reduce")
        mean_loss = float(summary[0]) / self.world
        return self.buckets.views, mean_loss, bool(summary[1] == 0.0), engine, cpu, comm

    def _update(self, step, grads, loss, finite, engine, cpu, comm, t0, grad_sq=None) -> StepLog:
        """Clip, then AdamW (unless a gradient or the update is non-finite), then restage the weights.

        The clipping norm is the step's own sum of squares when it has one (`grad_sq`: one
        micro-batch, one process), else one read pass over the gradients (`global_norm`); the mean
        over micro-batches and the clipping factor are applied inside the optimizer's own pass
        (`grad_scale`), not as passes of their own."""
        opts = self.opts
        lr = self.lr_at(step)
        t = time.perf_counter()
        factor = self._grad_factor()
        if not finite:
            raw_norm = float("nan")
        elif grad_sq is not None:
            raw_norm = math.sqrt(grad_sq) if grad_sq >= 0 else float("nan")
        else:
            raw_norm = global_norm(grads)
        norm = raw_norm * factor
        finite &= math.isfinite(norm)
        reason = ""
        if not finite:
            self.scaler.update(False)  # fp16 overflow: back off the loss scale (§6)
            reason = "non-finite gradients"
        else:
            scale = factor * clip_factor(norm, opts.clip)
            rejected = self.optimizer.step(self.params, grads, lr=lr, grad_scale=scale, grad_norm=raw_norm)
            if rejected:
                reason = "non-finite update"  # the weights and moments are untouched
            else:
                self.scaler.update(True)
                self.runner.set_params(self.params)  # restage the weights; nothing recompiles
        if not self.group and opts.accum == 1:
            self._spare_grads = grads  # the update is done with them (`_gradients` reuses them)
        cpu += time.perf_counter() - t
        dt = time.perf_counter() - t0
        n_tokens = opts.accum * opts.batch * self.world * self.config.seq_len
        return StepLog(
            step=step + 1,
            loss=loss,
            lr=lr,
            grad_norm=norm,
            loss_scale=self.scaler.scale,
            skipped=bool(reason),
            tokens_per_s=n_tokens / dt,
            ms_per_step=dt * 1e3,
            engine_ms=engine * 1e3,
            cpu_ms=cpu * 1e3,
            skip_reason=reason,
            run=self.run_id,
            comm_ms=None if comm is None else comm * 1e3,
            world=self.world,
        )

    def validation_loss(self) -> float | None:
        if self.val_data is None:
            return None
        loss, _ = dataset_loss(
            self.runner, self.val_data, self.opts.batch, self.config.seq_len, self.opts.eval_batches
        )
        return loss

    def save(self, step: int) -> Path:
        state = TrainState(
            step=step,
            loss_scaler=self.scaler.state_dict(),
            sampler=self.batches.state_dict(),
            data=self.data.identity,
            schedule=self.schedule,
            extra={
                "run_id": self.run_id,
                "options": {k: str(v) for k, v in asdict(self.opts).items()},
            },
        )
        path = save_checkpoint(
            self.ckpt_path,
            self.config,
            self.params,
            self.optimizer.state_dict(),
            state,
            tokenizer=self.tokenizer,
            keep_previous=not self.replacing,
        )
        self.last_saved_step = step
        return path

    # -- the run ---------------------------------------------------------------------------------
    def where(self) -> str:
        """The last checkpoint, for messages."""
        if self.last_saved_step is None:
            return "no checkpoint was saved"
        return f"the last checkpoint is {self.ckpt_path} (step {self.last_saved_step})"

    def resume_hint(self) -> str:
        if self.last_saved_step is None:
            return "start again with --overwrite (nothing was saved to resume from)"
        command = resume_command(self.opts, self.out)
        if self.world > 1:
            nproc = os.environ.get(NPROC_ENV)
            if nproc:  # started by `anekit train --nproc N`
                return f"resume with: {command.replace(' --resume', f' --nproc {nproc} --resume', 1)}"
            return f"resume with torchrun as before, running: {command}"
        return f"resume with: {command}"

    def _open_log(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        log_path = self.out / LOG_FILE
        pending = self.out / PENDING_LOG_FILE
        if self.opts.resume:
            if pending.is_file():  # a replacing run died between its first save and promoting its log
                first = read_log(pending)[:1]
                if first and first[0].run == self.run_id:
                    os.replace(pending, log_path)
                else:
                    pending.unlink()
            kept = [e for e in read_log(log_path) if e.step <= self.start_step and e.run in ("", self.run_id)]
            write_log(log_path, kept)
            return log_path
        if self.replacing:
            write_log(pending, [])
            return pending
        write_log(log_path, [])
        return log_path

    def _promote(self, log_path: Path) -> Path:
        """First save of a run replacing another: its log becomes log.jsonl, the old plot goes."""
        final = self.out / LOG_FILE
        os.replace(log_path, final)
        (self.out / PLOT_FILE).unlink(missing_ok=True)
        self.replacing = False
        return final

    def run(self, on_step: Callable[[StepLog], None] | None = None) -> TrainResult:
        history: list[StepLog] = []
        t0 = time.perf_counter()
        log_path: Path | None = None
        try:
            log_path = self._open_log() if self.is_main else None  # rank 0 alone writes files
            with open(log_path or os.devnull, "a", encoding="utf-8") as log:
                for step in range(self.start_step, self.opts.steps):
                    entry = self._step_logged(step, log)
                    history.append(entry)
                    if on_step:
                        on_step(entry)
                    self._check_stalled(history)
                    if self.step % self.opts.save_every == 0 or self.step == self.opts.steps:
                        log_path = self._save_during_run(log_path)
        except CheckpointWriteError:
            raise
        except DistributedError as e:
            raise type(e)(
                f"{e}; the run stopped at step {self.step}; {self.where()}; {self.resume_hint()}"
            ) from None
        except OSError as e:  # the log: disk full, permissions, ...
            raise RunIOError(
                f"{e}; the run stopped at step {self.step}; {self.where()}; {self.resume_hint()}"
            ) from e
        except KeyboardInterrupt:
            raise RunInterrupted(
                f"interrupted after step {self.step} of {self.opts.steps}; {self.where()}; "
                f"{self.resume_hint()}"
            ) from None
        finally:
            if self.replacing:  # the new run never saved: the old run stays as it was
                (self.out / PENDING_LOG_FILE).unlink(missing_ok=True)
        seconds = time.perf_counter() - t0
        all_logs = read_log(log_path) if log_path is not None else history
        return TrainResult(
            steps_done=self.opts.steps - self.start_step,
            first_loss=all_logs[0].loss if all_logs else None,
            final_loss=tail_mean(all_logs),
            seconds=seconds,
            out=self.out,
            backend=self.backend,
            val_loss=self.val_loss,
            history=history,
        )

    def _step_logged(self, step: int, log) -> StepLog:
        """Train step `step`, measure the validation loss when due, append the entry to the log."""
        entry = self.train_step(step)
        self.step = done = step + 1
        due = self.opts.eval_every and (done % self.opts.eval_every == 0 or done == self.opts.steps)
        if due and self.is_main:  # the others go on to the next step's all-reduce and wait there
            entry.val_loss = self.val_loss = self.validation_loss()
        saving = done % self.opts.save_every == 0 or done == self.opts.steps  # checked there
        if self.group and done % self.opts.check_every == 0 and not saving:
            self.group.check_identical(self.params, done)
        log.write(entry.to_json() + "\n")
        log.flush()
        return entry

    def _check_stalled(self, history: list[StepLog]) -> None:
        tail = history[-self.opts.max_skipped :]
        if len(tail) < self.opts.max_skipped or not all(e.skipped for e in tail):
            return
        last = tail[-1]
        raise TrainingStalled(
            f"{len(tail)} steps in a row were skipped (the last for {last.skip_reason} at step {last.step}, "
            f"loss scale {last.loss_scale:g}); the run stopped. The weights have not changed since; "
            f"{self.where()}. Lower --lr, check the data, or raise --max-skipped"
        )

    def _save_during_run(self, log_path: Path) -> Path:
        """Save at the current step; the first save of a replacing run also promotes its log."""
        replacing = self.replacing
        if self.group:  # never save weights one rank holds and another does not
            self.group.check_identical(self.params, self.step)
        if not self.is_main:
            self.last_saved_step = self.step
            return log_path
        try:
            self.save(self.step)
        except CheckpointWriteError as e:
            raise CheckpointWriteError(
                f"{e} The run stopped at step {self.step}; {self.resume_hint()}"
            ) from e
        return self._promote(log_path) if replacing else log_path


def _join_group(opts: TrainOptions):
    """The process group when torchrun started this process as one of several ranks, else None."""
    from .distributed import Group, world_from_env

    info = world_from_env()
    return None if info is None else Group(info, opts.dist_timeout)


def _check_out_dir(out: Path) -> None:
    """--out must be a directory or creatable and writable: checked before any work."""
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out}: exists and is not a directory")
    probe = out
    while not probe.exists():
        if probe.is_symlink():
            raise OptionError(f"--out {out}: {probe} is a dangling symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        raise OptionError(f"--out {out}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OptionError(f"--out {out}: no permission to write in {probe}")


def _make_out_dir(out: Path) -> None:
    """Create --out and prove it writable (permissions, read-only or pseudo file systems) before work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise OptionError(f"--out {out}: cannot write there: {e}") from None


def _check_trainable(config: ModelConfig) -> None:
    """The training step (`anekit.train.step`) is the plain Llama block: refuse, before any work, the
    options only imported models use (`anekit.model.config`)."""
    used = [f for f in ("qkv_bias", "qk_norm") if getattr(config, f)]
    if config.sliding_window is not None and config.sliding_window < config.seq_len:
        used.append(f"sliding_window {config.sliding_window} (< seq_len {config.seq_len})")
    if used:
        raise ConfigError(
            f"model {config.name!r} uses {', '.join(used)}, which anekit train does not implement (they "
            "are for running imported Qwen2/Qwen3/Mistral models); remove them from the config to train"
        )


def _check_vocab(config: ModelConfig, tokenizer, opts: TrainOptions) -> None:
    """The tokenizer's ids must fit the model, and nearly fill it: a model whose vocabulary is far
    larger than the tokenizer's trains embedding rows no token ever reaches."""
    have, want = tokenizer.vocab_size, config.vocab_size
    unused = want - have
    if have <= want and (unused <= 64 or unused <= 0.01 * want):
        return
    which = f"--config {opts.config_file}" if opts.config_file else f"preset {config.name!r}"
    tok = str(opts.tokenizer) if opts.tokenizer else "the bundled tokenizer"
    what = (
        f"its ids up to {have - 1} do not fit the model's embedding"
        if have > want
        else f"{unused:,} of the model's {want:,} embedding rows would never be trained"
    )
    raise OptionError(
        f"{which} has vocab_size {want:,} but {tok} has {have:,} ids: {what}. Train a matching tokenizer on "
        f"your text with `anekit train-tokenizer TEXT --vocab-size {want} --out tokenizer.json` and pass "
        f"--tokenizer tokenizer.json, pass the tokenizer the model was made for (--tokenizer), or use a "
        f"model with vocab_size {have} (e.g. --preset tiny with the bundled tokenizer)"
    )
