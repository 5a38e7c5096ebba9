"""Fuzz target `serve`: OpenAI-style request bodies POSTed to the app of `anekit.serve.create_app`.

The app serves a tiny model made once per process (the Llama seed of the `model` target,
`anekit.fuzz.model_dir`, on the float64 session with a 64-token context) and is called in process
through ASGI (`_post`: the request body, then a client that stays connected until the answer ends),
one request at a time. Each case starts from a valid body for `/v1/completions` or
`/v1/chat/completions` and applies zero to four mutations: fields set to other JSON values (wrong
types, huge or negative numbers, NaN and infinities, nested junk), fields deleted, the prompt (token
ids out of range, lists of prompts, nested lists), the messages (roles, content parts, null, empty),
`stop`, `n`, `stream` and `stream_options`, and the raw body (not JSON, not UTF-8, truncated, nested
too deep, numbers too long to parse).

Acceptable outcomes: 200 with a body of the endpoint's shape (JSON, or server-sent events ending in
``data: [DONE]``), or a 4xx / 503 whose body is OpenAI's error object
``{"error": {"message", "type", "param", "code"}}`` (counted as an anekit error: a refusal with a
message). A 500, another status, a body that is not that JSON, or a stream that ends in an internal
error is a defect ("other").
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass, field

import numpy as np

from ..errors import AnekitError

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")
MODEL_NAME = "fuzz-model"
CONTEXT = 64
ERROR_KEYS = {"message", "type", "param", "code"}


class RequestRefused(AnekitError):
    """The server refused the request with a 4xx or 503 and OpenAI's error body (an acceptable outcome)."""


@dataclass
class Case:
    endpoint: str
    body: object  #: the JSON value sent, or bytes sent as they are
    mutations: list[tuple] = field(default_factory=list)


# --- the app ----------------------------------------------------------------------------------------
@functools.cache
def app():
    """The app over the tiny model (made once per process)."""
    from ..llm import load
    from ..serve import create_app
    from .model_dir import seeds

    try:
        model = load(seeds()["llama"], backend="float64", max_len=CONTEXT)
        return create_app(model, queue_size=2, model_name=MODEL_NAME)
    except Exception as e:  # not an AnekitError: a broken seed must not pass as refused cases
        raise RuntimeError(f"cannot make the app to fuzz: {type(e).__name__}: {e}") from e


@functools.cache
def _loop() -> asyncio.AbstractEventLoop:
    return asyncio.new_event_loop()


async def _post(asgi, path: str, body: bytes) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one POST through ASGI (spec 2.4: a client that stays connected)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    done = asyncio.Event()
    delivered = False
    status, headers, chunks = 0, {}, []

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    try:
        await asgi(scope, receive, send)
    finally:
        done.set()
    return status, headers, b"".join(chunks)


# --- making cases -----------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


