"""A run is never lost or poisoned: option checks before any write, skipped non-finite updates,
checkpoints that keep the one before, validated and checksummed state, refusal to start over a run,
Ctrl-C with a resume command, data fingerprints, the tokenizer inside the checkpoint, the held-out
slice, the memory estimate and the LR schedule on resume (issue 8, §1)."""

from __future__ import annotations

import errno
import json
import math
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from anekit.errors import AnekitError
from anekit.model.config import ModelConfig
from anekit.train import checkpoint as ckpt_mod
from anekit.train.checkpoint import (
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    CheckpointWriteError,
    TrainState,
    load_checkpoint,
    load_checkpoint_tokenizer,
    save_checkpoint,
)
from anekit.train.data import DataError, TokenDataset, train_val_split
from anekit.train.loop import (
    OptionError,
    RunInterrupted,
    Trainer,
    TrainingStalled,
    TrainOptions,
    read_log,
)
from anekit.train.optim import AdamW
from micro_model import MICRO


def options(tmp_path, config, **kw) -> TrainOptions:
    base = dict(
        config_file=config,
        steps=4,
        batch=2,
        backend="reference",
        out=tmp_path / "run",
        save_every=2,
        warmup=1,
        eval_every=2,
        eval_batches=1,
    )
    return TrainOptions(**(base | kw))


def run(opts: TrainOptions, on_step=None):
    trainer = Trainer(opts)
    try:
        return trainer, trainer.run(on_step)
    finally:
        trainer.close()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# 1. every option is checked before any work or write


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("lr", float("nan"), "--lr must be a finite number > 0 and <= 1, got nan"),
        ("lr", float("inf"), "--lr must be a finite number"),
        ("lr", 1e6, "--lr must be a finite number > 0 and <= 1, got 1000000.0"),
        ("lr", 0.0, "--lr must be"),
        ("lr", -1e-3, "--lr must be"),
        ("warmup", -1, "--warmup must be an integer from 0"),
        ("clip", float("nan"), "--clip must be a finite number"),
        ("clip", -1.0, "--clip must be"),
        ("steps", 0, "--steps must be an integer from 1"),
        ("batch", 0, "--batch must be an integer from 1"),
        ("accum", 0, "--accum must be"),
        ("save_every", 0, "--save-every must be an integer from 1"),
        ("eval_every", -1, "--eval-every must be"),
        ("eval_batches", 0, "--eval-batches must be"),
        ("seed", -1, "--seed must be an integer from 0"),
        ("sample_tokens", -1, "--sample-tokens must be"),
        ("max_skipped", 0, "--max-skipped must be"),
        ("loss_scale", float("nan"), "--loss-scale must be a finite number"),
        ("loss_scale", 0.5, "--loss-scale must be"),
        ("weight_decay", float("inf"), "weight_decay must be a finite number"),
        ("min_lr_ratio", 2.0, "min_lr_ratio must be"),
        ("numerics", "fast", "--numerics must be ane or exact"),
        ("steps", 2.5, "--steps must be an integer"),
        ("lr", 10**400, "--lr must be a finite number"),  # beyond float range: no OverflowError
    ],
)
def test_every_option_is_checked_before_anything_is_written(tmp_path, micro_config, field, value, message):
    opts = options(tmp_path, micro_config, **{field: value})
    with pytest.raises(OptionError) as info:
        Trainer(opts)
    assert message in str(info.value)
    assert isinstance(info.value, AnekitError)
    assert not (tmp_path / "run").exists()


def test_a_bad_option_on_resume_leaves_the_run_untouched(tmp_path, micro_config):
    run(options(tmp_path, micro_config, steps=2))
    before = snapshot(tmp_path / "run")
    for bad in (float("nan"), float("inf"), 1e6):
        with pytest.raises(OptionError, match="--lr must be a finite number"):
            Trainer(options(tmp_path, micro_config, steps=4, resume=True, lr=bad))
    assert snapshot(tmp_path / "run") == before
    _, params, _, _ = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert all(np.isfinite(v).all() for v in params.values())


def test_exclusive_options_are_refused(tmp_path, micro_config):
    with pytest.raises(OptionError, match="--resume and --overwrite"):
        Trainer(options(tmp_path, micro_config, resume=True, overwrite=True))
    with pytest.raises(OptionError, match="--reschedule only applies with --resume"):
        Trainer(options(tmp_path, micro_config, reschedule=True))
    with pytest.raises(OptionError, match="--preset or --config"):
        Trainer(options(tmp_path, micro_config, preset="tiny"))


