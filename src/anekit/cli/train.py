"""`anekit train`, `anekit eval`, `anekit generate`: train Llama-family models and use the result."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .common import fail, stdout_console


def train(
    preset: str = typer.Option(
        "tiny", help="Model preset: tiny, stories15m, stories42m, stories110m, qwen3-0.6b."
    ),
    config: Path = typer.Option(
        None, help="A JSON/TOML model config instead of a preset (may name a base preset)."
    ),
    data: Path = typer.Option(
        None, help="Training data: llama2.c uint16 .bin tokens or a text file (default: bundled stories)."
    ),
    tokenizer: Path = typer.Option(
        None, help="tokenizer.json (Hugging Face) or llama2.c tokenizer.bin (default: bundled)."
    ),
    steps: int = typer.Option(400, help="Optimizer steps to train to (in total, when resuming)."),
    batch: int = typer.Option(8, help="Sequences per micro-batch."),
    accum: int = typer.Option(1, help="Micro-batches accumulated per optimizer step."),
    lr: float = typer.Option(3e-3, help="Peak learning rate (cosine decay to 0.1x after warm-up)."),
    warmup: int = typer.Option(20, help="Linear warm-up steps."),
    clip: float = typer.Option(1.0, help="Global gradient-norm clip (0: off)."),
    backend: str = typer.Option("auto", help="auto (ANE where reachable, else reference), ane or reference."),
    numerics: str = typer.Option(
        "ane", help="Reference backend numerics: ane (fp16 as on the engine) or exact."
    ),
    out: Path = typer.Option(Path("runs/tiny"), help="Run directory: checkpoint/, log.jsonl, loss.png."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from OUT/checkpoint exactly where it stopped."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh even if OUT holds a checkpoint."),
    seed: int = typer.Option(0, help="Seed for initialisation and data sampling."),
    save_every: int = typer.Option(100, help="Checkpoint every N steps (and at the end)."),
    sample_tokens: int = typer.Option(80, help="Tokens to generate as a sample at the end (0: none)."),
) -> None:
    """Train a transformer with forward and input-gradient kernels on the engine, the rest on the CPU.

    With no arguments: the `tiny` model on the bundled story corpus, on the ANE where available and on
    the NumPy reference backend elsewhere. Writes OUT/checkpoint (safetensors + JSON), OUT/log.jsonl
    (one line per step), OUT/loss.png, and prints a generated sample.
    """
    from ..backends import BackendUnavailable
    from ..train.checkpoint import CheckpointError
    from ..train.data import DataError
    from ..train.generate import generate_text
    from ..train.loop import LOG_FILE, PLOT_FILE, Trainer, TrainOptions, plot_losses

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
        out=out,
        resume=resume,
        overwrite=overwrite,
        seed=seed,
        save_every=save_every,
        sample_tokens=sample_tokens,
    )
    console = stdout_console()
    try:
        trainer = Trainer(opts)
    except (ValueError, DataError, CheckpointError, FileNotFoundError, BackendUnavailable) as e:
        raise fail(str(e)) from None
    cfg = trainer.config
    console.print(
        f"[bold]anekit train[/] {cfg.name}: {cfg.n_params() / 1e6:.2f} M parameters, {cfg.n_layers} layers, "
        f"dim {cfg.dim}, heads {cfg.n_heads}/{cfg.n_kv_heads}, seq {cfg.seq_len}, vocab {cfg.vocab_size}"
    )
    console.print(
        f"data: {trainer.data.source} ({len(trainer.data):,} tokens); backend: [bold]{trainer.backend}[/]"
        + (f" (numerics {numerics}, CPU emulation of the engine)" if trainer.backend == "reference" else "")
        + (f"; resuming at step {trainer.start_step}" if resume else "")
    )
    progress = Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[tps]} tok/s"),
        TextColumn("{task.fields[ms]} ms/step (engine {task.fields[eng]} + cpu {task.fields[cpu]})"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    with progress, _closing(trainer):
        task = progress.add_task(
            "train", total=steps, completed=trainer.start_step, loss="-", tps="-", ms="-", eng="-", cpu="-"
        )

        def on_step(e):
            progress.update(
                task,
                completed=e.step,
                loss=f"{e.loss:.3f}" + (" (skipped)" if e.skipped else ""),
                tps=f"{e.tokens_per_s:,.0f}",
                ms=f"{e.ms_per_step:.0f}",
                eng=f"{e.engine_ms:.0f}",
                cpu=f"{e.cpu_ms:.0f}",
            )

        result = trainer.run(on_step)
        png = plot_losses(out / LOG_FILE, out / PLOT_FILE, title=f"{cfg.name} on {trainer.backend}")
        sample = ""
        if sample_tokens > 0:
            sample = generate_text(trainer.params, cfg, trainer.tokenizer, "", sample_tokens, seed=seed)
    if result.first_loss is not None and result.final_loss is not None:
        console.print(
            f"loss {result.first_loss:.3f} -> {result.final_loss:.3f} (mean of the last 10 steps) "
            f"in {result.seconds:.0f} s"
        )
    console.print(f"checkpoint: {out / 'checkpoint'}   log: {out / LOG_FILE}   plot: {png}")
    if sample:
        console.print("[bold]sample:[/]")
        console.print(sample, highlight=False, markup=False)


class _closing:
    def __init__(self, trainer):
        self.trainer = trainer

    def __enter__(self):
        return self.trainer

    def __exit__(self, *exc):
        self.trainer.close()


def _load(checkpoint: Path):
    from ..train.checkpoint import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(checkpoint, load_optimizer=False)
    except CheckpointError as e:
        raise fail(str(e)) from None


def evaluate(
    checkpoint: Path = typer.Argument(..., help="A checkpoint directory (e.g. runs/tiny/checkpoint)."),
    data: Path = typer.Option(None, help="Data to score: .bin tokens or text (default: bundled stories)."),
    tokenizer: Path = typer.Option(None, help="Tokenizer for text data (default: bundled)."),
    batch: int = typer.Option(8, help="Sequences per batch."),
    max_batches: int = typer.Option(20, help="Batches to score (0: the whole file)."),
    backend: str = typer.Option("auto", help="auto, ane or reference."),
    numerics: str = typer.Option("ane", help="Reference backend numerics: ane or exact."),
) -> None:
    """Mean cross-entropy (and perplexity) of a checkpoint on a data file, in file order."""
    from ..backends import BackendUnavailable, resolve
    from ..train.data import DataError, load_dataset, sequential_batches
    from ..train.step import ModelRunner
    from ..train.tokenizers import load_tokenizer

    config, params, _, _ = _load(checkpoint)
    try:
        tok = load_tokenizer(tokenizer)
        ds = load_dataset(data, tok, vocab_size=config.vocab_size)
    except (ValueError, DataError) as e:
        raise fail(str(e)) from None
    try:
        name = resolve(backend)
        options = {"numerics": numerics} if name == "reference" else {}
        runner = ModelRunner(config, batch, backend=name, **options)
    except (ValueError, BackendUnavailable) as e:
        raise fail(str(e)) from None
    total, count = 0.0, 0
    with runner:
        runner.set_params(params)
        for tokens, targets in sequential_batches(ds, batch, config.seq_len, max_batches or None):
            if len(tokens) < batch:  # the kernels are compiled for one batch shape: pad the last
                pad = batch - len(tokens)
                tokens = _pad(tokens, pad)
                targets = _pad(targets, pad, fill=-1)
            n = int((targets >= 0).sum())
            total += runner.loss(tokens, targets) * n
            count += n
    mean = total / max(count, 1)
    stdout_console().print(
        f"{checkpoint}: mean loss {mean:.4f} nats/token (perplexity {math.exp(mean):.2f}) "
        f"over {count:,} tokens of {ds.source} on {name}"
    )


def _pad(a, n: int, fill: int = 0):
    import numpy as np

    return np.concatenate([a, np.full((n, a.shape[1]), fill, dtype=a.dtype)])


def generate(
    checkpoint: Path = typer.Argument(..., help="A checkpoint directory (e.g. runs/tiny/checkpoint)."),
    prompt: str = typer.Option("", help="Text to continue (default: start from BOS)."),
    max_tokens: int = typer.Option(
        120, help="Tokens to generate at most (stops at EOS or the context length)."
    ),
    temperature: float = typer.Option(0.8, help="Sampling temperature (0: greedy)."),
    top_k: int = typer.Option(40, help="Sample among the k most likely tokens (0: all)."),
    tokenizer: Path = typer.Option(None, help="Tokenizer (default: bundled)."),
    seed: int = typer.Option(0, help="Sampling seed."),
) -> None:
    """Generate text from a checkpoint with KV-cache decoding on the CPU."""
    from ..train.generate import generate_text
    from ..train.tokenizers import load_tokenizer

    config, params, _, _ = _load(checkpoint)
    try:
        tok = load_tokenizer(tokenizer)
        text = generate_text(
            params, config, tok, prompt, max_tokens, temperature=temperature, top_k=top_k, seed=seed
        )
    except ValueError as e:
        raise fail(str(e)) from None
    stdout_console().print(text, highlight=False, markup=False)
