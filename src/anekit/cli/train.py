"""`anekit train`, `anekit eval`: train Llama-family models and score the result (`anekit generate` and
`anekit chat` are in `cli/llm.py`)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

from ..errors import AnekitError
from ..model.config import PRESETS
from ..train.data import VAL_FRACTION
from ..train.loop import TrainOptions
from ..train.options import DEFAULT_PRESET, NUMERICS, OPTIMIZERS, flag
from .common import err, fail, stdout_console

D = TrainOptions  # every default is written once, in TrainOptions, and read here
EMULATED = "reference backend: CPU emulation"
PRINT_EVERY = 10


def _preset_list() -> str:
    """The presets for help text, from the registry (`anekit.model.config.PRESETS`)."""
    return ", ".join(f"{name} (the default)" if name == DEFAULT_PRESET else name for name in PRESETS)


def train(
    preset: str = typer.Option(
        D.preset,
        help=f"Model preset: {_preset_list()}. On --resume the checkpoint's model is used unless one is "
        "given.",
    ),
    config: Path = typer.Option(
        D.config_file,
        help="A .toml/.json model config instead of a preset: the keys of docs/examples/model.toml (each "
        "explained there; 'preset = NAME' starts from a preset). Unknown keys and bad values are refused.",
    ),
    data: Path = typer.Option(
        D.data, help="Training data: llama2.c uint16 .bin tokens or a text file (default: bundled stories)."
    ),
    tokenizer: Path = typer.Option(
        D.tokenizer,
        help="tokenizer.json (Hugging Face) or llama2.c tokenizer.bin (default: bundled; on --resume the "
        "checkpoint's). Its vocabulary must match the model's: see `anekit train-tokenizer`.",
    ),
    steps: int = typer.Option(D.steps, help="Optimizer steps to train to (in total, when resuming)."),
    batch: int = typer.Option(D.batch, help="Sequences per micro-batch."),
    accum: int = typer.Option(D.accum, help="Micro-batches accumulated per optimizer step."),
    lr: float = typer.Option(
        D.lr, help=f"Peak learning rate (cosine decay to {D.min_lr_ratio:g}x after warm-up), (0, 1]."
    ),
    warmup: int = typer.Option(D.warmup, help="Linear warm-up steps."),
    clip: float = typer.Option(D.clip, help="Global gradient-norm clip (0: off)."),
    backend: str = typer.Option(
        D.backend, help="auto (ANE where reachable, else reference), ane or reference."
    ),
    numerics: str = typer.Option(
        D.numerics,
        help=f"Reference backend numerics: {NUMERICS[0]} (fp16 as on the engine) or {NUMERICS[1]} (float64).",
    ),
    optimizer: str = typer.Option(
        D.optimizer,
        help=f"Where AdamW runs: {OPTIMIZERS[0]} (the CPU, fp32; the default) or {OPTIMIZERS[1]} (its "
        "moments in fp16 on the engine, fp32 weights on the CPU: kernels/adamw.py). A resumed run keeps "
        "its checkpoint's.",
    ),
    out: Path = typer.Option(
        D.out,
        help="Run directory: checkpoint/, checkpoint.prev/, log.jsonl, loss.png (default: runs/<model>).",
    ),
    resume: bool = typer.Option(
        D.resume, "--resume", help="Continue from OUT/checkpoint exactly where it stopped."
    ),
    overwrite: bool = typer.Option(
        D.overwrite,
        "--overwrite",
        help="Replace the run in OUT with a new one (the old one stays until the new one first saves).",
    ),
    reschedule: bool = typer.Option(
        D.reschedule,
        "--reschedule",
        help="With --resume: decay the learning rate over the new --steps/--lr/--warmup instead of the "
        "schedule the run started with.",
    ),
    force: bool = typer.Option(
        D.force, "--force", help="Start even when the estimated memory exceeds this machine's."
    ),
    seed: int = typer.Option(D.seed, help="Seed for initialisation and data sampling."),
    loss_scale: float = typer.Option(
        D.loss_scale, help="Initial dynamic loss scale (>= 1; halves on each overflow)."
    ),
    save_every: int = typer.Option(D.save_every, help="Checkpoint every N steps (and at the end)."),
    eval_every: int = typer.Option(
        D.eval_every,
        help=f"Validation loss on the held-out {VAL_FRACTION:.0%} of the data every N steps and at the end "
        "(0: off).",
    ),
    eval_batches: int = typer.Option(D.eval_batches, help="Batches of held-out data per validation."),
    max_skipped: int = typer.Option(
        D.max_skipped, help="Stop when this many steps in a row are skipped (non-finite)."
    ),
    sample_tokens: int = typer.Option(
        D.sample_tokens, help="Tokens to generate as a sample at the end (0: none)."
    ),
    print_every: int = typer.Option(
        PRINT_EVERY, help="When output is not a terminal: a progress line every N steps (and at the end)."
    ),
    nproc: int = typer.Option(
        1,
        help="Train data-parallel on N processes of this machine, started by torch's launcher (torchrun); "
        "--batch is per process. Across machines, run torchrun on each (docs/distributed.md). Needs "
        "pip install 'anekit[distributed]'.",
    ),
    max_restarts: int = typer.Option(
        0, help="With --nproc: restart all ranks this many times after a failure, from the last checkpoint."
    ),
    allreduce: str = typer.Option(
        D.allreduce,
        help="Data-parallel gradient all-reduce precision: full (the gradients' float type) or fp16 (half "
        "the bytes; the loss scale keeps small gradients).",
    ),
    bucket_mb: float = typer.Option(D.bucket_mb, help="Data-parallel gradient bucket size, in MB."),
    dist_timeout: float = typer.Option(
        D.dist_timeout,
        help="Data-parallel: seconds a rank waits for the others before the run stops with an error naming "
        "the rank that died or hangs.",
    ),
    check_every: int = typer.Option(
        D.check_every,
        help="Data-parallel: compare the ranks' parameter checksums every N steps (and before each save).",
    ),
) -> None:
    """Train a transformer with forward and input-gradient kernels on the engine, the rest on the CPU.

    With no arguments: the tiny model on the bundled stories into runs/tiny, on the ANE where available.

    Off the engine the NumPy reference backend runs the same kernels (its timings are CPU emulation).

    Writes OUT/checkpoint (the one before: OUT/checkpoint.prev), OUT/log.jsonl (per step) and OUT/loss.png.

    Ctrl-C stops the run and prints the command that resumes it (exit status 130).
    """
    from ..train.loop import LOG_FILE, PLOT_FILE, RunInterrupted, Trainer, plot_losses

    if print_every < 1:
        raise fail(f"--print-every must be at least 1, got {print_every}")
    opts = TrainOptions(
        preset=preset,
        config_file=config,
        data=data,
        tokenizer=tokenizer,
        steps=steps,
        batch=batch,
        accum=accum,
        lr=lr,
        warmup=warmup,
        clip=clip,
        backend=backend,
        numerics=numerics,
        optimizer=optimizer,
        out=out,
        resume=resume,
        overwrite=overwrite,
        reschedule=reschedule,
        force=force,
        seed=seed,
        loss_scale=loss_scale,
        save_every=save_every,
        eval_every=eval_every,
        eval_batches=eval_batches,
        max_skipped=max_skipped,
        sample_tokens=sample_tokens,
        allreduce=allreduce,
        bucket_mb=bucket_mb,
        dist_timeout=dist_timeout,
        check_every=check_every,
    )
    if nproc != 1 or max_restarts != 0:
        _launch(opts, nproc, max_restarts, print_every)
        return
    console = stdout_console()
    try:
        trainer = Trainer(opts)
    except KeyboardInterrupt:
        err.print("interrupted before training started; nothing was written")
        raise typer.Exit(130) from None
    except (AnekitError, ValueError, OSError) as e:
        raise _rank_fail(e) from None
    if not trainer.is_main:  # rank 0 alone reports and writes; the others train and report errors
        try:
            with _closing(trainer):
                trainer.run()
        except AnekitError as e:
            raise _rank_fail(e, trainer.rank) from None
        return
    cfg = trainer.config
    run_dir = trainer.out
    emulated = trainer.backend == "reference"
    for line in header_lines(trainer):
        console.print(line, highlight=False, markup=False)

    reporter = ProgressReporter(
        console, total=steps, start=trainer.start_step, emulated=emulated, every=print_every
    )
    try:
        with reporter, _closing(trainer):
            result = trainer.run(reporter.on_step)
    except RunInterrupted as e:
        err.print(f"[yellow]interrupted:[/] {_escape(str(e))}")
        raise typer.Exit(130) from None
    except AnekitError as e:
        raise _rank_fail(e, trainer.rank) from None
    try:
        png = plot_losses(run_dir / LOG_FILE, run_dir / PLOT_FILE, title=f"{cfg.name} on {trainer.backend}")
    except OSError as e:
        err.print(f"warning: cannot write the loss plot: {_escape(str(e))}")
        png = None
    sample = ""
    if sample_tokens > 0:
        from ..llm import from_params

        model = from_params(cfg, trainer.params, trainer.tokenizer)
        sample = model.generate("", max_tokens=sample_tokens, temperature=0.8, top_k=40, seed=seed).text
    if result.first_loss is not None and result.final_loss is not None:
        val = f", validation {result.val_loss:.3f}" if result.val_loss is not None else ""
        console.print(
            f"loss {result.first_loss:.3f} -> {result.final_loss:.3f} (mean of the last 10 steps){val} "
            f"in {result.seconds:.0f} s",
            highlight=False,
        )
    console.print(
        f"checkpoint: {trainer.ckpt_path}   log: {run_dir / LOG_FILE}" + (f"   plot: {png}" if png else ""),
        highlight=False,
        markup=False,
    )
    if sample:
        console.print("[bold]sample:[/]")
        console.print(sample, highlight=False, markup=False)


#: The `anekit train` options the ranks started by --nproc are given (each as `flag(name)`): every
#: TrainOptions field but the switches below.
_RANK_OPTIONS = (
    "preset", "config_file", "data", "tokenizer", "steps", "batch", "accum", "lr", "warmup", "clip",
    "backend", "numerics", "optimizer", "out", "seed", "loss_scale", "save_every", "eval_every",
    "eval_batches", "max_skipped", "sample_tokens", "allreduce", "bucket_mb", "dist_timeout", "check_every",
)  # fmt: skip
_RANK_SWITCHES = ("resume", "overwrite", "reschedule", "force")


def rank_args(opts: TrainOptions, print_every: int = PRINT_EVERY) -> list[str]:
    """The `anekit train` arguments that give each rank `opts` (each option that is not its default)."""
    defaults = TrainOptions()
    args = ["train"]
    for name in _RANK_OPTIONS:
        value = getattr(opts, name)
        if value is not None and value != getattr(defaults, name):
            args += [flag(name), str(value)]
    args += [flag(name) for name in _RANK_SWITCHES if getattr(opts, name)]
    if print_every != PRINT_EVERY:
        args += ["--print-every", str(print_every)]
    return args


def _launch(opts: TrainOptions, nproc: int, max_restarts: int, print_every: int) -> None:
    """--nproc N: check the options here, then start N ranks through torchrun (`anekit.train.launch`)."""
    import os

    from ..train.launch import launch

    if nproc < 1 or nproc > 1024:
        raise fail(f"--nproc must be from 1 to 1024, got {nproc}")
    if max_restarts < 0:
        raise fail(f"--max-restarts must be >= 0, got {max_restarts}")
    if "WORLD_SIZE" in os.environ:
        raise fail(
            "--nproc starts the ranks itself, but this process already is one (WORLD_SIZE is set by "
            "torchrun): under torchrun, leave --nproc and --max-restarts out"
        )
    try:
        opts.validate()
        launch(nproc, rank_args(opts, print_every), max_restarts=max_restarts)
    except AnekitError as e:
        raise fail(str(e)) from None


def _rank_fail(e: BaseException, rank: int | None = None) -> typer.Exit:
    """`fail` for an error on one rank of a data-parallel run (named, unless it runs alone); a rank that
    stopped because rank 0 did stays quiet: rank 0 prints the reason."""
    import os

    from ..train.distributed import DistributedError

    if rank is None and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank = int(os.environ["RANK"]) if os.environ["RANK"].isdigit() else None
    if rank is None or os.environ.get("WORLD_SIZE") == "1":
        return fail(str(e))
    if rank != 0 and isinstance(e, DistributedError) and str(e).startswith("rank 0 stopped before"):
        return typer.Exit(1)
    return fail(f"rank {rank}: {e}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def header_lines(trainer) -> list[str]:
    """What a run will do and cost, printed before it starts."""
    cfg, opts = trainer.config, trainer.opts
    lines = [
        f"anekit train {cfg.name}: {cfg.n_params() / 1e6:.2f} M parameters, {cfg.n_layers} layers, "
        f"dim {cfg.dim}, heads {cfg.n_heads}/{cfg.n_kv_heads}, seq {cfg.seq_len}, vocab {cfg.vocab_size}"
    ]
    held = (
        f"{len(trainer.train_data):,} for training, the last {len(trainer.val_data):,} held out "
        "for validation"
        if trainer.val_data is not None
        else "all for training"
    )
    lines.append(
        f"data: {trainer.data.source} ({len(trainer.data):,} tokens: {held}); tokenizer: "
        f"{trainer.tokenizer.identity.split(':')[0]} ({trainer.tokenizer.vocab_size:,} ids)"
    )
    if trainer.backend == "reference":
        lines.append(
            f"backend: reference, numerics {opts.numerics} ({EMULATED}; timings are not the engine's)"
        )
    else:
        lines.append(f"backend: {trainer.backend}")
    lines.append(f"memory: {trainer.memory.describe()}")
    if trainer.world > 1:
        lines.append(
            f"data-parallel: {trainer.world} processes (gloo), each --batch {opts.batch} x --accum "
            f"{opts.accum}: "
            f"{trainer.world * opts.batch * opts.accum} sequences per step; gradients all-reduced in "
            f"{len(trainer.buckets.flat)} bucket(s) of <= {opts.bucket_mb:g} MB, {opts.allreduce} precision"
        )
    lines.append("time per step: " + _time_estimate(trainer))
    where = f"resuming at step {trainer.start_step} of {opts.steps}" if opts.resume else f"{opts.steps} steps"
    lines.append(f"run: {trainer.out} ({where}; checkpoint every {opts.save_every} steps)")
    lines += [f"note: {n}" for n in trainer.notes]
    return lines


def _time_estimate(trainer) -> str:
    opts = trainer.opts
    if trainer.backend != "ane":
        return f"measured on the first step ({EMULATED}; the cost model predicts the engine, not this)"
    try:
        from ..bench.environment import chip_name
        from ..perf import chip_id
        from ..train.budget import predict_engine_step_ms

        chip = chip_id(chip_name())
        ms = predict_engine_step_ms(trainer.config, opts.batch, opts.accum, chip)
    except (AnekitError, ValueError, KeyError) as e:
        return f"no prediction ({e}); measured on the first step"
    return (
        f"{ms:.0f} ms for the kernels on the {chip} engine (a cost-model prediction; the CPU work adds to "
        "it); measured on the first step"
    )


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_line(entry, total: int, eta_s: float, emulated: bool) -> str:
    """One plain progress line (output that is not a terminal): the step count and ETA first."""
    parts = [f"step {entry.step}/{total}", f"ETA {_duration(eta_s)}", f"loss {entry.loss:.3f}"]
    if entry.val_loss is not None:
        parts.append(f"val {entry.val_loss:.3f}")
    if entry.skipped:
        parts.append(f"(skipped: {entry.skip_reason})")
    parts.append(f"{entry.tokens_per_s:,.0f} tok/s")
    parts.append(f"{entry.ms_per_step:.0f} ms/step")
    if emulated:
        parts.append(f"({EMULATED})")
    return "  ".join(parts)


class _Details(ProgressColumn):
    """The step's figures: the one column a narrow terminal shortens (with an ellipsis), never wraps."""

    def __init__(self, template: str):
        # no_wrap=False on the table column marks it as the one rich may narrow (Table collapses
        # wrappable columns first); the Text itself stays on one line
        super().__init__(table_column=Column(no_wrap=False, overflow="ellipsis"))
        self.template = template

    def render(self, task) -> Text:
        return Text(self.template.format(task=task), no_wrap=True, overflow="ellipsis")


