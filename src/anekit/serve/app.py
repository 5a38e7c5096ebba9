"""The OpenAI-compatible HTTP API over one `LanguageModel`: `/v1/models`, `/v1/completions`,
`/v1/chat/completions` (plain JSON, or server-sent events with `stream: true`), `/health`.

Semantics follow the OpenAI API reference (https://platform.openai.com/docs/api-reference/completions,
https://platform.openai.com/docs/api-reference/chat): `max_tokens` (chat: `max_completion_tokens`
first), `temperature`, `top_p`, `stop` (a string or a list), `seed`, `n` (only 1 here), `stream` with
`stream_options.include_usage`, `usage`, `finish_reason` "stop" or "length"; the request bodies and
errors are in `schemas.py`. Status codes: 400 for malformed JSON and invalid fields (not FastAPI's
422), 404 for another model's name or an unknown path, 503 when the queue is full or the server is
shutting down.

A request runs as a job of the engine queue (`queue.py`): the engine thread decodes it token by
token and hands each `StreamEvent` to the event loop, which answers with JSON at the end or with one
SSE chunk per event (`TextFormat`, `ChatFormat`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from . import sse
from .queue import END, EngineQueue, Job, QueueClosed, QueueFull
from .schemas import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    GenerationRequest,
    invalid,
    parse_body,
    validation_error,
)

log = logging.getLogger("anekit.serve")

#: OpenAI's default `max_tokens` for /v1/completions (chat has none: up to the context)
COMPLETION_MAX_TOKENS = 16
FINGERPRINT = f"anekit-{__version__}"


def _busy(e: QueueFull | QueueClosed) -> APIError:
    return APIError(
        503, str(e), "server_error", None, "queue_full" if isinstance(e, QueueFull) else "shutting_down"
    )


def _refused(e: Exception, prompt_param: str) -> APIError:
    """An `LLMError` the model raised for this request: a prompt longer than the context (OpenAI's
    code `context_length_exceeded`), a token id outside the vocabulary, an empty prompt."""
    from ..llm.errors import ContextFull

    return invalid(
        str(e), prompt_param, "context_length_exceeded" if isinstance(e, ContextFull) else "invalid_value"
    )


def _error_event(e: BaseException, prompt_param: str) -> bytes:
    """The SSE event that ends a stream which failed after it began (the openai client raises it)."""
    from ..llm.errors import LLMError

    if isinstance(e, (QueueFull, QueueClosed)):
        error = _busy(e)
    elif isinstance(e, LLMError):
        error = _refused(e, prompt_param)
    else:
        log.error("internal error while streaming", exc_info=e)
        error = APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error")
    return sse.event(error.body())


# -------------------------------------------------------------------------------------------------
# The engine side of a request
# -------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a generation produced so far: the answer and its usage."""

    prompt_tokens: int
    completion_tokens: int = 0
    text: str = ""
    finish_reason: str | None = None

    def add(self, event: Any) -> None:
        # the last event's token_id is None when the generation ended on EOS (not part of the output)
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


def decode_work(open_stream: Callable[[], Iterator[Any]]) -> Callable[[Job], None]:
    """The engine-thread side of one request: decode token by token, handing each `StreamEvent`
    over, until the last one or until the job is cancelled (the client left, the server stops)."""

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
# Response formats
# -------------------------------------------------------------------------------------------------


class _Format:
    """How one endpoint spells its answer: the JSON object and the SSE chunks."""

    object: str  #: the answer's "object"
    chunk_object: str  #: a stream chunk's "object"
    id_prefix: str
    prompt_param: str  #: the request field an error about the prompt names

    def __init__(self, model_name: str, include_usage: bool):
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model_name = model_name
        self.include_usage = include_usage

    def _envelope(self, object: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model_name,
            "system_fingerprint": FINGERPRINT,
        }

    def chunk(self, choice: dict | None, usage: dict | None = None) -> bytes:
        """One SSE chunk: a choice, or (choice None) the final usage chunk with no choices."""
        data = self._envelope(self.chunk_object) | {"choices": [choice] if choice is not None else []}
        if self.include_usage:  # OpenAI: usage null on every chunk but the last
            data["usage"] = usage
        return sse.event(data)

    def answer(self, tally: Tally) -> dict:
        choice = {"index": 0} | self.final_choice(tally) | {"logprobs": None}
        return self._envelope(self.object) | {"choices": [choice], "usage": tally.usage()}

    def final_choice(self, tally: Tally) -> dict:
        raise NotImplementedError

    def event_chunks(self, event: Any) -> Iterator[bytes]:
        raise NotImplementedError

    def opening(self) -> Iterator[bytes]:
        return iter(())

    async def chunks(self, job: Job, tally: Tally, first: Any) -> AsyncIterator[bytes]:
        """The whole stream: the chunks of each event as the engine hands it over, the usage chunk
        when asked for, `data: [DONE]`; an error event instead if the job fails midway."""
        item = first
        try:
            for chunk in self.opening():
                yield chunk
            while item is not END:
                tally.add(item)
                for chunk in self.event_chunks(item):
                    yield chunk
                item = await job.next()
            if self.include_usage:
                yield self.chunk(None, tally.usage())
            yield sse.DONE
        except Exception as e:
            yield _error_event(e, self.prompt_param)