# ------------------------------------------------------------------------------------------------
# 2. non-finite updates are not applied; checkpoints hold finite weights only; K skips stop the run


def test_an_update_that_would_overflow_is_not_applied():
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((4, 3)).astype(np.float32), "g": np.ones(4, np.float32)}
    opt = AdamW(lr=1e-2)
    assert opt.step(params, {k: np.ones_like(v) for k, v in params.items()}) == []
    before = {k: v.copy() for k, v in params.items()}
    m, v, t = {k: a.copy() for k, a in opt.m.items()}, {k: a.copy() for k, a in opt.v.items()}, opt.t
    # g**2 = 1e50 overflows the float32 second moment: the update must be refused as a whole,
    # including for "w", whose own update is finite
    grads = {"w": np.ones((4, 3)), "g": np.full(4, 1e25)}
    assert opt.step(params, grads) == ["g"]
    assert opt.t == t
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
        np.testing.assert_array_equal(opt.m[k], m[k])
        np.testing.assert_array_equal(opt.v[k], v[k])


def test_skipped_updates_stop_the_run_naming_the_last_good_checkpoint(tmp_path, micro_config):
    # Exact numerics keep gradients in float64; scaled by 1e25 they are finite (so is their norm with
    # clipping off) but their square overflows AdamW's float32 moments: "non-finite update".
    opts = options(tmp_path, micro_config, numerics="exact", clip=0.0, steps=20, max_skipped=3, eval_every=0)
    trainer = Trainer(opts)
    real_step = trainer.runner.step

    def poisoned(tokens, targets, loss_scale=1.0, **kw):
        res = real_step(tokens, targets, loss_scale=loss_scale, **kw)
        if trainer.step >= 2:
            for g in res.grads.values():
                g *= 1e25
            if res.grad_sq is not None:  # as the step would report such gradients (the loop's norm)
                res.grad_sq *= 1e50
        return res

    trainer.runner.step = poisoned
    try:
        with pytest.raises(TrainingStalled) as info:
            trainer.run()
        after_two = {k: v.copy() for k, v in trainer.params.items()}
    finally:
        trainer.close()
    message = str(info.value)
    assert "3 steps in a row were skipped" in message and "non-finite update" in message
    # the save at step 4 came after two skipped steps: it holds the (finite) weights of step 2
    assert f"{tmp_path / 'run' / 'checkpoint'} (step 4)" in message
    log = read_log(tmp_path / "run" / "log.jsonl")
    assert [e.skipped for e in log] == [False, False, True, True, True]
    assert {e.skip_reason for e in log[2:]} == {"non-finite update"}
    _, saved, _, state = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert state.step == 4
    for k in saved:  # the weights stayed those of step 2, finite
        np.testing.assert_array_equal(saved[k], after_two[k])
        assert np.isfinite(saved[k]).all()


def test_the_cli_exits_non_zero_when_the_run_stalls(tmp_path, micro_config, monkeypatch):
    from anekit.cli import app

    monkeypatch.setattr(AdamW, "step", lambda self, params, grads, lr=None, **kw: ["embed"])
    result = CliRunner().invoke(
        app,
        ["train", "--config", str(micro_config), "--batch", "2", "--steps", "9", "--max-skipped", "4"]
        + ["--backend", "reference", "--out", str(tmp_path / "run"), "--sample-tokens", "0"],
    )
    assert result.exit_code == 1, result.output
    assert "4 steps in a row were skipped" in result.output and "no checkpoint was saved" in result.output
    assert "Traceback" not in result.output