def make_progress(console: Console, emulated: bool) -> Progress:
    """The live progress display on a terminal; step count and ETA come first and are never shortened,
    so a narrow terminal (80 columns) cuts the details, not them."""
    fixed = Column(no_wrap=True)
    timing = "{task.fields[tps]} tok/s  {task.fields[ms]} ms/step"
    details = (
        "loss {task.fields[loss]}  {task.fields[val]}  " + ("CPU emulation: " if emulated else "") + timing
    )
    return Progress(
        MofNCompleteColumn(table_column=fixed),
        TextColumn("ETA", table_column=Column(no_wrap=True)),
        TimeRemainingColumn(table_column=Column(no_wrap=True)),
        BarColumn(bar_width=12),
        _Details(details),
        console=console,
    )


class ProgressReporter:
    """Reports each step: a live display on a terminal, plain lines every `every` steps otherwise.
    The first step's time is reported as the measured time per step, with the run's projection."""

    def __init__(self, console: Console, total: int, start: int, emulated: bool, every: int = PRINT_EVERY):
        self.console, self.total, self.start, self.emulated, self.every = (
            console,
            total,
            start,
            emulated,
            every,
        )
        self.live = console.is_terminal
        self.progress = make_progress(console, emulated) if self.live else None
        self.task = None
        self.t0 = time.perf_counter()
        self.val = ""

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=self.total, completed=self.start, loss="-", val="", tps="-", ms="-"
            )
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def eta(self, step: int) -> float:
        done = step - self.start
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self.t0) / done * (self.total - step)

    def on_step(self, entry) -> None:
        if entry.step == self.start + 1:
            first = entry.ms_per_step / 1e3
            label = f" ({EMULATED})" if self.emulated else ""
            self.console.print(
                f"first step: {first:.2f} s{label}; {self.total - self.start} steps ≈ "
                f"{_duration(first * (self.total - self.start))}",
                highlight=False,
                markup=False,
            )
        if entry.val_loss is not None:
            self.val = f"val {entry.val_loss:.3f}"
        if self.progress is not None:
            self.progress.update(
                self.task,
                completed=entry.step,
                loss=f"{entry.loss:.3f}" + (" (skipped)" if entry.skipped else ""),
                val=self.val,
                tps=f"{entry.tokens_per_s:,.0f}",
                ms=f"{entry.ms_per_step:.0f}",
            )
        elif entry.step % self.every == 0 or entry.step == self.total or entry.val_loss is not None:
            line = progress_line(entry, self.total, self.eta(entry.step), self.emulated)
            self.console.print(line, highlight=False, markup=False)


