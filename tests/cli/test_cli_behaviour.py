"""Commands behave as users expect: errors without tracebacks (and bugs reported as bugs), `--version`,
`--json` documents alone on stdout, output that is never hard-wrapped off a terminal, output paths
checked before any work, and timings off the engine labelled as emulation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import anekit
from anekit.cli import app
from anekit.errors import AnekitError
from anekit.mil import ct, dumps, mb, types

runner = CliRunner()


def anekit_cmd(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed command in a subprocess: stdout and stderr are real pipes, not terminals."""
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "anekit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


# ---------------------------------------------------------------------------------------------
# The top-level failure policy
# ---------------------------------------------------------------------------------------------


class _Refused(AnekitError):
    pass


def test_an_anekit_error_is_one_line_on_stderr_exit_1(monkeypatch):
    def refuse():
        raise _Refused("the thing at [x] is wrong; do this instead")

    monkeypatch.setattr("anekit.cli.doctor.facts", refuse)
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: the thing at [x] is wrong; do this instead"
    assert result.stdout == "" and "Traceback" not in result.output


def test_any_other_exception_is_reported_as_a_bug_with_the_traceback_in_a_file(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def crash():
        raise ZeroDivisionError("boom in doctor")

    monkeypatch.setattr("anekit.cli.doctor.facts", crash)
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    text = " ".join(result.stderr.split())
    assert "bug in anekit" in text and "ZeroDivisionError: boom in doctor" in text and "report it" in text
    (crash_file,) = tmp_path.glob("anekit-crash-*.txt")
    assert str(crash_file) in text
    saved = crash_file.read_text()
    assert "Traceback (most recent call last)" in saved and "ZeroDivisionError: boom in doctor" in saved
    assert f"anekit {anekit.__version__}" in saved


def test_ctrl_c_exits_130_quietly(monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr("anekit.cli.doctor.facts", interrupted)
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 130
    assert result.output == ""


def test_typer_usage_errors_are_unchanged():
    result = runner.invoke(app, ["doctor", "--no-such-option"])
    assert result.exit_code == 2
    assert "No such option" in result.output and "internal error" not in result.output


def test_a_bug_in_a_real_process_shows_no_traceback(tmp_path):
    code = (
        "import sys, tempfile; tempfile.tempdir = sys.argv[1]\n"
        "import anekit.cli.doctor as d\n"
        "def crash(): raise RuntimeError('deliberate')\n"
        "d.facts = crash\n"
        "sys.argv = ['anekit', 'doctor']\n"
        "from anekit.cli import main\n"
        "main()\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    (crash_file,) = tmp_path.glob("anekit-crash-*.txt")
    assert (
        str(crash_file) in " ".join(p.stderr.split()) and "RuntimeError: deliberate" in crash_file.read_text()
    )


# ---------------------------------------------------------------------------------------------
# --version and --json
# ---------------------------------------------------------------------------------------------


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"anekit {anekit.__version__}"
    p = anekit_cmd("--version")
    assert p.returncode == 0 and p.stdout == f"anekit {anekit.__version__}\n"


def test_every_command_is_registered_and_has_help():
    listing = runner.invoke(app, ["--help"])
    assert listing.exit_code == 0
    for name in (
        "train",
        "eval",
        "generate",
        "train-tokenizer",
        "doctor",
        "run",
        "lint",
        "record",
        "replay",
        "bench",
        "estimate",
    ):
        assert name in listing.stdout
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.stdout, name
    for name in ("doctor", "lint", "replay", "bench", "estimate"):
        assert "--json" in runner.invoke(app, [name, "--help"]).stdout, name


def test_json_on_every_command_is_the_only_thing_on_stdout(model_dir, tmp_path, monkeypatch):
    root, x, _, _ = model_dir
    monkeypatch.chdir(tmp_path)
    bundle = tmp_path / "bundle"
    assert runner.invoke(app, ["record", str(root), "-i", f"x={x}", "--out", str(bundle)]).exit_code == 0
    docs = {}
    for name, args in {
        "doctor": ["doctor", "--json"],
        "lint": ["lint", str(root), "--json"],
        "replay": ["replay", str(bundle), "--json"],
        "estimate": ["estimate", str(root), "--json"],
        "bench": ["bench", "dispatch", "--quick", "--backend", "reference", "--json", "--out", "b.json"],
    }.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (name, result.output)
        docs[name] = json.loads(result.stdout)  # stdout holds the document and nothing else
    assert docs["doctor"]["anekit"] == anekit.__version__
    assert set(docs["doctor"]["backends"]) >= {"reference", "ane"}
    assert docs["lint"]["counts"]["error"] == 0 and isinstance(docs["lint"]["findings"], list)
    assert docs["replay"]["ok"] is True and docs["replay"]["source"] == "reference-backend"
    assert docs["estimate"]["time_ms"] > 0
    # the bench document is the record file, and says its times are CPU emulation
    assert docs["bench"] == json.loads((tmp_path / "b.json").read_text())
    assert docs["bench"]["measurement"] == "cpu-emulation"


def test_json_in_a_real_process_banner_and_progress_on_stderr(tmp_path):
    """Real pipes: nothing a library prints, no progress bar and no banner reaches stdout."""
    p = anekit_cmd(
        "bench", "dispatch", "--quick", "--backend", "reference", "--json", "--out", str(tmp_path / "c.json")
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["experiment"] == "dispatch" and doc["measurement"] == "cpu-emulation"
    assert "CPU emulation" in p.stderr and "record written to" in p.stderr


def test_lint_json_findings_carry_their_sources(tmp_path):
    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 32, 1, 30), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.rsqrt(x=x, name="r")

    root = dumps(prog).save(tmp_path / "bad")
    result = runner.invoke(app, ["lint", str(root), "--json"])
    assert result.exit_code == 1  # an error was found; the document is still printed
    doc = json.loads(result.stdout)
    (rsqrt,) = [f for f in doc["findings"] if f["rule"] == "rsqrt-not-compiled"]
    assert rsqrt["severity"] == "error" and rsqrt["op"] == "r"
    assert rsqrt["source"] == "docs/ane-facts.md#rsqrt-inverse" and rsqrt["url"].startswith("https://")
    assert doc["counts"]["error"] >= 1


def test_doctor_json_says_which_backend_auto_uses():
    doc = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    assert doc["auto"] in ("ane", "reference")
    if sys.platform != "darwin":
        assert doc["auto"] == "reference" and doc["backends"]["ane"]["available"] is False
        assert "needs macOS" in doc["backends"]["ane"]["detail"] and doc["engine"] is None


def test_doctor_states_the_loaded_program_budget():
    doc = json.loads(runner.invoke(app, ["doctor", "--json"]).stdout)
    assert doc["loaded_programs"]["engine_program_cap"] == 128
    if sys.platform != "darwin":
        text = runner.invoke(app, ["doctor"]).stdout
        assert f"up to {doc['loaded_programs']['loaded_program_budget']} of the 128" in text


def test_doctor_on_the_engine_puts_the_engine_section_in_the_document(monkeypatch):
    """On a Mac the engine section (backends/ane/doctor.py) returns data; --json carries it and prints
    no table on stdout (stand-ins for the engine: this machine has none)."""
    import anekit.backends as backends
    import anekit.backends.ane as ane

    calls = []

    def engine_report(console=None, **kwargs):
        calls.append(console)
        if console is not None:
            console.print("ENGINE TABLE")
        return {"machine": {"chip": "Apple M9"}, "smoke_test": {"ok": True}}

    real = backends.availability
    monkeypatch.setattr(
        backends, "availability", lambda name: (True, "fake") if name == "ane" else real(name)
    )
    monkeypatch.setattr(ane, "doctor_report", engine_report)
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["auto"] == "ane" and doc["engine"]["machine"]["chip"] == "Apple M9" and calls == [None]
    human = runner.invoke(app, ["doctor"])
    assert "ENGINE TABLE" in human.stdout and "runs on: ane" in human.stdout


# ---------------------------------------------------------------------------------------------
# Output off a terminal is never hard-wrapped
# ---------------------------------------------------------------------------------------------


def test_redirected_output_keeps_long_lines_whole(tmp_path):
    deep = tmp_path / ("a-rather-long-directory-name-" * 4) / "model"

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 32, 1, 30), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.rsqrt(x=x, name="r")

    root = dumps(prog).save(deep)
    p = anekit_cmd("lint", str(root))
    assert p.returncode == 1
    lines = p.stdout.splitlines()
    assert any(str(root) in line for line in lines), "the model path was broken across lines"
    (row,) = [line for line in lines if "rsqrt-not-compiled" in line]
    assert "pow(x, -0.5)" in row and "docs/ane-facts.md#rsqrt-inverse" in row  # one line per finding


def test_bench_output_is_not_wrapped_at_80_columns(tmp_path):
    result = runner.invoke(
        app,
        ["bench", "peak", "--quick", "--backend", "reference", "--out", str(tmp_path / "p.json")],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    assert "`python -m anekit.perf.calibrate` lists them all" in result.stdout
    rows = [line for line in result.stdout.splitlines() if "32x conv 512ch sp64" in line]
    assert rows and all("6.73 TFLOPS" in row for row in rows[:1])  # the whole row, published value included


# ---------------------------------------------------------------------------------------------
# Output paths: checked before any work, written exactly and atomically
# ---------------------------------------------------------------------------------------------


def test_run_out_writes_exactly_the_file_it_names(model_dir, tmp_path):
    root, x, w, xv = model_dir
    out = tmp_path / "outputs"  # no .npz suffix: numpy.savez(name) would have written outputs.npz
    result = runner.invoke(
        app, ["run", str(root), "-i", f"x={x}", "--out", str(out), "--backend", "reference"]
    )
    assert result.exit_code == 0, result.output
    assert out.is_file() and not (tmp_path / "outputs.npz").exists()
    with np.load(out) as f:
        y = f["y"]
    expected = np.maximum(w[:, :, 0, 0].astype(np.float64) @ xv[0, :, 0, :].astype(np.float64), 0)
    np.testing.assert_allclose(y[0, :, 0, :].astype(np.float64), expected, rtol=2e-3, atol=2e-3)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_run_out_replaces_a_symlink_instead_of_writing_through_it(model_dir, tmp_path):
    root, x, _, _ = model_dir
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "out.npz"
    link.symlink_to(victim)
    result = runner.invoke(
        app, ["run", str(root), "-i", f"x={x}", "--out", str(link), "--backend", "reference"]
    )
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "keep me" and not link.is_symlink() and link.is_file()


@pytest.mark.parametrize("where", ["existing-dir", "under-a-file"])
def test_run_out_is_checked_before_the_program_runs(model_dir, tmp_path, monkeypatch, where):
    root, x, _, _ = model_dir
    (tmp_path / "existing-dir").mkdir()
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "existing-dir" if where == "existing-dir" else tmp_path / "a-file" / "out.npz"

    def must_not_compile(*a, **k):
        raise AssertionError("the program ran before --out was checked")

    monkeypatch.setattr("anekit.compile", must_not_compile)
    result = runner.invoke(app, ["run", str(root), "-i", f"x={x}", "--out", str(out)])
    assert result.exit_code == 1
    assert "--out" in result.stderr and (
        "is a directory" in result.stderr or "not a directory" in result.stderr
    )


def test_run_out_parent_is_created(model_dir, tmp_path):
    root, x, _, _ = model_dir
    out = tmp_path / "new" / "deeper" / "y.npz"
    result = runner.invoke(
        app, ["run", str(root), "-i", f"x={x}", "--out", str(out), "--backend", "reference"]
    )
    assert result.exit_code == 0 and out.is_file()


@pytest.mark.parametrize(
    ("option", "make", "message"),
    [
        ("--out", lambda p: p.mkdir(), "is a directory"),
        ("--plot", lambda p: p.write_text("x"), "is not a directory"),
    ],
)
def test_bench_paths_are_checked_before_any_experiment(tmp_path, monkeypatch, option, make, message):
    target = tmp_path / "target"
    make(target)

    def must_not_run(*a, **k):
        raise AssertionError("an experiment ran before the paths were checked")

    monkeypatch.setattr("anekit.bench.runner.run", must_not_run)
    result = runner.invoke(app, ["bench", "peak", "--quick", "--backend", "reference", option, str(target)])
    assert result.exit_code == 1 and message in result.stderr


def test_record_out_non_empty_needs_overwrite(model_dir, tmp_path, monkeypatch):
    root, x, _, _ = model_dir
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["record", str(root), "-i", f"x={x}", "--out", str(out)])
    assert result.exit_code == 1 and "--overwrite" in result.stderr
    assert (out / "notes.txt").read_text() == "mine"
    # a previous bundle is replaced with --overwrite
    first = tmp_path / "first"
    assert runner.invoke(app, ["record", str(root), "-i", f"x={x}", "--out", str(first)]).exit_code == 0
    again = runner.invoke(app, ["record", str(root), "-i", f"x={x}", "--out", str(first)])
    assert again.exit_code == 1 and "--overwrite" in again.stderr
    replaced = runner.invoke(app, ["record", str(root), "-i", f"x={x}", "--out", str(first), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((first / "meta.json").read_text())["source"] == "reference-backend"


def test_record_out_symlink_is_refused(model_dir, tmp_path):
    root, x, _, _ = model_dir
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "bundle"
    link.symlink_to(elsewhere)
    result = runner.invoke(app, ["record", str(root), "-i", f"x={x}", "--out", str(link), "--overwrite"])
    assert result.exit_code == 1 and "symbolic link" in result.stderr
    assert list(elsewhere.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# record defaults to auto; timings off the engine are labelled as emulation
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "darwin", reason="off the engine only")
def test_record_defaults_to_auto_and_labels_cpu_timings(model_dir, tmp_path):
    root, x, _, _ = model_dir
    out = tmp_path / "b"
    result = runner.invoke(app, ["record", str(root), "-i", f"x={x}", "--out", str(out), "--repeat", "2"])
    assert result.exit_code == 0, result.output
    assert "reference-backend" in result.stdout and "CPU emulation" in result.stdout
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == "reference-backend" and meta["timings"]["measurement"] == "cpu-emulation"
    replay = runner.invoke(app, ["replay", str(out)])
    assert replay.exit_code == 0 and "CPU emulation" in replay.stdout
    doc = json.loads(runner.invoke(app, ["replay", str(out), "--json"]).stdout)
    assert (
        doc["recorded_timings"]["measurement"] == "cpu-emulation"
        and len(doc["recorded_timings"]["call_wall_s"]) == 2
    )


def test_replay_labels_timings_of_bundles_made_before_the_label_existed(model_dir, tmp_path):
    root, x, _, _ = model_dir
    out = tmp_path / "b"
    assert (
        runner.invoke(
            app, ["record", str(root), "-i", f"x={x}", "--out", str(out), "--backend", "reference"]
        ).exit_code
        == 0
    )
    meta = json.loads((out / "meta.json").read_text())
    del meta["timings"]["measurement"]
    (out / "meta.json").write_text(json.dumps(meta))
    doc = json.loads(runner.invoke(app, ["replay", str(out), "--json"]).stdout)
    assert doc["recorded_timings"]["measurement"] == "cpu-emulation"


# ---------------------------------------------------------------------------------------------
# Bad input never gives a traceback
# ---------------------------------------------------------------------------------------------


def _bad_inputs(root: Path, x: Path, tmp: Path) -> dict[str, list[str]]:
    (tmp / "empty.npy").write_bytes(b"")
    (tmp / "garbage.npy").write_text("garbage")
    (tmp / "empty.mil").write_text("")
    (tmp / "garbage.mil").write_bytes(b"\xff\xfe program(")
    (tmp / "a-dir").mkdir()
    (tmp / "empty-dir").mkdir()
    return {
        "run missing model": ["run", str(tmp / "nope")],
        "run dir without model.mil": ["run", str(tmp / "empty-dir")],
        "run empty mil": ["run", str(tmp / "empty.mil")],
        "run garbage mil": ["run", str(tmp / "garbage.mil")],
        "run empty npy": ["run", str(root), "-i", f"x={tmp / 'empty.npy'}"],
        "run garbage npy": ["run", str(root), "-i", f"x={tmp / 'garbage.npy'}"],
        "run dir as npy": ["run", str(root), "-i", f"x={tmp / 'a-dir'}"],
        "run bad numerics": [
            "run",
            str(root),
            "-i",
            f"x={x}",
            "--backend",
            "reference",
            "--numerics",
            "nope",
        ],
        "run unknown input": ["run", str(root), "-i", f"zz={x}", "--backend", "reference"],
        "lint bad chip": ["lint", str(root), "--chip", "nope"],
        "lint dir": ["lint", str(tmp / "a-dir")],
        "estimate bad chip": ["estimate", str(root), "--chip", "nope"],
        "estimate negative top": ["estimate", str(root), "--top", "-1"],
        "estimate garbage": ["estimate", str(tmp / "garbage.mil")],
        "bench unknown": ["bench", "nope"],
        "bench bad chip": ["bench", "peak", "--chip", "nope"],
        "bench bad backend": ["bench", "peak", "--backend", "nope"],
        "bench bad set": ["bench", "peak", "--quick", "--set", "iters=-1"],
        "bench empty tuple": ["bench", "peak", "--quick", "--set", "depths="],
        "bench nan": ["bench", "sram", "--quick", "--set", "cliff_fraction=nan"],
        "bench set syntax": ["bench", "peak", "--set", "iters"],
        "record bad backend": [
            "record",
            str(root),
            "-i",
            f"x={x}",
            "--backend",
            "nope",
            "--out",
            str(tmp / "r1"),
        ],
        "record repeat -1": ["record", str(root), "-i", f"x={x}", "--repeat", "-1"],
        "record garbage npy": [
            "record",
            str(root),
            "-i",
            f"x={tmp / 'garbage.npy'}",
            "--out",
            str(tmp / "r2"),
        ],
        "record out is a file": ["record", str(root), "-i", f"x={x}", "--out", str(tmp / "empty.mil")],
        "replay missing": ["replay", str(tmp / "nope")],
        "replay a file": ["replay", str(x)],
        "replay empty dir": ["replay", str(tmp / "empty-dir")],
        "replay a model dir": ["replay", str(root)],
    }


def test_bad_input_gives_a_message_never_a_traceback_or_a_bug_report(model_dir, tmp_path):
    root, x, _, _ = model_dir
    failures = []
    for label, args in _bad_inputs(root, x, tmp_path).items():
        result = runner.invoke(app, args)
        problem = None
        if result.exit_code not in (1, 2):
            problem = f"exit {result.exit_code}"
        elif "Traceback" in result.output or "internal error" in result.output:
            problem = "traceback or bug report"
        elif result.exc_info and not isinstance(result.exc_info[1], SystemExit):
            problem = repr(result.exc_info[1])
        elif not re.search(r"error|Error|Invalid value|Usage", result.output):
            problem = "no message"
        if problem:
            failures.append(f"{label}: {problem}\n{result.output}")
    assert not failures, "\n".join(failures)