def test_non_finite_weights_are_never_saved_nor_loaded(tmp_path):
    cfg = ModelConfig(
        "t", dim=16, hidden_dim=32, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=20, seq_len=8
    )
    params = {k: np.ones(s, np.float32) for k, s in cfg.param_shapes().items()}
    path = save_checkpoint(tmp_path / "ck", cfg, params)
    before = snapshot(tmp_path)
    bad = dict(params, **{"layers.0.w1": np.full((32, 16), np.nan, np.float32)})
    with pytest.raises(CheckpointError, match="layers.0.w1 hold NaN or infinite values"):
        save_checkpoint(path, cfg, bad)
    assert snapshot(tmp_path) == before

    # weights made non-finite behind the checkpoint's back, their checksum re-recorded: still refused
    from safetensors.numpy import save_file

    save_file({k: v.astype(np.float32) for k, v in bad.items()}, str(path / MODEL_FILE))
    state = json.loads((path / STATE_FILE).read_text())
    state["files"][MODEL_FILE] = ckpt_mod._file_entry(path / MODEL_FILE)
    (path / STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="layers.0.w1 hold NaN"):
        load_checkpoint(path)


def test_a_run_keeps_the_checkpoint_before_the_last(tmp_path, micro_config):
    run(options(tmp_path, micro_config, steps=6, save_every=2))
    ckpt = tmp_path / "run" / "checkpoint"
    assert load_checkpoint(ckpt)[3].step == 6
    assert load_checkpoint(tmp_path / "run" / "checkpoint.prev")[3].step == 4


# ------------------------------------------------------------------------------------------------
# 3. state.json: schema and checksums


def _mutate(state, mutation):
    kind, key, value = mutation
    target = state
    *parents, last = key.split(".")
    for p in parents:
        target = target[p]
    if kind == "del":
        del target[last]
    else:
        target[last] = value
    return state


@pytest.mark.parametrize(
    "mutation, message",
    [
        (("set", "step", "3"), "field 'step' must be an integer >= 0, got '3'"),
        (("set", "step", -1), "field 'step' must be an integer >= 0, got -1"),
        (("set", "step", True), "field 'step' must be an integer"),
        (("del", "step", None), "field 'step' is missing"),
        (("del", "files", None), "field 'files' is missing"),
        (("set", "files", []), "field 'files' must be a JSON object"),
        (("set", "sampler.batch_size", "2"), "field 'sampler.batch_size' must be an integer >= 1"),
        (("set", "sampler.rng.state.inc", -5), "field 'sampler.rng.state.inc' must be an integer"),
        (("del", "sampler.rng", None), "field 'sampler.rng' is missing"),
        (("set", "loss_scaler.scale", float("nan")), "field 'loss_scaler.scale' must be a finite number > 0"),
        (("set", "optimizer.lr", 1e6), "field 'optimizer.lr' must be a finite number > 0 and <= 1"),
        (("set", "optimizer.betas", [0.9]), "field 'optimizer.betas' must be a list of two numbers"),
        (("set", "data.sha256", "abc"), "field 'data.sha256' must match"),
        (("set", "schedule.total_steps", 0), "field 'schedule.total_steps' must be an integer >= 1"),
        (("set", "tokenizer_file.bos_id", 999999), "field 'tokenizer_file.bos_id' 999999 is outside"),
        (("set", "extra", None), "field 'extra' must be a JSON object"),
        (("set", "surprise", 1), "field 'surprise' is not a known field"),
        (("set", "config", "tiny"), "field 'config' must be a JSON object"),
        (("set", "config.dim", "64"), "bad model config"),
        (("set", "files.model.safetensors", None), "is not a checkpoint file"),
    ],
)
def test_damaged_state_json_names_the_field(tmp_path, micro_config, mutation, message):
    run(options(tmp_path, micro_config, steps=2))
    path = tmp_path / "run" / "checkpoint" / STATE_FILE
    state = json.loads(path.read_text())
    if mutation[1] == "files.model.safetensors":
        state["files"]["weights.bin"] = state["files"].pop(MODEL_FILE)
    else:
        _mutate(state, mutation)
    path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path.parent)
    assert message in str(info.value) and str(path) in str(info.value)
    with pytest.raises(CheckpointError):  # and resuming says the same, before touching anything
        Trainer(options(tmp_path, micro_config, steps=4, resume=True))


@pytest.mark.parametrize(
    "text, message",
    [
        ("[]", "must hold a JSON object, holds a JSON array"),
        ("null", "must hold a JSON object, holds null"),
        ('"x"', "must hold a JSON object, holds a str"),
        ("{", "cannot read"),
        ("\udcff", "cannot read"),
    ],
)
def test_state_json_that_is_not_an_object_is_a_checkpoint_error(tmp_path, micro_config, text, message):
    run(options(tmp_path, micro_config, steps=2))
    path = tmp_path / "run" / "checkpoint" / STATE_FILE
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path.parent)