class _closing:
    def __init__(self, trainer):
        self.trainer = trainer

    def __enter__(self):
        return self.trainer

    def __exit__(self, *exc):
        self.trainer.close()


# ---------------------------------------------------------------------------------------------
# eval (and the checkpoint helpers `anekit generate` shares)


def checkpoint_dir(path: Path) -> Path:
    """A checkpoint directory, or a run directory holding one (runs/tiny -> runs/tiny/checkpoint)."""
    from ..train.checkpoint import STATE_FILE
    from ..train.loop import CHECKPOINT_DIR

    inner = path / CHECKPOINT_DIR
    if not (path / STATE_FILE).exists() and (inner / STATE_FILE).is_file():
        return inner
    return path


def _load(checkpoint: Path):
    from ..train.checkpoint import load_checkpoint

    try:
        return load_checkpoint(checkpoint, load_optimizer=False)
    except AnekitError as e:
        raise fail(str(e)) from None


def _tokenizer_for(checkpoint: Path, given: Path | None, train_state):
    """The run's own tokenizer (stored in the checkpoint). An explicit --tokenizer that differs
    overrides it with a warning: scoring or sampling with another vocabulary is allowed, on purpose."""
    from ..train.checkpoint import load_checkpoint_tokenizer
    from ..train.tokenizers import load_tokenizer

    try:
        stored = load_checkpoint_tokenizer(checkpoint)
        explicit = load_tokenizer(given) if given is not None else None
        if stored is None:  # saved without one: the bundled tokenizer unless told otherwise
            stored = explicit or load_tokenizer(None)
            if train_state.tokenizer is not None and stored.identity != train_state.tokenizer:
                err.print(
                    f"warning: the run was trained with tokenizer {train_state.tokenizer}, this is "
                    f"{stored.identity}; pass the run's tokenizer with --tokenizer"
                )
            return stored
    except (AnekitError, ValueError) as e:
        raise fail(str(e)) from None
    if explicit is not None and explicit.identity != stored.identity:
        err.print(
            f"warning: --tokenizer {given} is not the tokenizer this checkpoint was trained with "
            f"({stored.identity}); using --tokenizer as asked"
        )
        return explicit
    return stored