class TextFormat(_Format):
    """/v1/completions: `text_completion` objects, `choices[0].text`."""

    object = chunk_object = "text_completion"
    id_prefix = "cmpl"
    prompt_param = "prompt"

    def final_choice(self, tally: Tally) -> dict:
        return {"text": tally.text, "finish_reason": tally.finish_reason or "stop"}

    def event_chunks(self, event: Any) -> Iterator[bytes]:
        if event.text or event.finish_reason is not None:
            yield self.chunk(
                {"index": 0, "text": event.text, "logprobs": None, "finish_reason": event.finish_reason}
            )


class ChatFormat(_Format):
    """/v1/chat/completions: `chat.completion` / `chat.completion.chunk`; a stream opens with the
    assistant role and ends with an empty delta carrying the finish reason."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl"
    prompt_param = "messages"

    def _delta(self, delta: dict, finish_reason: str | None) -> bytes:
        return self.chunk({"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason})

    def final_choice(self, tally: Tally) -> dict:
        return {
            "message": {"role": "assistant", "content": tally.text},
            "finish_reason": tally.finish_reason or "stop",
        }

    def opening(self) -> Iterator[bytes]:
        yield self._delta({"role": "assistant", "content": ""}, None)

    def event_chunks(self, event: Any) -> Iterator[bytes]:
        if event.text:
            yield self._delta({"content": event.text}, None)
        if event.finish_reason is not None:
            yield self._delta({}, event.finish_reason)


# -------------------------------------------------------------------------------------------------
# The service: one model, one engine queue
# -------------------------------------------------------------------------------------------------


class Service:
    """What the routes share: the model, its name, its default options and the engine queue."""

    def __init__(self, model: Any, queue_size: int, model_name: str | None):
        from ..llm.sampling import SamplingOptions

        self.model = model
        self.name = model_name if model_name is not None else str(model.name)
        self.engine = EngineQueue(queue_size)
        self.created = int(time.time())
        self.defaults = getattr(model, "default_options", None) or SamplingOptions()

    def model_card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "anekit"}

    def check_model(self, requested: str) -> None:
        if requested != self.name:
            raise APIError(
                404,
                f"the model '{requested}' does not exist; this server serves '{self.name}' (GET /v1/models)",
                "invalid_request_error",
                "model",
                "model_not_found",
            )

    def options(self, body: GenerationRequest, max_tokens: int | None, default_max: int) -> Any:
        """The request's sampling options. A field it leaves out (or null) takes the model's
        default from generation_config.json (`LanguageModel.default_options`), as vLLM's server
        does (its `--generation-config auto`, https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html):
        the model's authors chose them for it; without one, OpenAI's (temperature 1, top_p 1)."""
        from ..llm.errors import LLMError

        given = {
            field: getattr(body, field)
            for field in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
            if getattr(body, field) is not None
        }
        given["max_tokens"] = max_tokens if max_tokens is not None else default_max
        given["stop"] = body.stop_strings()
        given["seed"] = body.seed
        try:
            return self.defaults.updated(**given)
        except LLMError as e:  # OptionError names the option: the request field of the same name
            raise invalid(str(e), getattr(e, "option", None), "invalid_value") from None

    def count_tokens(self, prompt: str | list[int], param: str, add_special_tokens: bool = True) -> int:
        """The prompt's length in tokens, as `LanguageModel` encodes it: a plain prompt with the
        tokenizer's special tokens (BOS), a rendered chat template without (the template writes its
        own, as transformers' apply_chat_template encodes). Checked before the request is queued."""
        from ..llm.errors import LLMError

        try:
            return len(self.model.encode(prompt, add_special_tokens=add_special_tokens))
        except LLMError as e:  # a token id outside the vocabulary, ...
            raise _refused(e, param) from None

    async def run(
        self, request: Request, work: Callable[[Job], None], fmt: _Format, tally: Tally, stream: bool
    ) -> Response:
        """Queue `work`, then answer: JSON when it is done, or a stream from its first token on.
        A client that leaves before that frees its slot (its job is cancelled)."""
        from ..llm.errors import LLMError

        try:
            job = self.engine.submit(work)
        except (QueueFull, QueueClosed) as e:
            raise _busy(e) from None
        watch = sse.DisconnectWatch(request)
        streaming = False
        try:
            # the first token first: a prompt the model refuses (longer than the context) is still
            # answered 400, before a stream has begun
            first = await watch.race(job.next())
            if stream:
                watch.stop()
                streaming = True  # from here the response cancels the job when it closes
                return sse.EventStreamResponse(
                    fmt.chunks(job, tally, first), on_close=lambda: self.engine.cancel(job)
                )

            async def collect() -> None:
                item = first
                while item is not END:
                    tally.add(item)
                    item = await job.next()

            await watch.race(collect())
            return JSONResponse(fmt.answer(tally))
        except sse.ClientGone:
            return Response(status_code=499)  # nobody reads it; nginx's code for "client closed request"
        except (QueueFull, QueueClosed) as e:
            raise _busy(e) from None
        except LLMError as e:
            raise _refused(e, fmt.prompt_param) from None
        except Exception as e:  # a bug in the model or here: the client gets a 500, the log the traceback
            log.exception("internal error while generating for %s", request.url.path)
            raise APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error") from None
        finally:
            watch.stop()
            if not streaming:
                self.engine.cancel(job)

    async def completions(self, request: Request) -> Response:
        body = await parse_body(request, CompletionRequest)
        self.check_model(body.model)
        body.check_supported()
        prompt = body.single_prompt()
        options = self.options(body, body.max_tokens, COMPLETION_MAX_TOKENS)
        tally = Tally(self.count_tokens(prompt, "prompt"))
        work = decode_work(lambda: self.model.stream(prompt, options))
        fmt = TextFormat(self.name, body.include_usage)
        return await self.run(request, work, fmt, tally, bool(body.stream))

    async def chat_completions(self, request: Request) -> Response:
        from ..llm.errors import LLMError

        body = await parse_body(request, ChatCompletionRequest)
        self.check_model(body.model)
        body.check_supported()
        messages = body.template_messages()
        try:
            rendered = self.model.render_chat(messages)
        except LLMError as e:  # no chat template, a template that raises on these messages
            raise invalid(str(e), "messages", "invalid_value") from None
        asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        # nothing asked: as many tokens as the context holds (OpenAI: up to the context length)
        options = self.options(body, asked, int(self.model.context_length))
        tally = Tally(self.count_tokens(rendered, "messages", add_special_tokens=False))
        work = decode_work(lambda: self.model.chat_stream(messages, options))
        fmt = ChatFormat(self.name, body.include_usage)
        return await self.run(request, work, fmt, tally, bool(body.stream))

    def health(self) -> JSONResponse:
        stats = self.engine.stats()
        closed = stats["closed"]
        body = {"status": "shutting_down" if closed else "ok", "model": self.name, **stats}
        return JSONResponse(body, status_code=503 if closed else 200)


