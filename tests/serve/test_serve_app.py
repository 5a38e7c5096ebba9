"""The OpenAI-compatible API end to end: the real app under uvicorn on 127.0.0.1, the official `openai`
client, a real tiny model (conftest: random Qwen2 on the reference backend).

What the server returns is checked against the library call it wraps, made on a second instance of
the same model (`LanguageModel.generate` / `chat`), and for stop strings against the plain text.
"""

from __future__ import annotations

import httpx2 as httpx
import openai
import pytest
from serve_helpers import TIMEOUT, serving

from anekit.llm import SamplingOptions
from anekit.serve import create_app

NAME = "tiny-qwen2"
CHAT = [
    {"role": "system", "content": "You are a small model."},
    {"role": "user", "content": "Hello, world! How are you today?"},
]


@pytest.fixture(scope="module")
def oracle(load_tiny):
    """The library, called directly: what the server must answer."""
    return load_tiny()


@pytest.fixture(scope="module")
def base(load_tiny):
    with serving(create_app(load_tiny(), queue_size=2, model_name=NAME)) as url:
        yield url


@pytest.fixture
def api(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=TIMEOUT)


def greedy(max_tokens: int, **kw) -> SamplingOptions:
    return SamplingOptions(max_tokens=max_tokens, temperature=0.0, **kw)


def usage_of(c) -> tuple[int, int, int]:
    return (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens)


# -- models, health --------------------------------------------------------------------------------


def test_models_lists_the_one_model_and_retrieves_it(api):
    models = api.models.list()
    assert [m.id for m in models.data] == [NAME]
    assert models.data[0].owned_by == "anekit"
    assert api.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError) as missing:
        api.models.retrieve("gpt-4")
    assert missing.value.response.json()["error"]["code"] == "model_not_found"


def test_health(base):
    state = httpx.get(f"{base}/health", timeout=TIMEOUT).json()
    assert state["status"] == "ok" and state["model"] == NAME
    assert state["queue_size"] == 2 and state["running"] == 0 and state["waiting"] == 0


# -- completions -----------------------------------------------------------------------------------


def test_completion_answers_what_the_library_generates(api, oracle):
    prompt = "Once upon a time there was"
    want = oracle.generate(prompt, greedy(12))
    got = api.completions.create(model=NAME, prompt=prompt, max_tokens=12, temperature=0)
    assert got.object == "text_completion" and got.model == NAME and got.id.startswith("cmpl-")
    assert len(got.choices) == 1
    assert got.choices[0].text == want.text
    assert got.choices[0].finish_reason == want.finish_reason
    assert usage_of(got) == (
        want.prompt_tokens,
        want.completion_tokens,
        want.prompt_tokens + want.completion_tokens,
    )


def test_completion_takes_token_ids_and_defaults_to_16_tokens(api, oracle):
    ids = oracle.encode("The quick brown fox")
    want = oracle.generate(ids, greedy(16))
    got = api.completions.create(model=NAME, prompt=ids, temperature=0)
    assert got.choices[0].text == want.text
    assert got.usage.completion_tokens == want.completion_tokens <= 16


