"""The training loop and the train/eval/generate commands, end to end on the reference backend."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from anekit.cli import app
from anekit.train.loop import RunInterrupted, Trainer, TrainOptions, read_log

runner = CliRunner()


def options(tmp_path, config, **kw) -> TrainOptions:
    base = dict(
        config_file=config,
        steps=6,
        batch=2,
        backend="reference",
        out=tmp_path / "run",
        save_every=3,
        warmup=2,
        lr=3e-3,
    )
    base.update(kw)
    return TrainOptions(**base)


def run(opts: TrainOptions):
    trainer = Trainer(opts)
    try:
        return trainer, trainer.run()
    finally:
        trainer.close()


def test_resume_continues_exactly(tmp_path, micro_config):
    _, full = run(options(tmp_path / "a", micro_config))
    uninterrupted = [e.loss for e in read_log(tmp_path / "a" / "run" / "log.jsonl")]
    assert len(uninterrupted) == 6

    # Interrupted after step 4 (the checkpoint is at step 3), then resumed with the same options. (A
    # resume that raises --steps keeps the first run's LR schedule; see tests/train/test_run_safety.py.)
    def stop_at_4(entry):
        if entry.step == 4:
            raise KeyboardInterrupt

    interrupted = Trainer(options(tmp_path / "b", micro_config, steps=6))
    try:
        with pytest.raises(RunInterrupted, match="after step 4 of 6.*checkpoint.*step 3"):
            interrupted.run(stop_at_4)
    finally:
        interrupted.close()
    trainer, resumed = run(options(tmp_path / "b", micro_config, steps=6, resume=True))
    assert trainer.start_step == 3 and resumed.steps_done == 3
    both = [e.loss for e in read_log(tmp_path / "b" / "run" / "log.jsonl")]
    assert both == uninterrupted  # same floats: the reference backend is deterministic


def test_engine_optimizer_resumes_exactly_and_a_resume_keeps_it(tmp_path, micro_config):
    """--optimizer engine (AdamW's moments in the adamw_update kernel): the run trains, is recorded in
    the checkpoint, and a resume (here without the flag) continues it with the same optimizer and the
    same floats."""
    from anekit.train.engine_adamw import EngineAdamW
    from anekit.train.options import OptionError

    with pytest.raises(OptionError, match="--optimizer must be host or engine"):
        TrainOptions(optimizer="gpu").validate()
    _, full = run(options(tmp_path / "a", micro_config, optimizer="engine", numerics="ane"))
    uninterrupted = [e.loss for e in read_log(tmp_path / "a" / "run" / "log.jsonl")]
    assert not any(e.skipped for e in full.history)

    def stop_at_4(entry):
        if entry.step == 4:
            raise KeyboardInterrupt

    interrupted = Trainer(options(tmp_path / "b", micro_config, optimizer="engine", numerics="ane"))
    try:
        assert isinstance(interrupted.optimizer, EngineAdamW)
        with pytest.raises(RunInterrupted):
            interrupted.run(stop_at_4)
    finally:
        interrupted.close()
    trainer, _ = run(options(tmp_path / "b", micro_config, numerics="ane", resume=True))
    assert trainer.opts.optimizer == "engine" and isinstance(trainer.optimizer, EngineAdamW)
    assert any("optimizer kept from the checkpoint: engine" in n for n in trainer.notes)
    assert [e.loss for e in read_log(tmp_path / "b" / "run" / "log.jsonl")] == uninterrupted


def test_loss_decreases_in_a_short_run(tmp_path, micro_config):
    _, result = run(options(tmp_path, micro_config, steps=40, batch=4, save_every=100, lr=1e-2))
    losses = [e.loss for e in result.history]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5


def test_nonfinite_step_is_skipped_and_scale_backs_off(tmp_path, micro_config):
    # A loss scale of 2^40 overflows fp16 in the backward kernels: the step must be skipped, the
    # weights untouched and the scale halved (ane-private-api.md §6).
    trainer = Trainer(options(tmp_path, micro_config, steps=1, numerics="ane", loss_scale=2.0**40))
    try:
        before = {k: v.copy() for k, v in trainer.params.items()}
        entry = trainer.train_step(0)
        assert entry.skipped
        assert trainer.scaler.scale == 2.0**39
        for k, v in trainer.params.items():
            np.testing.assert_array_equal(v, before[k])
            assert np.isfinite(v).all()
    finally:
        trainer.close()


def test_train_eval_generate_commands(tmp_path, micro_config):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(micro_config),
            "--steps",
            "4",
            "--batch",
            "2",
            "--backend",
            "reference",
            "--out",
            str(out),
            "--sample-tokens",
            "12",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sample:" in result.output and "loss" in result.output and "tok/s" in result.output
    assert (out / "checkpoint" / "model.safetensors").is_file()
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (out / "log.jsonl").read_text().splitlines()
    assert len(lines) == 4
    entry = json.loads(lines[-1])
    assert {"loss", "tokens_per_s", "engine_ms", "cpu_ms", "lr", "loss_scale"} <= set(entry)

    result = runner.invoke(
        app, ["eval", str(out / "checkpoint"), "--backend", "reference", "--max-batches", "2", "--batch", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "mean loss" in result.output and "perplexity" in result.output

    result = runner.invoke(
        app,
        [
            "generate",
            str(out / "checkpoint"),
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "10",
            "--temperature",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Once upon a time")


def test_train_errors_are_actionable(tmp_path, micro_config):
    result = runner.invoke(app, ["train", "--preset", "nope", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "unknown preset 'nope'" in result.output
    result = runner.invoke(
        app, ["train", "--config", str(micro_config), "--resume", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 1 and "no checkpoint" in result.output
    short = tmp_path / "short.txt"
    short.write_text("too short")
    result = runner.invoke(
        app, ["train", "--config", str(micro_config), "--data", str(short), "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 1 and "tokens" in result.output
    result = runner.invoke(app, ["generate", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "no such checkpoint" in result.output


def test_an_existing_run_is_never_overwritten_silently(tmp_path, micro_config):
    args = [
        "train",
        "--config",
        str(micro_config),
        "--steps",
        "1",
        "--batch",
        "2",
        "--backend",
        "reference",
        "--out",
        str(tmp_path / "run"),
        "--sample-tokens",
        "0",
    ]
    assert runner.invoke(app, args).exit_code == 0
    before = (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes()
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "--resume" in result.output and "--overwrite" in result.output
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes() == before
    assert runner.invoke(app, [*args, "--overwrite", "--seed", "1"]).exit_code == 0
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes() != before


def test_gradient_accumulation_averages_micro_batches(tmp_path, micro_config):
    # With exact numerics, one step over 2 accumulated micro-batches logs the mean of their losses and
    # applies the mean of their gradients: replay the same batches through a plain runner to check.
    from anekit.train.optim import AdamW, clip_by_global_norm, cosine_lr
    from anekit.train.step import ModelRunner

    opts = options(tmp_path, micro_config, steps=1, accum=2, numerics="exact", clip=0.0)
    trainer = Trainer(opts)
    try:
        params0 = {k: v.copy() for k, v in trainer.params.items()}
        sampler_state = trainer.batches.state_dict()
        entry = trainer.train_step(0)
        trainer.batches.load_state_dict(sampler_state)
        batches = [next(trainer.batches) for _ in range(2)]
        with ModelRunner(trainer.config, opts.batch, backend="reference", numerics="exact") as plain:
            plain.set_params(params0)
            results = [plain.step(tok, tgt) for tok, tgt in batches]
        assert entry.loss == pytest.approx(np.mean([r.loss for r in results]), rel=1e-12)
        grads = {k: (results[0].grads[k] + results[1].grads[k]) / 2 for k in params0}
        clip_by_global_norm(grads, 0.0)
        expected = {k: v.copy() for k, v in params0.items()}
        AdamW(lr=opts.lr, weight_decay=opts.weight_decay).step(
            expected, grads, lr=cosine_lr(0, opts.lr, 1, opts.warmup)
        )
        for k in expected:
            np.testing.assert_allclose(trainer.params[k], expected[k], rtol=1e-5, atol=1e-7)
    finally:
        trainer.close()


@pytest.mark.skipif(
    __import__("sys").platform == "darwin", reason="off macOS only: the engine is unavailable here"
)
def test_asking_for_the_engine_off_a_mac_is_a_clear_error(tmp_path, micro_config):
    result = runner.invoke(
        app, ["train", "--config", str(micro_config), "--backend", "ane", "--out", str(tmp_path / "r")]
    )
    assert (
        result.exit_code == 1
        and "ane backend is unavailable" in result.output
        and "Traceback" not in result.output
    )