def test_damaged_files_fail_their_checksum_and_point_at_the_previous_checkpoint(tmp_path, micro_config):
    run(options(tmp_path, micro_config, steps=4, save_every=2))
    model = tmp_path / "run" / "checkpoint" / MODEL_FILE
    data = bytearray(model.read_bytes())
    data[-1] ^= 1  # one flipped bit in the last weight: safetensors itself would read it happily
    model.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors: checksum mismatch.*checkpoint.prev"):
        load_checkpoint(model.parent)
    (model.parent / "optimizer.safetensors").unlink()
    model.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 1]))  # weights restored, optimizer gone
    with pytest.raises(CheckpointError, match="optimizer.safetensors: missing"):
        load_checkpoint(model.parent)
    assert load_checkpoint(model.parent, load_optimizer=False)[3].step == 4


def test_a_checkpoint_without_state_json_is_an_error(tmp_path, micro_config):
    run(options(tmp_path, micro_config, steps=2))
    (tmp_path / "run" / "checkpoint" / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match="not an anekit checkpoint directory .no state.json."):
        load_checkpoint(tmp_path / "run" / "checkpoint")
    with pytest.raises(CheckpointError, match="no state.json"):
        Trainer(options(tmp_path, micro_config, resume=True))


# ------------------------------------------------------------------------------------------------
# 4. an existing run is never replaced silently; save errors are clear and keep the previous checkpoint


@pytest.mark.parametrize("existing", ["log.jsonl", "checkpoint", "checkpoint.prev", "loss.png"])
def test_a_fresh_run_into_an_existing_run_is_refused_before_anything_is_touched(
    tmp_path, micro_config, existing
):
    out = tmp_path / "run"
    out.mkdir()
    thing = out / existing
    if existing.startswith("checkpoint"):
        thing.mkdir()
        (thing / "weights.bin").write_bytes(b"precious")  # no state.json: not a checkpoint
    else:
        thing.write_text("precious")
    before = snapshot(out)
    with pytest.raises(OptionError, match=rf"already holds a run \({existing}\).*--resume.*--overwrite"):
        Trainer(options(tmp_path, micro_config))
    assert snapshot(out) == before
    if existing.startswith("checkpoint"):  # --overwrite does not delete what is not a checkpoint either
        with pytest.raises(OptionError, match="is not an anekit checkpoint; refusing to replace it"):
            Trainer(options(tmp_path, micro_config, overwrite=True))
        assert snapshot(out) == before


def test_overwrite_replaces_the_old_run_only_when_the_new_one_first_saves(tmp_path, micro_config):
    out = tmp_path / "run"
    run(options(tmp_path, micro_config, steps=4, save_every=2))
    old = snapshot(out)
    old_log = (out / "log.jsonl").read_text()
    seen = []

    def check(entry):
        if entry.step < 3:  # before the new run's first save (step 3): the old run is all there
            seen.append(entry.step)
            assert snapshot(out) | {".log.jsonl.new": b""} == old | {".log.jsonl.new": b""}
            assert (out / "log.jsonl").read_text() == old_log

    trainer, _ = run(options(tmp_path, micro_config, steps=5, save_every=3, overwrite=True, seed=1), check)
    assert seen == [1, 2]
    log = read_log(out / "log.jsonl")
    assert [e.step for e in log] == [1, 2, 3, 4, 5] and {e.run for e in log} == {trainer.run_id}
    assert not (out / ".log.jsonl.new").exists()
    assert load_checkpoint(out / "checkpoint")[3].step == 5
    assert load_checkpoint(out / "checkpoint.prev")[3].extra["run_id"] == trainer.run_id  # not the old run's


def test_an_overwrite_interrupted_before_its_first_save_leaves_the_old_run_as_it_was(tmp_path, micro_config):
    out = tmp_path / "run"
    run(options(tmp_path, micro_config, steps=2))
    old = snapshot(out)

    def stop(entry):
        raise KeyboardInterrupt

    with pytest.raises(RunInterrupted, match="no checkpoint was saved"):
        run(options(tmp_path, micro_config, steps=5, save_every=3, overwrite=True), stop)
    assert snapshot(out) == old


