"""The OpenAI-compatible HTTP API over one `LanguageModel`: `/v1/models`, `/v1/completions`,
`/v1/chat/completions` (plain JSON or server-sent events), `/health`.

Semantics follow the OpenAI API reference (https://platform.openai.com/docs/api-reference/completions,
.../chat): `max_tokens` (chat: `max_completion_tokens` first), `temperature`, `top_p`, `stop` (a string
or a list), `seed`, `n` (only 1 here), `stream` with `stream_options.include_usage`, `usage`,
`finish_reason` "stop" or "length". Extra sampling fields other servers accept are taken too:
`top_k`, `min_p`, `repetition_penalty`. Fields this server cannot honour (logprobs, tools, n > 1, ...)
are refused with 400 rather than silently ignored; unknown fields are ignored, as clients send
vendor-specific ones.

Every error is OpenAI's body `{"error": {"message", "type", "param", "code"}}`: 400 for malformed
JSON and invalid fields (not FastAPI's 422), 404 for another model's name or an unknown path, 503
when the queue is full or the server is shutting down.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from . import sse
from .queue import END, EngineQueue, Job, QueueClosed, QueueFull

log = logging.getLogger("anekit.serve")

# -------------------------------------------------------------------------------------------------
# Request bodies
# -------------------------------------------------------------------------------------------------

_PositiveInt = Annotated[StrictInt, Field(ge=1)]
_TokenId = Annotated[StrictInt, Field(ge=0)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool | None = None


class _GenerationRequest(BaseModel):
    """Fields both endpoints share. `None` means "the default", as OpenAI treats an explicit null."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: _PositiveInt | None = None
    temperature: Annotated[float, Field(ge=0.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: StrictInt | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: StrictInt | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # beyond OpenAI, as vLLM and llama.cpp's server accept them
    top_k: Annotated[StrictInt, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] | None = None


class CompletionRequest(_GenerationRequest):
    prompt: str | list[_TokenId] | list[str] | list[list[_TokenId]]
    echo: StrictBool | None = None
    logprobs: StrictInt | None = None
    best_of: StrictInt | None = None
    suffix: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_GenerationRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: _PositiveInt | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None


# -------------------------------------------------------------------------------------------------
# Errors
# -------------------------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        headers = {"Retry-After": "1"} if self.status == 503 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def _invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def _refused(e: Exception, prompt_param: str) -> APIError:
    """An `LLMError` the model raised for this request: a prompt longer than the context (OpenAI's
    code `context_length_exceeded`), a token id outside the vocabulary, an empty prompt."""
    return _invalid(
        str(e), prompt_param, "context_length_exceeded" if _is_context_full(e) else "invalid_value"
    )


def _is_context_full(e: Exception) -> bool:
    from ..llm.errors import ContextFull

    return isinstance(e, ContextFull)


def _busy(e: QueueFull | QueueClosed) -> APIError:
    code = "queue_full" if isinstance(e, QueueFull) else "shutting_down"
    return APIError(503, str(e), "server_error", None, code)


#: what pydantic appends to an error's location for the member of a union that failed
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _field_path(loc) -> str:
    """`messages[0].role` from pydantic's ('body', 'messages', 0, 'role'), without union type tags
    (('body', 'stop', 'str')) such as `str` or `list[constrained-int]`."""
    path = ""
    for part in list(loc)[1:]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier() and part not in _TYPE_TAGS:
            path += f".{part}" if path else part
    return path


async def _parse(request: Request, schema: type[BaseModel]) -> Any:
    """The request body as `schema`. Read as JSON whatever its Content-Type (the API has no other
    body; `curl -d` labels JSON as a form), so every malformed body gets the same 400."""
    raw = await request.body()
    if not raw.strip():
        raise _invalid("the request has no body; send a JSON object", code="invalid_json")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise _invalid(
            f"the request body is not valid JSON ({e}); send a JSON object", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(data), "a number"
        )
        raise _invalid(f"the request body must be a JSON object, not {kind}", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise _validation_message([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None


def _validation_message(errors: list[dict]) -> APIError:
    """The first problem pydantic found, as one sentence naming the field (`param`). `errors` are
    FastAPI's (locations start with "body")."""
    if not errors:
        return _invalid("the request body is invalid")
    first = errors[0]
    kind = first.get("type", "")
    loc = [str(part) for part in first.get("loc", ())[1:]]
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return _invalid(
            f"the request body is not valid JSON ({detail}); send a JSON object", code="invalid_json"
        )
    if not loc:
        if kind == "missing":
            return _invalid("the request has no body; send a JSON object", code="invalid_json")
        return _invalid(
            f"the request body must be a JSON object: {first.get('msg', '')}", code="invalid_json"
        )
    # union members append their type to the location (`prompt.str`); the field is the first part
    param = loc[0]
    where = _field_path(first.get("loc", ()))
    if kind == "missing":
        return _invalid(f"'{where}' is required", param=param, code="missing_required_parameter")
    got = first.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) or len(repr(got)) < 80 else type(got).__name__
    return _invalid(
        f"invalid value for '{where}': {first.get('msg', 'invalid')} (got {shown})",
        param=param,
        code="invalid_value",
    )


# -------------------------------------------------------------------------------------------------
# What the engine thread sends the HTTP side
# -------------------------------------------------------------------------------------------------


@dataclass
class _Tally:
    """What a generation produced so far (usage and the final answer)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    text: str = ""
    finish_reason: str | None = None

    def add(self, event: Any) -> None:
        if event.token_id is not None:
            self.completion_tokens += 1
        self.text += event.text
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def _decode_work(open_stream: Callable[[], Iterator[Any]]):
    """The engine-thread side of one request: decode token by token, handing each `StreamEvent` over,
    until the last one or until the job is cancelled (the client left, the server stops)."""

    def work(job: Job) -> None:
        events = open_stream()
        try:
            while not job.cancelled:
                event = next(events, None)  # decodes one token
                if event is None:
                    break
                job.emit(event)
                if event.finish_reason is not None:
                    break
        finally:
            close = getattr(events, "close", None)
            if close is not None:  # LanguageModel.stream: closing the iterator stops decoding
                close()

    return work


# -------------------------------------------------------------------------------------------------
# The app
# -------------------------------------------------------------------------------------------------


def create_app(model: Any, *, queue_size: int = 8, model_name: str | None = None) -> FastAPI:
    """The OpenAI-compatible app serving `model` (an `anekit.llm.LanguageModel`) under the name
    `model_name` (default: `model.name`). One request decodes at a time; up to `queue_size` more wait,
    and further ones are answered 503. The app does not own the model: close it after the server
    stops."""
    from ..llm.errors import LLMError
    from ..llm.sampling import SamplingOptions

    name = model_name if model_name is not None else str(model.name)
    engine = EngineQueue(queue_size)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        # wait for the engine thread off the event loop: it stops at its next token
        import anyio

        engine.close(wait=0)
        await anyio.to_thread.run_sync(lambda: engine.close(wait=30))

    app = FastAPI(title="anekit", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.model = model
    app.state.model_name = name

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _validation_message(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = {
            404: f"no such path: {request.method} {request.url.path}",
            405: f"method {request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        return APIError(exc.status_code, message, kind).response()

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("internal error while answering %s %s", request.method, request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").response()

    # -- checks and options -------------------------------------------------------------------------

    def check_model(requested: str) -> None:
        if requested != name:
            raise APIError(
                404,
                f"the model '{requested}' does not exist; this server serves '{name}' (GET /v1/models)",
                "invalid_request_error",
                "model",
                "model_not_found",
            )

    def refuse(param: str, why: str) -> APIError:
        return _invalid(
            f"'{param}'{' ' + why if why else ''} is not supported by this server",
            param=param,
            code="unsupported_parameter",
        )

    def common_checks(body: _GenerationRequest) -> None:
        check_model(body.model)
        if body.n not in (None, 1):
            raise _invalid(
                f"'n' must be 1 (one engine decodes one sequence), got {body.n}", "n", "unsupported_value"
            )
        for param in ("presence_penalty", "frequency_penalty"):
            if getattr(body, param) not in (None, 0):
                raise refuse(param, "other than 0 (use repetition_penalty)")
        if body.logit_bias:
            raise refuse("logit_bias", "")
        if body.stream_options is not None and not body.stream:
            raise _invalid("'stream_options' is only allowed with 'stream': true", "stream_options")

    defaults = getattr(model, "default_options", None) or SamplingOptions()

    def sampling(body: _GenerationRequest, max_tokens: int | None, default_max: int) -> Any:
        """The request's options; a field it leaves out (or null) takes the model's default from
        generation_config.json (LanguageModel.default_options), as vLLM does, since the model's
        authors chose them for it; without one, the OpenAI defaults (temperature 1, top_p 1)."""
        given = {
            field: getattr(body, field)
            for field in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
            if getattr(body, field) is not None
        }
        given["max_tokens"] = max_tokens if max_tokens is not None else default_max
        given["stop"] = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        given["seed"] = body.seed
        try:
            return defaults.updated(**given)
        except LLMError as e:  # OptionError names the option: the request field of the same name
            raise _invalid(str(e), getattr(e, "option", None), "invalid_value") from None

    def completion_prompt(body: CompletionRequest) -> str | list[int]:
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise _invalid(
                    f"'prompt' holds {len(prompt)} prompts; this server takes one per request",
                    "prompt",
                    "unsupported_value",
                )
            prompt = prompt[0]
        return prompt

    def chat_messages(body: ChatCompletionRequest) -> list[dict[str, str]]:
        messages = []
        for i, message in enumerate(body.messages):
            content = message.content
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.type != "text" or part.text is None:
                        raise _invalid(
                            f"messages[{i}].content holds a '{part.type}' part; only text parts "
                            "are supported",
                            "messages",
                            "unsupported_value",
                        )
                    parts.append(part.text)
                content = "".join(parts)
            # "developer" is OpenAI's newer name for "system"; chat templates know only "system"
            role = "system" if message.role == "developer" else message.role
            entry = {"role": role, "content": content or ""}
            if message.name is not None:
                entry["name"] = message.name
            messages.append(entry)
        return messages

    def count_tokens(prompt: str | list[int], param: str, add_special_tokens: bool = True) -> int:
        """The prompt's length in tokens, as `LanguageModel` encodes it: a plain prompt with the
        tokenizer's special tokens (BOS), a rendered chat template without (the template writes its
        own, as transformers' apply_chat_template encodes). Checked before the request is queued."""
        try:
            return len(model.encode(prompt, add_special_tokens=add_special_tokens))
        except LLMError as e:  # a token id outside the vocabulary
            raise _refused(e, param) from None

    # -- running a request ------------------------------------------------------------------------

    async def run(
        request: Request,
        work: Callable[[Job], None],
        *,
        prompt_param: str,
        prompt_tokens: int,
        stream: bool,
        chunks: Callable[[Job, _Tally, Any], AsyncIterator[bytes]],
        answer: Callable[[_Tally], dict],
    ) -> Response:
        try:
            job = engine.submit(work)
        except (QueueFull, QueueClosed) as e:
            raise _busy(e) from None
        watch = sse.DisconnectWatch(request)
        handed_over = False
        try:
            tally = _Tally(prompt_tokens=prompt_tokens)
            # wait for the first token: a prompt the model refuses (too long for the context) is
            # still answered 400, before a stream has begun
            first = await watch.race(job.next())
            if stream:
                watch.stop()
                handed_over = True
                return sse.EventStreamResponse(chunks(job, tally, first), on_close=lambda: engine.cancel(job))

            async def collect() -> None:
                item = first
                while item is not END:
                    tally.add(item)
                    item = await job.next()

            await watch.race(collect())
            return JSONResponse(answer(tally))
        except sse.ClientGone:
            return Response(status_code=499)  # nobody reads it; nginx's code for "client closed request"
        except (QueueFull, QueueClosed) as e:
            raise _busy(e) from None
        except LLMError as e:
            raise _refused(e, prompt_param) from None
        finally:
            watch.stop()
            if not handed_over:
                engine.cancel(job)

    def stream_error(e: BaseException, prompt_param: str) -> bytes:
        if isinstance(e, (QueueFull, QueueClosed)):
            err = _busy(e)
        elif isinstance(e, LLMError):
            err = _refused(e, prompt_param)
        else:
            log.error("internal error while streaming", exc_info=e)
            err = APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error")
        return sse.event(
            {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
        )

    # -- routes -------------------------------------------------------------------------------------

    def model_card() -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "anekit"}

    @app.get("/health")
    async def health():
        stats = engine.stats()
        status = 503 if stats["closed"] else 200
        return JSONResponse(
            {"status": "shutting_down" if stats["closed"] else "ok", "model": name, **stats},
            status_code=status,
        )

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        check_model(model_id)
        return model_card()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _parse(request, CompletionRequest)
        common_checks(body)
        if body.echo:
            raise refuse("echo", "true")
        if body.logprobs is not None:
            raise refuse("logprobs", "")
        if body.best_of not in (None, 1):
            raise refuse("best_of", "other than 1")
        if body.suffix:
            raise refuse("suffix", "")
        prompt = completion_prompt(body)
        # OpenAI's default for /v1/completions is 16 tokens
        options = sampling(body, body.max_tokens, 16)
        prompt_tokens = count_tokens(prompt, "prompt")
        work = _decode_work(lambda: model.stream(prompt, options))
        ident, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)

        def chunk(
            text: str, finish_reason: str | None, usage: dict | None = None, choices: bool = True
        ) -> bytes:
            data: dict[str, Any] = {
                "id": ident,
                "object": "text_completion",
                "created": now,
                "model": name,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]
                if choices
                else [],
            }
            if include_usage:
                data["usage"] = usage
            return sse.event(data)

        async def chunks(job: Job, tally: _Tally, first: Any) -> AsyncIterator[bytes]:
            item = first
            try:
                while item is not END:
                    tally.add(item)
                    if item.text or item.finish_reason is not None:
                        yield chunk(item.text, item.finish_reason)
                    item = await job.next()
                if include_usage:
                    yield chunk("", None, tally.usage(), choices=False)
                yield sse.DONE
            except Exception as e:
                yield stream_error(e, "prompt")

        def answer(tally: _Tally) -> dict:
            return {
                "id": ident,
                "object": "text_completion",
                "created": now,
                "model": name,
                "system_fingerprint": f"anekit-{__version__}",
                "choices": [
                    {
                        "index": 0,
                        "text": tally.text,
                        "logprobs": None,
                        "finish_reason": tally.finish_reason or "stop",
                    }
                ],
                "usage": tally.usage(),
            }

        return await run(
            request,
            work,
            prompt_param="prompt",
            prompt_tokens=prompt_tokens,
            stream=bool(body.stream),
            chunks=chunks,
            answer=answer,
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _parse(request, ChatCompletionRequest)
        common_checks(body)
        if body.logprobs:
            raise refuse("logprobs", "true")
        if body.top_logprobs:
            raise refuse("top_logprobs", "")
        for param in ("tools", "functions"):
            if getattr(body, param):
                raise refuse(param, "")
        for param in ("tool_choice", "function_call"):
            if getattr(body, param) not in (None, "none"):
                raise refuse(param, "")
        if body.response_format not in (None, {"type": "text"}):
            raise refuse("response_format", 'other than {"type": "text"}')
        messages = chat_messages(body)
        try:
            rendered = model.render_chat(messages)
        except LLMError as e:
            raise _invalid(str(e), "messages", "invalid_value") from None
        # no limit asked: as many tokens as the context holds (OpenAI: up to the context length)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        options = sampling(body, max_tokens, int(model.context_length))
        prompt_tokens = count_tokens(rendered, "messages", add_special_tokens=False)
        work = _decode_work(lambda: model.chat_stream(messages, options))
        ident, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
        fingerprint = f"anekit-{__version__}"

        def chunk(
            delta: dict, finish_reason: str | None, usage: dict | None = None, choices: bool = True
        ) -> bytes:
            data: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": now,
                "model": name,
                "system_fingerprint": fingerprint,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
                if choices
                else [],
            }
            if include_usage:
                data["usage"] = usage
            return sse.event(data)

        async def chunks(job: Job, tally: _Tally, first: Any) -> AsyncIterator[bytes]:
            item = first
            try:
                yield chunk({"role": "assistant", "content": ""}, None)
                while item is not END:
                    tally.add(item)
                    if item.text:
                        yield chunk({"content": item.text}, None)
                    if item.finish_reason is not None:
                        yield chunk({}, item.finish_reason)
                    item = await job.next()
                if include_usage:
                    yield chunk({}, None, tally.usage(), choices=False)
                yield sse.DONE
            except Exception as e:
                yield stream_error(e, "messages")

        def answer(tally: _Tally) -> dict:
            return {
                "id": ident,
                "object": "chat.completion",
                "created": now,
                "model": name,
                "system_fingerprint": fingerprint,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": tally.text},
                        "logprobs": None,
                        "finish_reason": tally.finish_reason or "stop",
                    }
                ],
                "usage": tally.usage(),
            }

        return await run(
            request,
            work,
            prompt_param="messages",
            prompt_tokens=prompt_tokens,
            stream=bool(body.stream),
            chunks=chunks,
            answer=answer,
        )

    return app