def test_completion_stream_gives_the_same_text_and_usage(api):
    kw = dict(model=NAME, prompt="The sun was shining and", max_tokens=20, temperature=0)
    whole = api.completions.create(**kw)
    chunks = list(api.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert "".join(texts) == whole.choices[0].text
    assert len(texts) > 1  # streamed token by token, not in one piece
    assert reasons[-1] == whole.choices[0].finish_reason and set(reasons[:-1]) == {None}
    assert chunks[-1].choices == [] and usage_of(chunks[-1]) == usage_of(whole)
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_ends_with_done(base):
    body = {"model": NAME, "prompt": "Hello", "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=TIMEOUT) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-1]) and '"usage"' not in "".join(events)


def test_stop_strings_end_the_text_before_them(api, oracle):
    prompt = "Numbers: 0 1 2"
    plain = oracle.generate(prompt, greedy(24)).text
    # a stop string taken from the middle of the greedy text: the answer is the text before its
    # first occurrence, and the reason "stop"
    stop = next(
        plain[i : i + 2] for i in range(len(plain) // 2, len(plain) - 1) if "\ufffd" not in plain[i : i + 2]
    )
    for given in (stop, [stop, "never appears"]):
        got = api.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0, stop=given)
        assert got.choices[0].text == plain[: plain.index(stop)]
        assert got.choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats_and_matches_the_library(api, oracle):
    extra = {"top_k": 20, "min_p": 0.01, "repetition_penalty": 1.1}
    kw = dict(model=NAME, prompt="A small model", max_tokens=16, temperature=1.3, top_p=0.95, seed=7)
    first = api.completions.create(**kw, extra_body=extra)
    again = api.completions.create(**kw, extra_body=extra)
    want = oracle.generate(
        "A small model", SamplingOptions(max_tokens=16, temperature=1.3, top_p=0.95, seed=7, **extra)
    )
    assert first.choices[0].text == again.choices[0].text == want.text


# -- chat ------------------------------------------------------------------------------------------


def test_chat_answers_what_the_library_replies(api, oracle):
    want = oracle.chat(CHAT, greedy(10))
    got = api.chat.completions.create(model=NAME, messages=CHAT, max_completion_tokens=10, temperature=0)
    assert got.object == "chat.completion" and got.id.startswith("chatcmpl-")
    message = got.choices[0].message
    assert message.role == "assistant" and message.content == want.text
    assert got.choices[0].finish_reason == want.finish_reason
    assert usage_of(got) == (
        want.prompt_tokens,
        want.completion_tokens,
        want.prompt_tokens + want.completion_tokens,
    )
    # max_tokens (the older name) is taken too
    older = api.chat.completions.create(model=NAME, messages=CHAT, max_tokens=10, temperature=0)
    assert older.choices[0].message.content == want.text


def test_chat_stream_gives_the_same_text_and_usage(api):
    kw = dict(model=NAME, messages=CHAT, max_completion_tokens=15, temperature=0)
    whole = api.chat.completions.create(**kw)
    chunks = list(api.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(deltas) == whole.choices[0].message.content
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and usage_of(chunks[-1]) == usage_of(whole)
    assert len({c.id for c in chunks}) == 1


def test_chat_takes_text_content_parts_and_the_developer_role(api, oracle):
    parts = [
        {"role": "developer", "content": "You are a small model."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Hello, world! "},
                {"type": "text", "text": "How are you today?"},
            ],
        },
    ]
    got = api.chat.completions.create(model=NAME, messages=parts, max_completion_tokens=6, temperature=0)
    assert got.choices[0].message.content == oracle.chat(CHAT, greedy(6)).text


# -- errors ----------------------------------------------------------------------------------------


def error_of(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "x"}, "model"),
        ("/v1/completions", {"model": NAME}, "prompt"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "temperature": -1}, "temperature"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "temperature": "hot"}, "temperature"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "max_tokens": "5"}, "max_tokens"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "top_p": 0}, "top_p"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "n": 2}, "n"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "stop": [""]}, "stop"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "stop": 3}, "stop"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "seed": -1}, "seed"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "top_k": -1}, "top_k"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
        ("/v1/completions", {"model": NAME, "prompt": "x", "logprobs": 2}, "logprobs"),
        (
            "/v1/completions",
            {"model": NAME, "prompt": "x", "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        ("/v1/completions", {"model": NAME, "prompt": ["a", "b"]}, "prompt"),
        ("/v1/completions", {"model": NAME, "prompt": [1, 10**6]}, "prompt"),
        ("/v1/chat/completions", {"model": NAME}, "messages"),
        ("/v1/chat/completions", {"model": NAME, "messages": []}, "messages"),
        (
            "/v1/chat/completions",
            {"model": NAME, "messages": [{"role": "wizard", "content": "x"}]},
            "messages",
        ),
        ("/v1/chat/completions", {"model": NAME, "messages": "hi"}, "messages"),
        (
            "/v1/chat/completions",
            {"model": NAME, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages",
        ),
        (
            "/v1/chat/completions",
            {"model": NAME, "messages": MSG, "max_completion_tokens": -3},
            "max_completion_tokens",
        ),
        ("/v1/chat/completions", {"model": NAME, "messages": MSG, "logprobs": True}, "logprobs"),
        ("/v1/chat/completions", {"model": NAME, "messages": MSG, "tools": [{"type": "function"}]}, "tools"),
        (
            "/v1/chat/completions",
            {"model": NAME, "messages": MSG, "presence_penalty": 1.0},
            "presence_penalty",
        ),
    ],
)
def test_an_invalid_field_is_400_naming_it(base, path, body, param):
    error = error_of(httpx.post(f"{base}{path}", json=body, timeout=TIMEOUT))
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"",
        b"[1, 2]",
        b'"text"',
        b"\xff\xfe",
        # found by the serve fuzz target: json's RecursionError was a 500
        b'{"model": "m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_a_malformed_body_is_400(base, content):
    response = httpx.post(
        f"{base}/v1/chat/completions",
        content=content,
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    error = error_of(response)
    assert error["type"] == "invalid_request_error"


def test_a_json_body_is_read_whatever_its_content_type(base):
    # curl -d labels its body application/x-www-form-urlencoded
    body = b'{"model": "%s", "prompt": "Hi", "max_tokens": 2}' % NAME.encode()
    for content_type in ("application/x-www-form-urlencoded", "text/plain"):
        response = httpx.post(
            f"{base}/v1/completions", content=body, headers={"Content-Type": content_type}, timeout=TIMEOUT
        )
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] >= 1


def test_the_openai_client_sees_a_bad_request(api):
    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model=NAME, messages=MSG, n=3)
    assert bad.value.status_code == 400 and bad.value.param == "n"


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_longer_than_the_context_is_400_before_any_stream(api, oracle, stream):
    words = "the quick brown fox jumps over the lazy dog " * (oracle.context_length // 4)
    assert len(oracle.encode(words)) > oracle.context_length
    with pytest.raises(openai.BadRequestError) as bad:
        api.completions.create(model=NAME, prompt=words, max_tokens=2, stream=stream)
    error = bad.value.response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"


def test_another_model_is_404(api, base):
    with pytest.raises(openai.NotFoundError) as missing:
        api.completions.create(model="gpt-4o", prompt="x")
    assert missing.value.response.json()["error"]["param"] == "model"
    error = error_of(httpx.post(f"{base}/v1/chat/completions", json={"model": "x", "messages": MSG}), 404)
    assert error["code"] == "model_not_found"


def test_an_error_quoting_a_lone_surrogate_is_still_sent(base):
    """Found by the serve fuzz target: JSON may escape a lone surrogate ("\\udcff"), which has no UTF-8
    encoding; the 404 quoting that model name failed to render (a 500)."""
    response = httpx.post(
        f"{base}/v1/completions",
        content=b'{"model": "\\udcff", "prompt": "x"}',
        headers={"Content-Type": "application/json"},
        timeout=TIMEOUT,
    )
    error = error_of(response, 404)
    assert error["code"] == "model_not_found" and "\udcff" in error["message"]


def test_unknown_paths_and_methods_answer_openai_errors(base):
    assert error_of(httpx.get(f"{base}/v1/nothing", timeout=TIMEOUT), 404)["type"] == "invalid_request_error"
    assert (
        error_of(httpx.get(f"{base}/v1/completions", timeout=TIMEOUT), 405)["type"] == "invalid_request_error"
    )
