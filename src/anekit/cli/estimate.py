"""`anekit estimate`: predict a MIL program's time on a chip's Neural Engine with the cost model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from .common import fail, load_program, print_json, stdout_console


def _mb(b: float) -> str:
    return f"{b / 2**20:.2f} MB"


def estimate(
    model: Path = typer.Argument(
        ...,
        help="A model directory (model.mil + weights/) or a model.mil file; with --decode: a model "
        "name (qwen3-0.6b, llama-3.2-1b or a preset), a Hugging Face model directory, or a model config "
        "file (.toml/.json); with --train: a preset (e.g. stories110m) or a model config file.",
    ),
    chip: str = typer.Option(
        "m4", "--chip", help="Chip id: m1, m1-pro, ..., m4, m4-pro, m4-max, m5, m5-max."
    ),
    top: int = typer.Option(8, "--top", min=0, help="Show this many most expensive ops."),
    as_json: bool = typer.Option(False, "--json", help="Print the estimate as JSON."),
    decode: bool = typer.Option(
        False, "--decode", help="Predict a language model's decode speed (tokens/s, dispatches/token)."
    ),
    weights: str = typer.Option("fp16", "--weights", help="With --decode: fp16, int8 or int4 weights."),
    max_len: int = typer.Option(
        512, "--max-len", min=1, help="With --decode: the KV cache length the programs attend over."
    ),
    train: bool = typer.Option(
        False,
        "--train",
        help="Count one training step (the share of its FLOPs in kernels) and predict its engine time, "
        "kernel by kernel.",
    ),
    batch: int = typer.Option(1, "--batch", min=1, help="With --train: sequences per step."),
    seq_len: int = typer.Option(
        0, "--seq-len", min=0, help="With --train: tokens per sequence (0: the model's)."
    ),
) -> None:
    """Predict one evaluation's time on the engine from the program's FLOPs, bytes and working set
    (a calibrated model, not a measurement: see docs/benchmarks.md). With --decode, predict a language
    model's decode speed on the engine instead (anekit.llm.predict); with --train, one training step
    (anekit.train.cost)."""
    from ..perf import UncalibratedChip, chip_id, count_ops, get_chip, predict

    try:
        cid = chip_id(chip)
    except ValueError as e:
        raise fail(str(e)) from None
    if decode and train:
        raise fail("choose one of --decode and --train")
    if decode:
        _decode(model, cid, weights, max_len, as_json)
        return
    if train:
        _train(model, cid, batch, seq_len or None, as_json)
        return
    program = load_program(model)
    try:
        est = predict(count_ops(program), cid)
    except UncalibratedChip as e:
        raise fail(str(e)) from None
    if as_json:
        print_json(est.to_json())
        return
    console = stdout_console()
    head = Table(
        title=escape(f"{model}: predicted on {get_chip(cid).name} (cost model, not a measurement)"),
        show_header=False,
        title_justify="left",
    )
    head.add_row("time per evaluation", f"{est.time_ms:.4f} ms")
    head.add_row("FLOPs", f"{est.flops / 1e9:.4g} GFLOP ({est.tflops:.3g} TFLOPS effective)")
    head.add_row("utilisation of peak", f"{100 * est.utilisation:.1f} %")
    head.add_row(
        "bytes moved",
        f"{_mb(est.bytes)} (inputs {_mb(est.input_bytes)}, outputs {_mb(est.output_bytes)}, "
        f"weights {_mb(est.weight_bytes)})",
    )
    head.add_row("largest op working set", _mb(est.working_set))
    head.add_row("ops", str(est.n_ops))
    console.print(head)
    bd = Table(title="breakdown (ms)", title_justify="left")
    for k in est.breakdown:
        bd.add_column(k, justify="right")
    bd.add_row(*(f"{v:.4f}" for v in est.breakdown.values()))
    console.print(bd)
    if top > 0 and est.ops:
        ops = Table(title=f"most expensive ops (of {len(est.ops)})", title_justify="left")
        for col in ("op", "type", "kind", "MFLOP", "ms", "working set"):
            ops.add_column(col)
        for o in sorted(est.ops, key=lambda o: -o.time_ms)[:top]:
            ops.add_row(
                escape(o.name),
                o.op_type,
                o.kind,
                f"{o.flops / 1e6:.3g}",
                f"{o.time_ms:.4f}",
                _mb(o.working_set),
            )
        console.print(ops)
    for note in est.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")


def _decode_config(model: Path):
    """The ModelConfig --decode predicts for: a benchmark shape or preset name, an HF model directory,
    or a model config file."""
    from ..llm.predict import SHAPES, shape
    from ..model.config import PRESETS, ModelConfig

    name = str(model)
    if (name in SHAPES or name in PRESETS) and not model.exists():
        return shape(name)
    if model.is_dir():
        from ..model.io import read_hf_config

        return read_hf_config(model)[0]
    if model.suffix in (".toml", ".json"):
        return ModelConfig.from_file(model)
    names = ", ".join(dict.fromkeys([*SHAPES, *PRESETS]))
    raise fail(
        f"{model}: not a model name ({names}), a Hugging Face model directory or a model config file "
        "(.toml/.json)"
    )


def _decode(model: Path, cid: str, weights: str, max_len: int, as_json: bool) -> None:
    from ..errors import AnekitError
    from ..llm.predict import PUBLISHED_DECODE, predict_decode
    from ..perf import get_chip

    try:
        config = _decode_config(model)
        pred = predict_decode(config, quant=weights, chip=cid, max_len=max_len)
    except AnekitError as e:
        raise fail(str(e)) from None
    published = PUBLISHED_DECODE.get(config.name, [])
    if as_json:
        print_json(pred.to_json() | {"published": published})
        return
    console = stdout_console()
    head = Table(
        title=escape(
            f"{config.name}: decode predicted on {get_chip(cid).name}, {weights} weights, cache {max_len} "
            "(cost model, not a measurement)"
        ),
        show_header=False,
        title_justify="left",
    )
    plan = pred.plan
    head.add_row("tokens/s", f"{pred.tokens_per_s:.1f}")
    head.add_row("time per token", f"{pred.ms_per_token:.3f} ms")
    head.add_row("dispatches per token", str(pred.dispatches))
    head.add_row("programs loaded", str(pred.programs))
    head.add_row("weights streamed per token", f"{pred.weight_bytes / 1e9:.3f} GB")
    head.add_row("KV cache read per token", f"{pred.cache_bytes / 1e6:.1f} MB")
    head.add_row(
        "plan",
        f"{plan.layers_per_program} layers/program, residual {plan.residual}, classifier chunks of "
        f"{plan.vocab_chunk}, prefill chunk {plan.prefill_chunk}",
    )
    console.print(head)
    bd = Table(title="breakdown (ms per token)", title_justify="left")
    for k in pred.breakdown:
        bd.add_column(k, justify="right")
    bd.add_row(*(f"{v:.3f}" for v in pred.breakdown.values()))
    console.print(bd)
    for p in published:
        console.print(
            f"published: {p['tok_s']} tok/s (weights {p['weights']}, chip {p['chip']}; {escape(p['source'])})"
        )
    for note in pred.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")


def _train_config(model: Path):
    """The ModelConfig --train counts: a preset name or a model config file."""
    from ..model.config import PRESETS, ModelConfig, preset

    name = str(model)
    if name in PRESETS and not model.exists():
        return preset(name)
    if model.suffix in (".toml", ".json") and model.is_file():
        return ModelConfig.from_file(model)
    raise fail(f"{model}: not a preset ({', '.join(PRESETS)}) or a model config file (.toml/.json)")


def _train(model: Path, cid: str, batch: int, seq_len: int | None, as_json: bool) -> None:
    from ..errors import AnekitError
    from ..train.cost import step_cost

    config = _train_config(model)
    try:
        cost = step_cost(config, batch, seq_len=seq_len, chip=cid)
    except (AnekitError, ValueError) as e:
        raise fail(str(e)) from None
    if as_json:
        print_json(cost.to_json())
        return
    console = stdout_console()
    table = Table(
        title=escape(
            f"{config.name}: one training step, batch {batch} x {cost.seq_len}, on {cid} "
            "(FLOPs counted; engine times are cost-model predictions, not measurements)"
        ),
        title_justify="left",
    )
    for col in ("kernel", "calls", "GFLOP/step", "share", "ms/call", "ms/step"):
        table.add_column(col, justify="left" if col == "kernel" else "right")
    total = cost.kernel_flops + cost.host_total
    for k in cost.kernels:
        table.add_row(
            escape(k.name),
            str(k.calls),
            f"{k.flops * k.calls / 1e9:.2f}",
            f"{100 * k.flops * k.calls / total:.1f} %",
            "-" if k.predicted_ms is None else f"{k.predicted_ms:.3f}",
            "-" if k.step_ms is None else f"{k.step_ms:.2f}",
        )
    for name, flops in cost.host_flops.items():
        table.add_row(
            escape(f"host: {name}"), "", f"{flops / 1e9:.3f}", f"{100 * flops / total:.2f} %", "", ""
        )
    console.print(table)
    engine = "-" if cost.engine_ms is None else f"{cost.engine_ms:.1f} ms predicted"
    console.print(
        f"in kernels: {100 * cost.share:.2f} % of {total / 1e9:.1f} GFLOP "
        f"(matmuls: {cost.kernel_matmul_flops / 1e9:.1f} GFLOP); {cost.dispatches} dispatches; engine time "
        f"per step: {engine}"
    )
    for p in cost.to_json()["published"]:
        eng = "" if p["engine_ms"] is None else f", engine part {p['engine_ms']:g} ms"
        console.print(
            f"published on {p['chip']}: {p['step_ms']:g} ms/step{eng} ({escape(p['what'])}; {p['source']})"
        )
    for note in cost.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
