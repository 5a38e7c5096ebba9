"""Short runs of the `model` and `serve` fuzz targets (the long runs: `python -m anekit.fuzz model
--cases N` and `... serve --cases N`): every case ends in success or an AnekitError (for `serve`: a
200 of the right shape or an OpenAI error body), none hangs; the targets reach both outcomes; and
each target really catches what it looks for."""

from __future__ import annotations

from importlib import import_module

import numpy as np
import pytest

from anekit.fuzz import TARGET_MODULES, run_one, target
from short_fuzz import assert_short_run_clean

pytest.importorskip("tokenizers")
pytest.importorskip("fastapi")

CASES = {"model": 150, "serve": 300}


@pytest.mark.parametrize("name", sorted(CASES))
def test_short_fuzz_finds_no_raw_exception_and_no_hang(name):
    assert_short_run_clean(name, CASES[name], ok_at_least=CASES[name] // 10)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_case_is_reproducible_from_its_seed_and_number(name):
    module = import_module(TARGET_MODULES[name])
    a = module.make_case(np.random.default_rng([7, 11]))
    b = module.make_case(np.random.default_rng([7, 11]))
    assert module.describe(a) == module.describe(b)
    assert run_one(target(name), 7, 11, 10.0)[0] == run_one(target(name), 7, 11, 10.0)[0]


def test_every_model_seed_loads_and_runs():
    from anekit.fuzz import model_dir

    seeds = model_dir.seeds()
    assert {"llama", "qwen2-sharded", "qwen3", "checkpoint"} <= set(seeds)
    assert (seeds["qwen2-sharded"] / "model.safetensors.index.json").is_file()
    for name in seeds:
        model_dir.run_case(model_dir.Case(name, []))  # no mutation: loads, logits, generate, chat


def test_the_model_target_catches_a_loader_that_follows_symlinks_out(monkeypatch):
    """If the model files' path check let a link leaving the directory through, the target must say so."""
    from anekit.fuzz import model_dir
    from anekit.llm.errors import LLMError

    case = model_dir.Case("llama", [("file", "config.json", "symlink-outside", 0)])
    with pytest.raises(LLMError, match="outside the model directory"):
        model_dir.run_case(case)
    import anekit.model.io as io

    monkeypatch.setattr(io.Path, "is_relative_to", lambda self, other: True)
    with pytest.raises(AssertionError, match="symlink leaving the model directory was read"):
        model_dir.run_case(case)


def test_the_model_target_reports_a_template_that_hangs(monkeypatch):
    """Without the renderer's limits, a template of nested loops runs past the time limit: a "hang"."""
    from anekit.fuzz import model_dir
    from anekit.llm import chat_template

    monkeypatch.setattr(chat_template, "MAX_LOOP_ITEMS", 10**15)
    monkeypatch.setattr(chat_template, "MAX_RENDER_SECONDS", 10**6)
    loops = next(i for i, t in enumerate(model_dir.TEMPLATES) if isinstance(t, str) and "for k in" in t)
    case = model_dir.Case("llama", [("template", loops, 0)])
    monkeypatch.setattr(model_dir, "make_case", lambda rng: case)
    assert run_one(target("model"), 0, 0, 1.0)[0] == "hang"


def test_the_serve_target_reports_a_500_and_a_bad_error_body():
    from anekit.fuzz import serve_requests as s

    good = b'{"error": {"message": "no", "type": "invalid_request_error", "param": null, "code": null}}'
    with pytest.raises(s.RequestRefused):
        s.check_response("/v1/completions", 400, {}, good, streamed=False)
    with pytest.raises(s.Defect, match="status 500"):
        s.check_response("/v1/completions", 500, {}, good, streamed=False)
    with pytest.raises(s.Defect, match="not OpenAI's error body"):
        s.check_response("/v1/completions", 400, {}, b'{"detail": "bad"}', streamed=False)
    with pytest.raises(s.Defect, match="not JSON"):
        s.check_response("/v1/completions", 422, {}, b"Internal Server Error", streamed=False)
    failed = (
        b'data: {"choices": []}\n\ndata: {"error": {"message": "internal error: KeyError: x", '
        b'"type": "server_error", "param": null, "code": null}}\n\n'
    )
    with pytest.raises(s.Defect, match="a stream that failed"):
        s.check_response("/v1/completions", 200, {"content-type": "text/event-stream"}, failed, streamed=True)


def test_the_serve_target_reports_an_exception_escaping_the_app(monkeypatch):
    from anekit.fuzz import serve_requests as s

    s.app()

    def broken(*a, **k):
        raise KeyError("boom")

    monkeypatch.setattr("anekit.serve.app.Service.check_model", broken)
    case = s.Case("/v1/completions", {"model": s.MODEL_NAME, "prompt": "hi", "max_tokens": 1})
    monkeypatch.setattr(s, "make_case", lambda rng: case)
    outcome, defect = run_one(target("serve"), 0, 0, 10.0)
    assert outcome == "other" and "KeyError" in defect.error
