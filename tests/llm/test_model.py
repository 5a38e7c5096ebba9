"""`anekit.llm.load` and `LanguageModel` on a random-initialised tiny Llama saved by transformers (the
oracle: its logits, its greedy and repetition-penalised `generate`, its chat template rendering) and
on an anekit checkpoint. Most tests run the float64 session (exact, fast); one runs the engine
decoder on the reference backend."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from anekit.llm import ContextFull, LLMError, SamplingOptions, load
from anekit.llm.model import LanguageModel, StreamEvent
from anekit.train.corpus import data_path

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPT = "Once upon a time"


@pytest.fixture
def llama(tiny_hf):
    """The tiny Llama 3 model of conftest.py (scaled RoPE, sharded safetensors, ChatML template)."""
    return tiny_hf("llama3")


@pytest.fixture
def hf_dir(llama):
    return llama.directory


@pytest.fixture
def hf_model(llama):
    return llama.model


@pytest.fixture
def model(hf_dir):
    with load(hf_dir, backend="float64", max_len=128) as m:
        yield m


def _hf_generate(hf_model, ids, n, **kw):
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                                pad_token_id=0, **kw)  # fmt: skip
    return out[0, len(ids) :].tolist()


class _Counting:
    """A session wrapper recording what is prefilled and how often decode runs."""

    def __init__(self, inner):
        self.inner, self.prefills, self.decodes = inner, [], 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def prefill(self, tokens):
        self.prefills.append(list(tokens))
        return self.inner.prefill(tokens)

    def decode(self, token):
        self.decodes += 1
        return self.inner.decode(token)


def test_logits_match_transformers(tiny_hf_model):
    with load(tiny_hf_model.directory, backend="float64") as m:
        ids = m.encode(PROMPT)
        with torch.no_grad():
            theirs = tiny_hf_model.model(torch.tensor([ids])).logits[0].numpy()
        ours = m.logits(ids)
    assert ours.dtype == np.float32 and ours.shape == (len(ids), m.config.vocab_size)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("penalty", [1.0, 1.3, 0.7])
def test_greedy_is_transformers_greedy_for_32_tokens(tiny_hf_model, penalty):
    """Greedy (with and without a repetition penalty) against transformers' generate, 32 tokens; the
    float64 session's logits are within 1e-4 of transformers' float32 ones, and no top-1 margin of
    these models is that small."""
    with load(tiny_hf_model.directory, backend="float64") as m:
        m.tokenizer.eos_ids = frozenset()  # as transformers' generate(eos_token_id=None)
        ids = m.encode(PROMPT)
        c = m.generate(PROMPT, max_tokens=32, temperature=0, repetition_penalty=penalty)
        expected = _hf_generate(tiny_hf_model.model, ids, 32, repetition_penalty=penalty)
        assert c.token_ids == expected
        assert (c.finish_reason, c.prompt_tokens, c.completion_tokens) == ("length", len(ids), 32)
        assert c.text == m.tokenizer.decode(ids + c.token_ids)[len(m.tokenizer.decode(ids)) :]


def test_sampling_is_reproducible_and_stays_in_the_filtered_set(model):
    opts = SamplingOptions(max_tokens=12, temperature=0.9, top_k=5, top_p=0.9, seed=3)
    a, b = model.generate(PROMPT, opts), model.generate(PROMPT, opts)
    assert a.token_ids == b.token_ids
    ids = model.encode(PROMPT)
    logits = model.logits(ids + a.token_ids)
    for step, tok in enumerate(a.token_ids):
        row = logits[len(ids) - 1 + step]
        assert tok in np.argsort(row)[-5:]
    other = model.generate(PROMPT, opts.updated(seed=4))
    assert other.token_ids != a.token_ids or other.text == a.text  # another seed, almost surely another text


def test_stream_is_generate_token_by_token(model):
    c = model.generate(PROMPT, max_tokens=10, temperature=0)
    events = list(model.stream(PROMPT, max_tokens=10, temperature=0))
    assert all(isinstance(e, StreamEvent) for e in events)
    assert [e.token_id for e in events] == c.token_ids
    assert "".join(e.text for e in events) == c.text
    assert [e.finish_reason for e in events] == [None] * 9 + ["length"]


def test_closing_the_stream_stops_decoding(model):
    model.session = counting = _Counting(model.session)
    it = model.stream(PROMPT, max_tokens=50, temperature=0)
    next(it), next(it), next(it)
    it.close()
    assert counting.decodes == 2  # the third token was sampled, never fed
    assert model.generate(PROMPT, max_tokens=3, temperature=0).completion_tokens == 3


def test_errors_surface_when_the_stream_is_made_not_when_it_is_read(model):
    with pytest.raises(LLMError, match="top_p"):
        model.stream(PROMPT, top_p=0)
    with pytest.raises(ContextFull, match="the prompt has 200 tokens"):
        model.stream([5] * 200)


def test_a_stream_overtaken_by_another_generation_stops(model):
    first = model.stream(PROMPT, max_tokens=20, temperature=0)
    next(first)
    model.generate("the tree", max_tokens=3, temperature=0)
    with pytest.raises(LLMError, match="another generation started"):
        next(first)


def test_a_closed_model_says_so(hf_dir):
    m = load(hf_dir, backend="float64", max_len=32)
    stream = m.stream(PROMPT, max_tokens=5, temperature=0)
    next(stream)
    m.close()
    m.close()  # twice is fine
    with pytest.raises(LLMError, match="closed while this stream was paused"):
        next(stream)
    with pytest.raises(LLMError, match="this model is closed; load it again"):
        m.generate(PROMPT)


def test_stop_strings_end_the_text_before_them(model):
    full = model.generate(PROMPT, max_tokens=40, temperature=0).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    c = model.generate(PROMPT, max_tokens=40, temperature=0, stop=[stop, "\x00never"])
    assert c.finish_reason == "stop" and c.text == full[: full.find(stop)]
    events = list(model.stream(PROMPT, max_tokens=40, temperature=0, stop=stop))
    assert "".join(e.text for e in events) == c.text and events[-1].finish_reason == "stop"
    assert not any(stop in e.text for e in events)


def test_an_eos_id_ends_the_generation_and_is_not_output(model):
    greedy = model.generate(PROMPT, max_tokens=10, temperature=0)
    eos = greedy.token_ids[4]
    first = greedy.token_ids.index(eos)
    model.tokenizer.eos_ids = frozenset({eos})
    c = model.generate(PROMPT, max_tokens=10, temperature=0)
    assert c.finish_reason == "stop" and c.token_ids == greedy.token_ids[:first]
    last = list(model.stream(PROMPT, max_tokens=10, temperature=0))[-1]
    assert last.token_id is None and last.finish_reason == "stop"


def test_a_full_context_ends_with_length(hf_dir):
    with load(hf_dir, backend="float64", max_len=10) as m:
        ids = m.encode(PROMPT)
        c = m.generate(ids, max_tokens=100, temperature=0)
        assert c.finish_reason == "length" and c.completion_tokens == 10 - len(ids) + 1
        with pytest.raises(ContextFull, match="the prompt has 11 tokens and the context holds 10"):
            m.generate([3] * 11)


def test_prompts_that_cannot_run_are_llm_errors(model):
    with pytest.raises(LLMError, match="the prompt is empty"):
        model.generate("")  # this tokenizer adds no BOS
    with pytest.raises(LLMError, match="token id 600 is outside"):
        model.generate([1, 600])
    with pytest.raises(LLMError, match="a prompt is a string or a list of token ids"):
        model.generate([1, "x"])
    with pytest.raises(LLMError, match="not a sampling option"):
        model.generate(PROMPT, top_q=3)


def test_a_new_prompt_extending_the_cached_one_prefills_only_what_is_new(model):
    model.session = counting = _Counting(model.session)
    ids = model.encode(PROMPT)
    a = model.generate(ids, max_tokens=5, temperature=0)
    longer = ids + a.token_ids + model.encode(" and then")
    b = model.generate(longer, max_tokens=5, temperature=0)
    assert counting.prefills[0] == ids
    assert counting.prefills[1] == longer[len(ids) + 4 :]  # the last reply token was never fed
    with load(model.path, backend="float64", max_len=128) as fresh:
        assert fresh.generate(longer, max_tokens=5, temperature=0).token_ids == b.token_ids
    model.generate(ids, max_tokens=2, temperature=0)  # a shorter prompt: truncated, one token re-fed
    assert counting.prefills[2] == ids[-1:]


def test_chat_renders_and_tokenizes_as_transformers_and_reuses_the_cache(model, hf_dir):
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Tell a story."}]
    assert model.chat_template == json.loads((hf_dir / "tokenizer_config.json").read_text())["chat_template"]
    assert model.render_chat(chat) == tok.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    )
    expected = tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    model.session = counting = _Counting(model.session)
    first = model.chat(chat, max_tokens=6, temperature=0)
    assert counting.prefills[0] == list(expected) and first.prompt_tokens == len(expected)
    chat2 = [*chat, {"role": "assistant", "content": first.text}, {"role": "user", "content": "More."}]
    second = model.chat(chat2, max_tokens=6, temperature=0)
    assert len(counting.prefills[1]) < second.prompt_tokens // 2  # the first turn stayed in the cache
    with load(hf_dir, backend="float64", max_len=128) as fresh:
        assert fresh.chat(chat2, max_tokens=6, temperature=0).token_ids == second.token_ids
    streamed = list(model.chat_stream(chat2, max_tokens=6, temperature=0))
    assert [e.token_id for e in streamed] == second.token_ids


def test_generation_config_gives_the_default_options(hf_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(hf_dir, d)
    gen = d / "generation_config.json"
    with load(d, backend="float64") as m:  # no do_sample: greedy, as transformers' generate
        assert m.default_options == SamplingOptions(temperature=0) and m.tokenizer.eos_ids == {4}
    gen.write_text(json.dumps({"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95,
                               "max_new_tokens": 7, "repetition_penalty": -1}))  # fmt: skip
    with load(d, backend="float64") as m:
        o = m.default_options
        assert (o.temperature, o.top_k, o.top_p, o.min_p, o.max_tokens) == (0.6, 20, 0.95, 0.0, 7)
        assert o.repetition_penalty == 1.0  # out of range in the file: ignored
        assert m.generate(PROMPT, seed=1).completion_tokens <= 7
    gen.write_text(json.dumps({"do_sample": False, "temperature": 0.6}))
    with load(d, backend="float64") as m:
        assert m.default_options.temperature == 0.0


def test_an_anekit_checkpoint_samples_with_the_sampling_options_defaults(checkpoint):
    with load(checkpoint[0], backend="float64") as m:
        assert m.default_options == SamplingOptions()


def test_the_engine_decoder_on_the_reference_backend_generates_the_float64_text(hf_dir, model):
    with load(hf_dir, backend="reference", max_len=64) as m:
        assert isinstance(m, LanguageModel) and m.backend == "reference"
        ids = m.encode(PROMPT)
        ref = model.logits(ids)
        np.testing.assert_allclose(m.logits(ids), ref, atol=0.05 * np.abs(ref).max())  # fp16 path
        want = model.generate(PROMPT, max_tokens=8, temperature=0)
        logits = model.logits(ids + want.token_ids)[len(ids) - 1 :]
        margins = np.sort(logits, axis=1)[:, -1] - np.sort(logits, axis=1)[:, -2]
        got = m.generate(PROMPT, max_tokens=8, temperature=0)
        n = int(np.argmax(margins < 0.05)) if (margins < 0.05).any() else 8  # up to a near tie
        assert got.token_ids[:n] == want.token_ids[:n]


# ---------------------------------------------------------------------------------------------
# anekit checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from anekit.model.config import ModelConfig
    from anekit.model.reference import init_params
    from anekit.train.checkpoint import save_checkpoint
    from anekit.train.tokenizers import load_tokenizer
    from micro_model import MICRO

    config = ModelConfig(**MICRO)
    params = init_params(config, 0, scheme="normal")
    path = tmp_path_factory.mktemp("run") / "checkpoint"
    save_checkpoint(path, config, params, tokenizer=load_tokenizer(data_path("tokenizer.json")))
    return path, config, params


def test_an_anekit_checkpoint_generates_its_reference_greedy_continuation(checkpoint):
    from anekit.model.reference import forward

    path, config, params = checkpoint
    with load(path.parent, backend="float64") as m:  # the run directory holding checkpoint/
        assert m.name == "micro" and m.context_length == config.seq_len and m.chat_template is None
        ids = m.encode("the tree")
        assert ids[0] == m.tokenizer.bos_id  # anekit's convention: BOS before a prompt
        assert m.encode("") == [m.tokenizer.bos_id]
        c = m.generate("the tree", max_tokens=8, temperature=0)
        seq = list(ids)
        for _ in range(8):
            seq.append(int(np.argmax(forward(params, config, seq)[-1])))
        expect = seq[len(ids) :]
        eos = m.tokenizer.eos_ids
        expect = next((expect[:i] for i, t in enumerate(expect) if t in eos), expect)
        assert c.token_ids == expect
        with pytest.raises(LLMError, match="has no chat template"):
            m.chat([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"backend": "coreml"}, "backend must be one of"),
        ({"weights": "int3"}, "weights must be one of"),
        ({"max_len": 0}, "max_len must be an integer >= 1"),
        ({"max_len": 10_000}, "exceeds the model's context of 32"),
        ({"backend": "float64", "weights": "int8"}, "needs the kernels"),
    ],
)
def test_load_options_are_checked(checkpoint, kw, match):
    with pytest.raises(LLMError, match=match):
        load(checkpoint[0], **kw)


def test_a_home_relative_path_is_expanded(checkpoint, monkeypatch):
    path = checkpoint[0]
    monkeypatch.setenv("HOME", str(path.parent))
    with load(f"~/{path.name}", backend="float64") as m:
        assert m.name == "micro"


def test_a_path_that_is_no_model_is_an_llm_error(tmp_path):
    with pytest.raises(LLMError, match="no such"):
        load(tmp_path / "missing")
    with pytest.raises(LLMError, match="neither"):
        load(tmp_path)