def _int_at_least(name: str, value: int, lo: int) -> None:
    if value < lo:
        raise fail(f"{name} must be at least {lo}, got {value}")


def evaluate(
    checkpoint: Path = typer.Argument(
        ..., help="A checkpoint directory (runs/tiny/checkpoint), or a run directory holding one (runs/tiny)."
    ),
    data: Path = typer.Option(
        None,
        help="Data to score, the whole file: .bin tokens or text (default: the held-out "
        f"{VAL_FRACTION:.0%} of the data the run trained on, the slice its validation loss was measured on).",
    ),
    tokenizer: Path = typer.Option(
        None,
        help="Tokenizer for text data (default: the checkpoint's own; another one is used with a warning).",
    ),
    batch: int = typer.Option(8, help="Sequences per batch."),
    max_batches: int = typer.Option(20, help="Batches to score (0: all)."),
    backend: str = typer.Option(D.backend, help="auto, ane or reference."),
    numerics: str = typer.Option(D.numerics, help=f"Reference backend numerics: {' or '.join(NUMERICS)}."),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object (loss, perplexity, tokens, data, ...) and nothing else."
    ),
) -> None:
    """Mean cross-entropy (and perplexity) of a checkpoint, in file order."""
    from ..backends import resolve
    from ..train.data import DataError, check_data_path, load_dataset, train_val_split
    from ..train.loop import dataset_loss
    from ..train.step import ModelRunner

    _int_at_least("--batch", batch, 1)
    _int_at_least("--max-batches", max_batches, 0)
    if numerics not in NUMERICS:
        raise fail(f"--numerics must be {' or '.join(NUMERICS)}, got {numerics!r}")
    checkpoint = checkpoint_dir(checkpoint)
    config, params, _, state = _load(checkpoint)
    tok = _tokenizer_for(checkpoint, tokenizer, state)
    try:
        if data is not None:
            check_data_path(data, "--data")
            ds = load_dataset(data, tok, vocab_size=config.vocab_size)
            split = "all"
        else:
            ds = _run_data(checkpoint, state, tok, config)
            _, ds = train_val_split(ds, config.seq_len)
            if ds is None:
                raise DataError(
                    "the run's data is too short to have held out a validation slice; pass --data to "
                    "score a file"
                )
            split = "validation"
        ds.check_length(config.seq_len)
        name = resolve(backend)
        options = {"numerics": numerics} if name == "reference" else {}
        runner = ModelRunner(config, batch, backend=name, **options)
    except (AnekitError, ValueError, OSError) as e:
        raise fail(str(e)) from None
    with runner:
        runner.set_params(params)
        mean, count = dataset_loss(runner, ds, batch, config.seq_len, max_batches or None)
    ppl = math.exp(mean) if mean < 700 else float("inf")
    if as_json:
        record = {
            "checkpoint": str(checkpoint),
            "step": state.step,
            "loss": mean,
            "perplexity": ppl if math.isfinite(ppl) else None,
            "tokens": count,
            "data": ds.source,
            "split": split,
            "backend": name,
            "numerics": numerics if name == "reference" else None,
        }
        typer.echo(json.dumps(record))
        return
    stdout_console().print(
        f"{checkpoint}: mean loss {mean:.4f} nats/token (perplexity {ppl:.2f}) over {count:,} tokens of "
        f"{ds.source} on {name}" + (f" ({EMULATED})" if name == "reference" else ""),
        highlight=False,
        markup=False,
    )


def _run_data(checkpoint: Path, state, tok, config):
    """The data the run was trained on, as recorded in the checkpoint, checked by fingerprint."""
    from ..train.data import DataError, data_differences, load_bundled, load_dataset

    recorded = state.data
    if not recorded:
        raise DataError(f"{checkpoint}: records no training data; pass --data")
    if recorded["kind"] == "bundled":
        ds = load_bundled(tok)
    else:
        path = Path(recorded["path"])
        if not path.is_file():
            raise DataError(f"{checkpoint}: the run's data {path} is gone; pass --data to score a file")
        ds = load_dataset(path, tok, vocab_size=config.vocab_size)
    diff = data_differences(recorded, ds.identity)
    if diff:
        raise DataError(
            f"{checkpoint}: the run's data {ds.source} is not what it trained on ({'; '.join(diff)}); the "
            "held-out slice is unknown, pass --data to score a file"
        )
    return ds