# -------------------------------------------------------------------------------------------------
# The app
# -------------------------------------------------------------------------------------------------


def create_app(model: Any, *, queue_size: int = 8, model_name: str | None = None) -> FastAPI:
    """The OpenAI-compatible app serving `model` (an `anekit.llm.LanguageModel`) under the name
    `model_name` (default: `model.name`). One request decodes at a time; up to `queue_size` more
    wait, and further ones are answered 503. The app does not own the model: close it after the
    server stops."""
    service = Service(model, queue_size, model_name)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        import anyio

        service.engine.close(wait=0)
        # the engine thread stops at its next token; wait for it off the event loop
        await anyio.to_thread.run_sync(lambda: service.engine.close(wait=30))

    app = FastAPI(title="anekit", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.engine = service.engine
    app.state.model_name = service.name
    _install_error_handlers(app)

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [service.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        service.check_model(model_id)
        return service.model_card()

    app.add_api_route("/v1/completions", service.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", service.chat_completions, methods=["POST"])
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's body: ours, FastAPI's validation (400, not 422), Starlette's 404/405,
    and anything unexpected (500, logged with its traceback)."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(request: Request, exc: RequestValidationError):
        return validation_error(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = {
            404: f"no such path: {request.method} {request.url.path}",
            405: f"method {request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        return APIError(exc.status_code, message, kind).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error while answering %s %s", request.method, request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").response()