def _fail_on_second_save(monkeypatch, error):
    calls = []
    real = ckpt_mod._write_json

    def write_json(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise error
        real(path, data)

    monkeypatch.setattr(ckpt_mod, "_write_json", write_json)


@pytest.mark.parametrize(
    "error, message",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
    ],
)
def test_an_io_error_at_save_is_clear_and_keeps_the_previous_checkpoint(
    tmp_path, micro_config, monkeypatch, error, message
):
    _fail_on_second_save(monkeypatch, error)
    with pytest.raises(CheckpointWriteError) as info:
        run(options(tmp_path, micro_config, steps=6, save_every=2))
    text = str(info.value)
    assert message in text and "previous checkpoint" in text and "stopped at step 4" in text
    assert "resume with: anekit train --resume" in text
    assert isinstance(info.value, AnekitError)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run" / "checkpoint")[3].step == 2
    leftovers = [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".checkpoint.tmp")]
    assert leftovers == []


def test_a_safetensors_error_never_escapes(tmp_path, micro_config, monkeypatch):
    from safetensors import SafetensorError

    cfg = ModelConfig(
        "t", dim=16, hidden_dim=32, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=20, seq_len=8
    )
    params = {k: np.ones(s, np.float32) for k, s in cfg.param_shapes().items()}
    save_checkpoint(tmp_path / "ck", cfg, params, None, TrainState(step=1))

    def full_disk(*a, **k):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
                              'space left on device" })')  # fmt: skip

    monkeypatch.setattr("safetensors.numpy.save_file", full_disk)
    with pytest.raises(
        CheckpointWriteError, match="No space left on device.*previous checkpoint .*ck is intact"
    ):
        save_checkpoint(tmp_path / "ck", cfg, params, None, TrainState(step=2))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "ck")[3].step == 1


# ------------------------------------------------------------------------------------------------
# 5. Ctrl-C says where the run stopped and how to resume