VALUES: list[object] = [
    None,
    True,
    False,
    0,
    1,
    2,
    -1,
    3,
    0.5,
    1.0,
    -0.5,
    1e-300,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    2**31,
    2**63,
    2**64 + 1,
    10**30,
    "",
    "x",
    "1",
    "true",
    "\udcff",
    "é" * 10,
    [],
    [1],
    ["a", "b"],
    [[1, 2]],
    {},
    {"a": 1},
    {"type": "text"},
    [{"a": [{"b": None}]}],
    "z" * 20000,
]
FIELDS = [
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "echo",
    "logprobs",
    "top_logprobs",
    "best_of",
    "suffix",
    "tools",
    "tool_choice",
    "response_format",
    "prompt",
    "messages",
    "extra_field",
]
PROMPTS: list[object] = [
    "hello cat",
    "",
    " ",
    "<|im_end|>",
    "<s><s>",
    "hello " * 40,  # longer than the context
    [1, 2, 3],
    [],
    [63],
    [64],
    [-1],
    [2**40],
    [1.5],
    [True],
    ["hello"],
    ["a", "b"],
    [[1, 2]],
    [[1], [2]],
    [[]],
    [None],
    "\x00\x01",
    "\ud83d",
]
MESSAGES: list[object] = [
    [{"role": "user", "content": "hello"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    [{"role": "developer", "content": "x"}, {"role": "user", "content": "y"}],
    [{"role": "assistant", "content": None}],
    [{"role": "tool", "content": "42", "name": "calc"}],
    [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": " there"}]}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
    [{"role": "user", "content": [{"type": "text"}]}],
    [{"role": "user", "content": [{"text": "no type"}]}],
    [{"role": "robot", "content": "x"}],
    [{"role": None, "content": "x"}],
    [{"content": "no role"}],
    [{"role": "user"}],
    [{"role": "user", "content": 5}],
    [{"role": "user", "content": {"a": 1}}],
    [{"role": "user", "content": "hello " * 30}],  # longer than the context once rendered
    [{"role": "user", "content": "x", "name": 7}],
    [],
    [[]],
    ["hello"],
    [None],
    {"role": "user", "content": "x"},
    "hello",
]
STOPS: list[object] = [
    None,
    "",
    "a",
    "\n",
    ["a", "b"],
    [],
    [""],
    ["a"] * 10,
    [1],
    [None],
    "s" * 5000,
    5,
    {"a": 1},
]
_RAW_KINDS = ["not-json", "latin1", "truncate", "empty", "array", "number", "deep", "long-number",
              "nan-literal", "duplicate-keys", "bom", "huge-string"]  # fmt: skip


def _valid(endpoint: str, rng: np.random.Generator) -> dict:
    body: dict = {"model": MODEL_NAME, "max_tokens": int(rng.integers(1, 4))}
    if endpoint == ENDPOINTS[0]:
        body["prompt"] = _pick(rng, ["hello cat", "the dog", [1, 5, 9]])
    else:
        body["messages"] = _pick(rng, MESSAGES[:3])
    if rng.random() < 0.5:
        body["temperature"] = _pick(rng, [0, 0.7, 1.0])
    if rng.random() < 0.3:
        body["stream"] = True
        if rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
    if rng.random() < 0.2:
        body["seed"] = int(rng.integers(0, 100))
    return body


def _mutate(body: dict, rng: np.random.Generator) -> tuple:
    r = int(rng.integers(0, 10))
    if r in (0, 1, 2):
        key, value = _pick(rng, FIELDS), _pick(rng, VALUES)
        body[key] = value
        return ("set", key, value)
    if r == 3:
        key = _pick(rng, sorted(body) or ["model"])
        body.pop(key, None)
        return ("del", key)
    if r == 4:
        body["prompt"] = _pick(rng, PROMPTS)
        return ("prompt", body["prompt"])
    if r == 5:
        body["messages"] = _pick(rng, MESSAGES)
        return ("messages", body["messages"])
    if r == 6:
        body["stop"] = _pick(rng, STOPS)
        return ("stop", body["stop"])
    if r == 7:
        key = _pick(rng, ["n", "stream", "stream_options", "max_tokens", "max_completion_tokens"])
        value = _pick(
            rng,
            {
                "n": [1, 2, 0, -1, "1", True, 1.0, None],
                "stream": [True, False, "true", 1, None, [True]],
                "stream_options": [{"include_usage": True}, {"include_usage": "yes"}, {}, [], "x", None],
                "max_tokens": [1, 2, 10**9, 2**64, 0, -1, 1.5, "3", True, None],
                "max_completion_tokens": [1, 10**9, 0, -5, "x", None],
            }[key],
        )
        body[key] = value
        return ("set", key, value)
    if r == 8:
        key = _pick(rng, ["temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed"])
        value = _pick(rng, [float("nan"), float("inf"), -1, 0, 1e-320, 1e308, 2**70, -(2**70), "0.5", [0.5]])
        body[key] = value
        return ("set", key, value)
    return ("raw", _pick(rng, _RAW_KINDS))


def make_case(rng: np.random.Generator) -> Case:
    app()  # made (the model loaded, FastAPI imported) on first use here, outside the case's time limit
    endpoint = _pick(rng, list(ENDPOINTS))
    body: object = _valid(endpoint, rng)
    mutations = []
    for _ in range(int(rng.choice([0, 1, 1, 1, 2, 2, 3, 4]))):
        m = _mutate(body, rng)
        mutations.append(m)
        if m[0] == "raw":
            body = _raw(body, m[1], rng)
            break
    return Case(endpoint, body, mutations)


def _raw(body: dict, kind: str, rng: np.random.Generator) -> bytes:
    text = json.dumps(body).encode()
    return {
        "not-json": lambda: b"model=fuzz&prompt=hi",
        "latin1": lambda: text.replace(b'"', b'"\xe9\xff', 1),
        "truncate": lambda: text[: int(rng.integers(0, len(text)))],
        "empty": lambda: b"",
        "array": lambda: b"[" + text + b"]",
        "number": lambda: b"42",
        "deep": lambda: text[:-1] + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "long-number": lambda: text[:-1] + b', "max_tokens": ' + b"9" * 5000 + b"}",
        "nan-literal": lambda: text[:-1] + b', "temperature": NaN, "top_p": -Infinity}',
        "duplicate-keys": lambda: text[:-1] + b', "model": 5}',
        "bom": lambda: b"\xef\xbb\xbf" + text,
        "huge-string": lambda: text[:-1] + b', "user": "' + b"u" * (4 << 20) + b'"}',
    }[kind]()


def _encode(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    return json.dumps(body).encode("utf-8", "surrogatepass")


# --- running a case ---------------------------------------------------------------------------------
class Defect(Exception):
    """A response the server must not give (not an AnekitError: the fuzz counts it as "other")."""


def run_case(case: Case) -> None:
    loop = _loop()
    try:
        status, headers, body = loop.run_until_complete(_post(app(), case.endpoint, _encode(case.body)))
    except Exception as e:
        # Starlette answers 500 to an exception no handler took, then raises it again to the server;
        # whatever it is (even an AnekitError), it reached the top of the app: a defect
        raise Defect(f"the app raised {type(e).__name__}: {e}") from e
    except BaseException:
        # a hang interrupted the loop mid-request: later cases get a fresh one
        _loop.cache_clear()
        raise
    check_response(case.endpoint, status, headers, body, streamed=_asked_stream(case.body))


def _asked_stream(body: object) -> bool:
    return isinstance(body, dict) and body.get("stream") is True


def _error_body(data: object) -> str:
    """Why `data` is not OpenAI's error body, or ""."""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or set(error) != ERROR_KEYS:
        return f"not OpenAI's error body: {str(data)[:300]}"
    if not isinstance(error["message"], str) or not error["message"] or not isinstance(error["type"], str):
        return f"an error without a message or type: {error}"
    if not all(error[k] is None or isinstance(error[k], str) for k in ("param", "code")):
        return f"an error whose param/code is not a string or null: {error}"
    return ""


def check_response(endpoint: str, status: int, headers: dict, body: bytes, streamed: bool) -> None:
    """Raise `RequestRefused` for an acceptable refusal, `Defect` for anything else wrong; return for
    a good answer."""
    if status == 200:
        if headers.get("content-type", "").startswith("text/event-stream"):
            _check_stream(endpoint, body)
        else:
            if streamed:
                raise Defect(f"asked to stream, got {headers.get('content-type')}")
            _check_answer(endpoint, _json(body, status))
        return
    if 400 <= status < 500 or status == 503:
        why = _error_body(_json(body, status))
        if why:
            raise Defect(f"status {status}: {why}")
        raise RequestRefused(f"{status}: {json.loads(body)['error']['message'][:200]}")
    raise Defect(f"status {status}: {body[:500]!r}")


def _json(body: bytes, status: int):
    try:
        return json.loads(body)
    except ValueError:
        raise Defect(f"status {status} with a body that is not JSON: {body[:300]!r}") from None


def _check_answer(endpoint: str, data) -> None:
    chat = endpoint.endswith("chat/completions")
    if not isinstance(data, dict) or data.get("object") != ("chat.completion" if chat else "text_completion"):
        raise Defect(f"an answer of the wrong shape: {str(data)[:300]}")
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        raise Defect(f"choices: {choices!r:.300}")
    choice = choices[0]
    text = choice.get("message", {}).get("content") if chat else choice.get("text")
    if not isinstance(text, str) or choice.get("finish_reason") not in ("stop", "length"):
        raise Defect(f"a choice of the wrong shape: {choice!r:.300}")
    usage = data.get("usage")
    if not isinstance(usage, dict) or usage.get("total_tokens") != usage.get("prompt_tokens", 0) + usage.get(
        "completion_tokens", 0
    ):
        raise Defect(f"usage of the wrong shape: {usage!r:.300}")
    # the cache holds CONTEXT tokens; the token sampled from the logits after a full cache is output
    # but never cached, so prompt + completion may reach CONTEXT + 1
    if usage["prompt_tokens"] + usage["completion_tokens"] > CONTEXT + 1:
        raise Defect(f"more tokens than the context of {CONTEXT} holds: {usage}")


def _check_stream(endpoint: str, body: bytes) -> None:
    events = [line[len(b"data: ") :] for line in body.split(b"\n") if line.startswith(b"data: ")]
    if not events:
        raise Defect(f"an event stream without events: {body[:300]!r}")
    for raw in events[:-1]:
        data = _json(raw, 200)
        if isinstance(data, dict) and "error" in data:
            why = _error_body(data)
            if (
                why
                or data["error"]["type"] == "server_error"
                and "internal error" in data["error"]["message"]
            ):
                raise Defect(f"a stream that failed: {str(data)[:300]}")
            return  # a refusal after the stream began: the stream ends there
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise Defect(f"a stream chunk of the wrong shape: {raw[:300]!r}")
    if events[-1] != b"[DONE]":
        data = _json(events[-1], 200)
        if not (isinstance(data, dict) and "error" in data and not _error_body(data)):
            raise Defect(f"a stream that does not end in [DONE]: {events[-1][:300]!r}")
        if data["error"]["type"] == "server_error" and "internal error" in data["error"]["message"]:
            raise Defect(f"a stream that failed: {str(data)[:300]}")


def describe(case: Case) -> str:
    shown = case.body if isinstance(case.body, bytes) else json.dumps(case.body, default=str)
    if isinstance(shown, (bytes, str)) and len(shown) > 600:
        shown = shown[:600] + (b"..." if isinstance(shown, bytes) else "...")
    return f"POST {case.endpoint} {shown!r}; mutations {[m for m in case.mutations]!r:.400}"


__all__ = ["Case", "RequestRefused", "app", "check_response", "describe", "make_case", "run_case"]
