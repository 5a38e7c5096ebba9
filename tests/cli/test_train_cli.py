"""`anekit train`, `eval` and `generate` as a user meets them: bad options, Ctrl-C, progress off and on a
terminal, the header's estimates, `eval --json`, the run's own tokenizer and held-out data, and bad
input that must never end in a traceback (issue 8, §1 and §3)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from anekit.cli import app
from anekit.cli.train import make_progress, progress_line
from anekit.train.loop import StepLog
from micro_model import MICRO

runner = CliRunner()


def train_args(config: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--config", str(config), "--batch", "2", "--backend", "reference",
        "--out", str(out), "--sample-tokens", "0", "--eval-batches", "1", *extra,
    ]  # fmt: skip


@pytest.fixture
def trained(tmp_path, micro_config):
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(micro_config, out, "--steps", "2", "--eval-every", "2"))
    assert result.exit_code == 0, result.output
    return out


def no_traceback(result) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output


# ------------------------------------------------------------------------------------------------
# train: options


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--lr", "nan", "--lr must be a finite number > 0 and <= 1, got nan"),
        ("--lr", "inf", "--lr must be a finite number > 0 and <= 1, got inf"),
        ("--lr", "1e6", "--lr must be a finite number > 0 and <= 1, got 1000000.0"),
        ("--save-every", "0", "--save-every must be an integer from 1"),
        ("--clip", "nan", "--clip must be a finite number"),
        ("--seed", "-1", "--seed must be an integer from 0"),
    ],
)
def test_resume_with_a_bad_option_changes_nothing(trained, micro_config, flag, value, message):
    before = {p: p.read_bytes() for p in sorted(trained.rglob("*")) if p.is_file()}
    result = runner.invoke(app, train_args(micro_config, trained, "--resume", "--steps", "4", flag, value))
    assert result.exit_code == 1 and message in result.output, result.output
    no_traceback(result)
    assert {p: p.read_bytes() for p in sorted(trained.rglob("*")) if p.is_file()} == before


def test_train_with_no_out_writes_runs_named_after_the_model(tmp_path, micro_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--config", str(micro_config), "--batch", "2", "--steps", "1"]
    result = runner.invoke(app, args + ["--backend", "reference", "--sample-tokens", "0"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "micro" / "checkpoint" / "state.json").is_file()


def test_a_preset_with_a_mismatched_vocabulary_says_how_to_get_a_tokenizer(tmp_path):
    result = runner.invoke(app, ["train", "--preset", "stories15m", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1, result.output
    assert "anekit train-tokenizer TEXT --vocab-size 32000" in result.output
    assert not (tmp_path / "r").exists()
    no_traceback(result)


@pytest.mark.parametrize("kind", ["directory", "fifo", "devzero", "out-file"])
def test_paths_are_checked_before_work(tmp_path, micro_config, kind):
    out = tmp_path / "run"
    extra = []
    if kind == "directory":
        extra = ["--data", str(tmp_path)]
    elif kind == "fifo":
        os.mkfifo(tmp_path / "fifo")
        extra = ["--data", str(tmp_path / "fifo")]
    elif kind == "devzero":
        extra = ["--data", "/dev/zero"]
    else:
        out = tmp_path / "a-file"
        out.write_text("x")
    result = runner.invoke(app, train_args(micro_config, out, *extra))
    assert result.exit_code == 1, result.output
    assert "regular file" in result.output or "not a directory" in result.output
    no_traceback(result)


# ------------------------------------------------------------------------------------------------
# train: Ctrl-C


def test_ctrl_c_prints_the_checkpoint_and_the_resume_command_and_exits_130(
    tmp_path, micro_config, monkeypatch
):
    from anekit.train.loop import Trainer

    real = Trainer.train_step

    def interrupt_at_3(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return real(self, step)

    monkeypatch.setattr(Trainer, "train_step", interrupt_at_3)
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(micro_config, out, "--steps", "5", "--save-every", "2"))
    assert result.exit_code == 130, result.output
    assert "interrupted after step 2 of 5" in result.stderr
    assert f"{out / 'checkpoint'} (step 2)" in result.stderr
    assert (
        f"resume with: anekit train --resume --out {out} --config {micro_config} --steps 5" in result.stderr
    )
    no_traceback(result)


# ------------------------------------------------------------------------------------------------
# train: what is printed


def test_output_to_a_file_has_plain_progress_lines_and_labels_emulated_timings(tmp_path, micro_config):
    out = tmp_path / ("a-long-directory-name-" * 8) / "run"
    result = runner.invoke(app, train_args(micro_config, out, "--steps", "4", "--print-every", "2"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    progress = [line for line in lines if line.startswith("step ")]
    assert [p.split()[1] for p in progress] == ["2/4", "4/4"]
    for p in progress:
        assert "ETA" in p and "loss" in p and "tok/s" in p and "(reference backend: CPU emulation)" in p
    assert "val" in progress[-1]  # measured at the end
    assert any(line.startswith("backend: reference") and "CPU emulation" in line for line in lines)
    assert any(line.startswith("memory: ~") and "estimated" in line for line in lines)
    assert any(line.startswith("first step: ") for line in lines)
    assert any(line.startswith("checkpoint: ") and str(out / "checkpoint") in line for line in lines)  # whole


def test_on_an_80_column_terminal_the_step_count_and_eta_stay_visible():
    console = Console(width=80, file=io.StringIO(), force_terminal=True, color_system=None)
    progress = make_progress(console, emulated=True)
    task = progress.add_task("train", total=400, completed=0, loss="-", val="", tps="-", ms="-")
    progress.update(task, completed=137, loss="3.214 (skipped)", val="val 3.301", tps="1,234", ms="341")
    shown = Console(width=80, file=io.StringIO(), record=True, force_terminal=True, color_system=None)
    shown.print(progress.make_tasks_table(progress.tasks))
    text = shown.export_text()
    first = text.splitlines()[0]
    assert first.startswith("137/400") and "ETA" in first and "CPU emulation" in first
    assert all(len(line) <= 80 for line in text.splitlines())


def test_a_plain_progress_line_puts_step_and_eta_first():
    entry = StepLog(7, 3.5, 1e-3, 1.0, 256.0, True, 1234.0, 341.0, 300.0, 41.0, 3.6, "non-finite gradients")
    line = progress_line(entry, 400, 125.0, emulated=True)
    assert line.startswith("step 7/400  ETA 2m05s  loss 3.500  val 3.600  (skipped: non-finite gradients)")
    assert line.endswith("(reference backend: CPU emulation)") and "\n" not in line


# ------------------------------------------------------------------------------------------------
# eval


def test_eval_scores_the_held_out_slice_by_default_and_json_is_the_only_stdout(trained):
    args = [
        "eval",
        str(trained / "checkpoint"),
        "--backend",
        "reference",
        "--batch",
        "2",
        "--max-batches",
        "2",
    ]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert record["split"] == "validation" and record["data"] == "bundled stories [val split]"
    assert record["tokens"] == 2 * 2 * MICRO["seq_len"] and record["step"] == 2
    assert record["perplexity"] == pytest.approx(2.718281828459045 ** record["loss"])
    # the same slice and loss the run logged at its last step (eval's default = training's held-out data)
    logged = json.loads((trained / "log.jsonl").read_text().splitlines()[-1])["val_loss"]
    one_batch = runner.invoke(app, ["eval", str(trained / "checkpoint"), "--backend", "reference", "--batch", "2",
                                    "--max-batches", "1", "--json"])  # fmt: skip
    assert json.loads(one_batch.stdout)["loss"] == pytest.approx(logged, rel=1e-12)
    text = runner.invoke(app, args)
    assert f"mean loss {record['loss']:.4f}" in text.stdout and "val split" in text.stdout


def test_eval_and_generate_use_the_run_s_tokenizer(tmp_path, micro_config):
    from anekit.train.corpus import data_path

    spec = json.loads(data_path("tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    vocab["e"], vocab["Ġt"] = vocab["Ġt"], vocab["e"]
    tok = tmp_path / "swapped.json"
    tok.write_text(json.dumps(spec), encoding="utf-8")
    out = tmp_path / "run"
    assert (
        runner.invoke(app, train_args(micro_config, out, "--steps", "2", "--tokenizer", str(tok))).exit_code
        == 0
    )
    text = tmp_path / "text.txt"
    text.write_text(data_path("stories.txt").read_text(encoding="utf-8")[:20_000])
    base = ["eval", str(out / "checkpoint"), "--backend", "reference", "--batch", "2", "--max-batches", "2"]
    own = json.loads(runner.invoke(app, [*base, "--data", str(text), "--json"]).stdout)
    explicit = runner.invoke(app, [*base, "--data", str(text), "--json", "--tokenizer", str(tok)])
    assert json.loads(explicit.stdout)["loss"] == own["loss"]
    other = runner.invoke(
        app, [*base, "--data", str(text), "--json", "--tokenizer", str(data_path("tokenizer.json"))]
    )
    assert other.exit_code == 0 and "warning: --tokenizer" in other.stderr
    assert json.loads(other.stdout)["loss"] != own["loss"]  # scored with the other vocabulary, as asked

    gen = [
        "generate",
        str(out / "checkpoint"),
        "--prompt",
        "the tree",
        "--max-tokens",
        "5",
        "--temperature",
        "0",
    ]
    assert runner.invoke(app, gen).stdout.startswith("the tree")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch", "0"], "--batch must be at least 1"),
        (["--max-batches", "-1"], "--max-batches must be at least 0"),
        (["--data", "/dev/zero"], "is a device"),
        (["--data", "."], "is a directory"),
        (["--numerics", "fast"], "--numerics must be ane or exact"),
    ],
)
def test_eval_bad_input_is_an_error_not_a_traceback(trained, args, message):
    result = runner.invoke(app, ["eval", str(trained / "checkpoint"), "--backend", "reference", *args])
    assert result.exit_code == 1 and message in result.output, result.output
    no_traceback(result)


# ------------------------------------------------------------------------------------------------
# generate


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-tokens", "0"], "--max-tokens must be an integer >= 1"),
        (["--max-tokens", "-3"], "--max-tokens must be an integer >= 1"),
        (["--temperature", "nan"], "--temperature must be a finite number >= 0"),
        (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
        (["--top-k", "-1"], "--top-k must be an integer >= 0"),
        (["--prompt", "x" * 400], "give a shorter --prompt"),
    ],
)
def test_generate_bad_input_is_an_error_not_a_traceback(trained, args, message):
    result = runner.invoke(app, ["generate", str(trained / "checkpoint"), *args])
    assert result.exit_code == 1 and message in result.output, result.output
    no_traceback(result)


def test_generate_with_an_empty_prompt_starts_from_bos(trained):
    result = runner.invoke(
        app, ["generate", str(trained / "checkpoint"), "--prompt", "", "--max-tokens", "3"]
    )
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", ["eval", "generate"])
@pytest.mark.parametrize("damage", ["missing", "empty-list", "null", "no-state", "bad-checksum", "a-file"])
def test_a_missing_or_damaged_checkpoint_is_an_error_not_a_traceback(trained, tmp_path, command, damage):
    ckpt = trained / "checkpoint"
    if damage == "missing":
        ckpt = tmp_path / "nothing"
    elif damage == "empty-list":
        (ckpt / "state.json").write_text("[]")
    elif damage == "null":
        (ckpt / "state.json").write_text("null")
    elif damage == "no-state":
        (ckpt / "state.json").unlink()
    elif damage == "bad-checksum":
        (ckpt / "model.safetensors").write_bytes(b"garbage")
    else:
        ckpt = tmp_path / "micro.json"
    extra = ["--backend", "reference"] if command == "eval" else []
    result = runner.invoke(app, [command, str(ckpt), *extra])
    assert result.exit_code == 1, result.output
    assert "error:" in result.output
    no_traceback(result)


def test_eval_and_generate_accept_the_run_directory(trained):
    result = runner.invoke(
        app, ["eval", str(trained), "--backend", "reference", "--max-batches", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checkpoint"] == str(trained / "checkpoint")
    assert runner.invoke(app, ["generate", str(trained), "--max-tokens", "3"]).exit_code == 0


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (Linux)")
def test_an_out_directory_that_cannot_be_created_is_refused_before_work(micro_config):
    result = runner.invoke(app, train_args(micro_config, Path("/proc/anekit-run")))
    assert result.exit_code == 1 and "--out /proc/anekit-run: cannot write there" in result.output, (
        result.output
    )
    no_traceback(result)