def test_ctrl_c_names_the_step_the_checkpoint_and_a_resume_command_that_works(tmp_path, micro_config):
    from anekit.cli import app

    def stop_at_3(entry):
        if entry.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted) as info:
        run(options(tmp_path, micro_config, steps=6, save_every=2, accum=2), stop_at_3)
    message = str(info.value)
    ckpt = tmp_path / "run" / "checkpoint"
    assert "interrupted after step 3 of 6" in message and f"{ckpt} (step 2)" in message
    command = message.split("resume with: ")[1]
    argv = shlex.split(command)
    assert argv[:3] == ["anekit", "train", "--resume"] and "--accum" in argv and "--config" in argv
    result = CliRunner().invoke(app, argv[1:] + ["--sample-tokens", "0"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(ckpt)[3].step == 6
    assert [e.step for e in read_log(tmp_path / "run" / "log.jsonl")] == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------------------------------------
# 6. resume checks the data by content


def test_resume_refuses_token_data_of_the_same_size_but_other_content(tmp_path, micro_config):
    tokens = np.random.default_rng(0).integers(3, 500, 4000).astype("<u2")
    data = tmp_path / "tokens.bin"
    tokens.tofile(data)
    run(options(tmp_path, micro_config, steps=2, data=data))
    tokens[100] ^= 1  # same size, one token different
    tokens.tofile(data)
    before = snapshot(tmp_path / "run")
    with pytest.raises(
        CheckpointError, match=r"not what .* was trained on \(sha256: .*Resume with the same data"
    ):
        Trainer(options(tmp_path, micro_config, steps=4, data=data, resume=True))
    assert snapshot(tmp_path / "run") == before


def test_resume_refuses_other_text_and_accepts_the_same_text_moved(tmp_path, micro_config):
    from anekit.train.corpus import data_path

    text = data_path("stories.txt").read_text(encoding="utf-8")[:60_000]
    a = tmp_path / "a.txt"
    a.write_text(text)
    run(options(tmp_path, micro_config, steps=2, data=a))
    moved = tmp_path / "moved.txt"
    moved.write_text(text)
    trainer = Trainer(options(tmp_path, micro_config, steps=4, data=moved, resume=True))  # same content
    trainer.close()
    with pytest.raises(CheckpointError, match=rf"sha256.*it was --data {a}\)"):
        Trainer(options(tmp_path, micro_config, steps=4, resume=True))  # the bundled stories instead


# ------------------------------------------------------------------------------------------------
# 7. the checkpoint carries its tokenizer; vocabulary sizes must match


@pytest.fixture
def swapped_tokenizer(tmp_path):
    """The bundled tokenizer with the ids of two common pieces swapped: same size, other encoding."""
    from anekit.train.corpus import data_path

    spec = json.loads(data_path("tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    vocab["e"], vocab["Ġt"] = vocab["Ġt"], vocab["e"]
    path = tmp_path / "swapped" / "tokenizer.json"
    path.parent.mkdir()
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def test_the_checkpoint_carries_its_tokenizer_and_resume_uses_it(tmp_path, micro_config, swapped_tokenizer):
    from anekit.train.tokenizers import load_tokenizer

    run(options(tmp_path, micro_config, steps=2, tokenizer=swapped_tokenizer))
    ckpt = tmp_path / "run" / "checkpoint"
    assert (ckpt / "tokenizer.json").read_bytes() == swapped_tokenizer.read_bytes()
    stored = load_checkpoint_tokenizer(ckpt)
    given = load_tokenizer(swapped_tokenizer)
    assert stored.identity == given.identity
    assert stored.encode("the tree") == given.encode("the tree") != load_tokenizer(None).encode("the tree")

    swapped_tokenizer.unlink()  # resume needs only the checkpoint's copy
    trainer = Trainer(options(tmp_path, micro_config, steps=4, resume=True))
    try:
        assert trainer.tokenizer.identity == given.identity
    finally:
        trainer.close()
    from anekit.train.corpus import data_path

    with pytest.raises(OptionError, match="is not the tokenizer this run was trained with"):
        Trainer(options(tmp_path, micro_config, steps=4, resume=True, tokenizer=data_path("tokenizer.json")))


@pytest.mark.parametrize("name", ["stories15m", "stories110m"])
def test_a_preset_whose_vocabulary_does_not_match_the_tokenizer_is_refused_before_any_work(
    tmp_path, monkeypatch, name
):
    import anekit.train.data as data_mod

    monkeypatch.setattr(data_mod, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(OptionError) as info:
        Trainer(TrainOptions(preset=name, out=tmp_path / "run", backend="reference"))
    message = str(info.value)
    assert "vocab_size 32,000 but the bundled tokenizer has 512 ids" in message
    assert "anekit train-tokenizer TEXT --vocab-size 32000 --out tokenizer.json" in message
    assert "--tokenizer" in message
    assert not (tmp_path / "run").exists()


def test_a_tokenizer_larger_than_the_model_is_refused(tmp_path):
    cfg = tmp_path / "small.json"
    cfg.write_text(json.dumps(MICRO | {"vocab_size": 300}))
    with pytest.raises(OptionError, match="ids up to 511 do not fit the model's embedding"):
        Trainer(TrainOptions(config_file=cfg, out=tmp_path / "run", backend="reference"))


# ------------------------------------------------------------------------------------------------
# 8. --out default and the held-out slice


def test_out_defaults_to_runs_and_the_model_name(tmp_path, micro_config):
    assert TrainOptions().run_dir() == Path("runs/tiny")
    assert TrainOptions(preset="stories15m").run_dir() == Path("runs/stories15m")
    opts = TrainOptions(config_file=micro_config)
    assert opts.run_dir(opts.model_config()) == Path("runs/micro")


def test_validation_is_the_held_out_tail_never_sampled_for_training(tmp_path, micro_config):
    ds = TokenDataset(np.arange(1000, dtype=np.uint16), "x")
    train, val = train_val_split(ds, seq_len=32)
    assert len(val) == 50 and val.tokens[0] == 950 and len(train) == 950
    assert train_val_split(ds, seq_len=64)[1] is None  # a 50-token tail cannot hold a 65-token window

    trainer = Trainer(options(tmp_path, micro_config))
    try:
        cut = len(trainer.data) - len(trainer.val_data)
        assert trainer.batches.tokens is trainer.train_data.tokens and len(trainer.train_data) == cut
        assert np.array_equal(trainer.val_data.tokens, trainer.data.tokens[cut:])
        assert np.shares_memory(trainer.batches.tokens, trainer.data.tokens[:cut])  # windows come from [:cut]
    finally:
        trainer.close()


def test_the_validation_loss_is_logged_and_matches_a_float64_reference(tmp_path, micro_config):
    from anekit.model.reference import forward

    trainer, result = run(
        options(tmp_path, micro_config, steps=4, eval_every=2, eval_batches=1, numerics="exact")
    )
    log = read_log(tmp_path / "run" / "log.jsonl")
    assert [e.val_loss is not None for e in log] == [False, True, False, True]
    assert result.val_loss == log[-1].val_loss
    # the oracle: the float64 NumPy reference model on the first batch of the held-out slice
    S, B = trainer.config.seq_len, 2
    val = np.asarray(trainer.val_data.tokens, dtype=np.int64)
    windows = np.stack([val[i * S : i * S + S + 1] for i in range(B)])
    logits = forward(trainer.params, trainer.config, windows[:, :-1])
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    expected = -np.mean(np.take_along_axis(logp, windows[:, 1:, None], -1))
    assert log[-1].val_loss == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------------------------------
# 9. memory: estimated, and a run that cannot fit is refused with the figures


def test_a_run_that_cannot_fit_in_memory_is_refused_with_the_figures(tmp_path, micro_config, monkeypatch):
    from anekit.train import budget

    monkeypatch.setattr(budget, "physical_memory", lambda: 200 << 20)
    with pytest.raises(OptionError) as info:
        Trainer(options(tmp_path, micro_config))
    message = str(info.value)
    assert "not enough memory" in message and "of 200 MB on this machine" in message
    assert "runtime 340 MB" in message and "--force" in message and "--batch" in message
    assert not (tmp_path / "run").exists()
    trainer = Trainer(options(tmp_path, micro_config, force=True))
    trainer.close()


def test_the_memory_estimate_counts_what_a_trainer_holds(tmp_path, micro_config):
    from anekit.train.budget import estimate_memory
    from anekit.train.optim import SCRATCH_BYTES

    trainer, _ = run(options(tmp_path, micro_config, steps=1, eval_every=0))
    est = estimate_memory(trainer.config, 2, reference=True).parts
    held = sum(a.nbytes for a in trainer.params.values()) + sum(
        a.nbytes for a in trainer.runner.params.values()
    )
    assert est["weights"] == held
    moments = sum(a.nbytes for a in trainer.optimizer.m.values()) + sum(
        a.nbytes for a in trainer.optimizer.v.values()
    )
    scratch = trainer.optimizer.threads * SCRATCH_BYTES  # the fused pass's blocks
    assert est["AdamW state"] == moments + scratch
    # every layer binding's input, counted by the runner in the engine's fp16; the reference backend
    # holds each as float32
    buffers = trainer.runner.input_bytes * 2
    assert 0.8 * buffers <= est["kernel buffers"] <= 1.5 * buffers


# ------------------------------------------------------------------------------------------------
# 11. --steps on resume keeps the schedule unless --reschedule


def _expected_lr(step, peak, total, warmup, ratio=0.1):
    """The cosine schedule written out independently of anekit.train.optim.cosine_lr."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / (total - warmup))
    return ratio * peak + (peak - ratio * peak) * (1 + math.cos(math.pi * t)) / 2


def test_more_steps_on_resume_keep_the_original_schedule_unless_rescheduled(tmp_path, micro_config):
    run(options(tmp_path, micro_config, steps=6, save_every=3, lr=2e-3, warmup=1))
    # roll back to the step-3 checkpoint so both resumes start from it
    for name in ("checkpoint", "checkpoint.prev"):
        os.replace(tmp_path / "run" / name, tmp_path / f"saved-{name}")
    os.replace(tmp_path / "saved-checkpoint.prev", tmp_path / "run" / "checkpoint")

    trainer, _ = run(options(tmp_path, micro_config, steps=8, save_every=3, resume=True))
    log = read_log(tmp_path / "run" / "log.jsonl")
    assert any("kept from the checkpoint" in n and "--steps 8" in n for n in trainer.notes)
    for e in log[3:]:
        assert e.lr == pytest.approx(_expected_lr(e.step - 1, 2e-3, 6, 1))

    os.replace(tmp_path / "run", tmp_path / "first-resume")
    (tmp_path / "run").mkdir()
    os.replace(tmp_path / "first-resume" / "checkpoint.prev", tmp_path / "run" / "checkpoint")  # step 3 again
    trainer, _ = run(
        options(tmp_path, micro_config, steps=8, save_every=3, resume=True, reschedule=True, lr=1e-3)
    )
    assert any(n.startswith("--reschedule") for n in trainer.notes)
    for e in read_log(tmp_path / "run" / "log.jsonl"):
        assert e.lr == pytest.approx(_expected_lr(e.step - 1, 1e-3, 8, 1))


# ------------------------------------------------------------------------------------------------
# 12. --data and --out are checked before work


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_data_that_is_not_a_regular_file_is_refused(tmp_path, micro_config, kind):
    if kind == "directory":
        path = tmp_path / "dir"
        path.mkdir()
    elif kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
        if not path.exists():
            pytest.skip("no /dev/zero")
    word = {
        "directory": "a directory",
        "fifo": r"a FIFO \(named pipe\), not a regular file",
        "device": "a device, not a regular file",
    }[kind]
    with pytest.raises(DataError, match=f"--data {path}: is {word}; give a regular file"):
        Trainer(options(tmp_path, micro_config, data=path))
    assert not (tmp_path / "run").exists()


def test_out_is_checked_before_work(tmp_path, micro_config):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OptionError, match="exists and is not a directory"):
        Trainer(options(tmp_path, micro_config, out=tmp_path / "file"))
    with pytest.raises(OptionError, match="is not a directory"):
        Trainer(options(tmp_path, micro_config, out=tmp_path / "file" / "run"))


def test_a_log_that_cannot_be_written_stops_the_run_with_a_clear_error(tmp_path, micro_config, monkeypatch):
    from anekit.train import loop

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space")

    trainer = Trainer(options(tmp_path, micro_config))
    monkeypatch.setattr(loop, "write_log", disk_full)
    try:
        with pytest.raises(
            loop.RunIOError, match="No space; the run stopped at step 0; no checkpoint was saved"
        ):
            trainer.run()
    finally:
        trainer.close()


def test_the_engine_time_per_step_is_the_cost_model_s_kernels_times_layers_and_accum():
    from dataclasses import replace

    from anekit.model.config import ModelConfig
    from anekit.train.budget import predict_engine_step_ms
    from anekit.train.cost import step_cost

    cfg = ModelConfig(**MICRO)
    one = predict_engine_step_ms(cfg, 2, chip="m4")
    cost = step_cost(cfg, 2, chip="m4")
    assert one > 0 and one == pytest.approx(sum(k.predicted_ms * k.calls for k in cost.kernels))
    # the layer kernels run once per layer, the classifier's once per step
    per_layer = sum(k.predicted_ms * k.calls for k in cost.kernels if not k.name.startswith("classifier"))
    deeper = predict_engine_step_ms(replace(cfg, n_layers=2 * cfg.n_layers), 2, chip="m4")
    assert deeper == pytest.approx(one + per_layer)
    assert predict_engine_step_ms(cfg, 2, accum=3, chip="m4") == pytest.approx(3 * one)


@pytest.mark.parametrize("temperature", [math.nan, -1.0, math.inf, 10**400, True])
def test_sampling_options_out_of_range_name_the_flag(temperature):
    from anekit.llm.errors import OptionError
    from anekit.llm.sampling import SamplingOptions

    with pytest.raises(OptionError) as info:
        SamplingOptions(max_tokens=5, temperature=temperature, top_k=0)
    assert "--temperature must be a finite number >= 0" in info.value.for_flag()


@pytest.mark.parametrize("options", [[1], "engine", {"optimizer": ["engine"]}, {"optimizer": "bogus"}])
def test_a_resumed_run_s_recorded_optimizer_is_read_defensively(options):
    """`extra` in state.json is free-form: a damaged record of the optimizer is an anekit error or
    ignored, never a raw exception."""
    from types import SimpleNamespace

    from anekit.errors import AnekitError
    from anekit.train.loop import Trainer
    from anekit.train.options import TrainOptions

    me = SimpleNamespace(opts=TrainOptions(), notes=[])
    info = SimpleNamespace(train_state=SimpleNamespace(extra={"options": options}))
    try:
        Trainer._pick_optimizer(me, info)
    except AnekitError as e:
        assert "unknown optimizer" in str(e)
    assert me.opts.optimizer == "host"
