"""`anekit generate MODEL` and `anekit chat MODEL` on a tiny Hugging Face model (tests/llm/conftest.py's
Qwen2) and an anekit run, as a user meets them: streamed text, --json, every sampling flag, errors
as `error: ...` and never a traceback, the chat loop fed through stdin."""

from __future__ import annotations

import builtins
import json

import pytest
from typer.testing import CliRunner

from anekit.cli import app
from llm_fixtures import llm_fixtures as _llm_fixtures

pytest.importorskip("torch")
pytest.importorskip("transformers")

runner = CliRunner()
F64 = ["--backend", "float64"]




@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-qwen2")
    _llm_fixtures().build_tiny_hf("qwen2", d)
    return d


@pytest.fixture(scope="module")
def llm(hf_dir):
    from anekit.llm import load

    with load(hf_dir, backend="float64") as m:
        yield m


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from anekit.model.config import ModelConfig
    from anekit.model.reference import init_params
    from anekit.train.checkpoint import save_checkpoint
    from micro_model import MICRO

    config = ModelConfig(**MICRO)
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run / "checkpoint", config, init_params(config, 0, scheme="normal"))
    return run


def no_traceback(result) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output


# ---------------------------------------------------------------------------------------------
# generate


def test_generate_prints_the_prompt_then_the_continuation(hf_dir, llm):
    args = [
        "generate",
        str(hf_dir),
        "--prompt",
        "Once upon",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        *F64,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    expected = llm.generate("Once upon", max_tokens=12, temperature=0).text
    assert result.stdout == "Once upon" + expected + "\n"


def test_generate_writes_each_token_s_text_as_it_comes(hf_dir, llm, monkeypatch):
    import typer

    writes, echo = [], typer.echo

    def recording(message=None, *args, **kwargs):
        writes.append(message)
        return echo(message, *args, **kwargs)

    monkeypatch.setattr(typer, "echo", recording)
    args = ["generate", str(hf_dir), "--prompt", "Once", "--max-tokens", "10", "--temperature", "0", *F64]
    assert runner.invoke(app, args).exit_code == 0
    events = [e.text for e in llm.stream("Once", max_tokens=10, temperature=0) if e.text]
    assert writes == ["Once", *events, ""]  # the prompt, one write per showable piece, the newline


def test_generate_json_is_the_python_api_s_completion(hf_dir, llm):
    args = ["generate", str(hf_dir), "--prompt", "Hello", "--max-tokens", "6", "--temperature", "0.9",
            "--top-k", "20", "--top-p", "0.9", "--min-p", "0.01", "--repetition-penalty", "1.2",
            "--seed", "5", "--json", *F64]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    c = llm.generate("Hello", max_tokens=6, temperature=0.9, top_k=20, top_p=0.9, min_p=0.01,
                     repetition_penalty=1.2, seed=5)  # fmt: skip
    assert record["text"] == c.text and record["token_ids"] == c.token_ids
    assert record["finish_reason"] == c.finish_reason and record["prompt_tokens"] == c.prompt_tokens
    assert record["backend"] == "float64" and record["options"]["top_k"] == 20


def test_generate_stops_at_a_stop_string(hf_dir, llm):
    full = llm.generate("Once upon", max_tokens=20, temperature=0).text
    stop = full[6:9]
    args = ["generate", str(hf_dir), "--prompt", "Once upon", "--max-tokens", "20", "--temperature", "0",
            "--stop", "zzz-never", "--stop", stop, "--json", *F64]  # fmt: skip
    record = json.loads(runner.invoke(app, args).stdout)
    assert record["text"] == full[: full.find(stop)] and record["finish_reason"] == "stop"


def test_unset_flags_take_the_model_s_generation_config(hf_dir, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(hf_dir, d)
    (d / "generation_config.json").write_text(json.dumps({"do_sample": False, "max_new_tokens": 5}))
    result = runner.invoke(app, ["generate", str(d), "--prompt", "Hi", "--max-tokens", "4", "--json", *F64])
    assert json.loads(result.stdout)["options"]["temperature"] == 0.0  # do_sample false: greedy


def test_the_engine_path_is_the_default_and_says_when_it_emulates(hf_dir, llm):
    result = runner.invoke(app, ["generate", str(hf_dir), "--prompt", "Once upon", "--max-tokens", "3",
                                 "--temperature", "0"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Once upon")
    assert "note: ran on the reference backend (CPU emulation" in result.stderr


def test_generate_on_an_anekit_run_keeps_its_old_form(run_dir):
    result = runner.invoke(app, ["generate", str(run_dir), "--max-tokens", "8", "--temperature", "0"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["generate", str(run_dir), "--prompt", "the tree", "--max-tokens", "4",
                                 "--temperature", "0", *F64])  # fmt: skip
    assert result.exit_code == 0 and result.stdout.startswith("the tree"), result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top-p", "0"], "--top-p must be a number in (0, 1]"),
        (["--min-p", "2"], "--min-p must be a number in [0, 1]"),
        (["--repetition-penalty", "0"], "--repetition-penalty must be a finite number > 0"),
        (["--seed", "-2"], "--seed must be an integer >= 0"),
        (["--stop", ""], "--stop must hold non-empty strings"),
        (["--max-tokens", "0"], "--max-tokens must be an integer >= 1"),
        (["--backend", "coreml"], "--backend must be one of auto, ane, reference, float64"),
        (["--weights", "int3"], "weights must be one of fp16, int8, int4"),
        (["--backend", "float64", "--weights", "int4"], "needs the kernels"),
        (["--max-len", "100000"], "exceeds the model's context of 128"),
        (["--prompt", ""], "the prompt is empty"),
        (
            ["--prompt", "word " * 40, "--max-len", "16", *F64],
            "give a shorter --prompt (or a larger --max-len)",
        ),
        (["--tokenizer", "x.json"], "--tokenizer applies to anekit checkpoints"),
    ],
)
def test_generate_bad_input_is_an_error_not_a_traceback(hf_dir, args, message):
    result = runner.invoke(app, ["generate", str(hf_dir), "--prompt", "Hi", *args])
    assert result.exit_code == 1 and "error:" in result.output and message in result.output, result.output
    no_traceback(result)


@pytest.mark.parametrize("what", ["missing", "file", "empty-dir"])
def test_a_path_that_is_no_model_is_an_error(tmp_path, what):
    path = tmp_path / "x"
    if what == "file":
        path.write_text("{}")
    elif what == "empty-dir":
        path.mkdir()
    result = runner.invoke(app, ["generate", str(path)])
    assert result.exit_code == 1 and "error:" in result.output, result.output
    if what == "missing":
        assert "no such checkpoint" in result.output
    no_traceback(result)


# ---------------------------------------------------------------------------------------------
# chat


def _chat(hf_dir, stdin: str, *args):
    return runner.invoke(app, ["chat", str(hf_dir), "--max-tokens", "6", "--temperature", "0", *F64, *args],
                         input=stdin)  # fmt: skip


def test_chat_keeps_the_history_and_uses_the_template(hf_dir, llm):
    result = _chat(hf_dir, "Hello\nHow are you?\n/exit\n", "--system", "Be brief.")
    assert result.exit_code == 0, result.output
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    r1 = llm.chat(first, max_tokens=6, temperature=0).text
    second = [*first, {"role": "assistant", "content": r1}, {"role": "user", "content": "How are you?"}]
    r2 = llm.chat(second, max_tokens=6, temperature=0).text
    assert result.stdout == f"> {r1}\n> {r2}\n> "
    assert "chatting with" in result.stderr and "/reset" in result.stderr


def test_chat_reset_forgets_the_conversation(hf_dir, llm):
    result = _chat(hf_dir, "Hello\n/reset\nHow are you?\n")  # EOF ends it
    assert result.exit_code == 0, result.output
    r1 = llm.chat([{"role": "user", "content": "Hello"}], max_tokens=6, temperature=0).text
    r2 = llm.chat([{"role": "user", "content": "How are you?"}], max_tokens=6, temperature=0).text
    assert result.stdout == f"> {r1}\n> > {r2}\n> \n"
    assert "(conversation cleared)" in result.stderr


def test_chat_commands_blank_lines_and_unknown_commands(hf_dir):
    result = _chat(hf_dir, "\n   \n/help\n/quit\n")
    assert result.exit_code == 0 and "unknown command /help" in result.stderr, result.output
    no_traceback(result)


def test_chat_ctrl_c_at_the_prompt_leaves_cleanly(hf_dir, monkeypatch):
    def interrupted(prompt=""):
        raise KeyboardInterrupt

    monkeypatch.setattr(builtins, "input", interrupted)
    result = _chat(hf_dir, "")
    assert result.exit_code == 0, result.output
    no_traceback(result)


def test_chat_a_conversation_beyond_the_context_is_reported_and_the_chat_goes_on(hf_dir):
    result = _chat(hf_dir, "word " * 60 + "\nHi\n/exit\n", "--max-len", "40")
    assert result.exit_code == 0, result.output
    assert "no longer fits the context of 40; /reset to start over" in result.stderr
    assert result.stdout.count("> ") == 3  # the long message refused, "Hi" answered, then /exit


def test_chat_needs_a_chat_template(run_dir):
    result = runner.invoke(app, ["chat", str(run_dir), *F64], input="hi\n")
    assert result.exit_code == 1 and "has no chat template" in result.output, result.output
    no_traceback(result)


def test_chat_bad_flags_are_errors_before_loading(tmp_path):
    result = runner.invoke(app, ["chat", str(tmp_path / "missing"), "--top-k", "-1"])
    assert result.exit_code == 1 and "--top-k must be an integer >= 0" in result.output
    no_traceback(result)
