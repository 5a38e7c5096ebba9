"""The OpenAI request bodies this server reads, and OpenAI's error body.

Fields and defaults follow the OpenAI API reference (https://platform.openai.com/docs/api-reference/completions/create,
https://platform.openai.com/docs/api-reference/chat/create). `None` stands for "not given": OpenAI
treats an explicit null as the default. Unknown fields are ignored, as clients send vendor-specific
ones; fields this server cannot honour (`UNSUPPORTED`) are refused with 400 unless they hold their
neutral value, rather than silently ignored. Every error is OpenAI's body
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

_PositiveInt = Annotated[StrictInt, Field(ge=1)]
_TokenId = Annotated[StrictInt, Field(ge=0)]

# -------------------------------------------------------------------------------------------------
# Errors
# -------------------------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered with OpenAI's error body and `status`."""

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

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        # Retry-After: a full queue drains in about one request's time; clients back off from it
        headers = {"Retry-After": "1"} if self.status == 503 else None
        return _AsciiJSONResponse(self.body(), status_code=self.status, headers=headers)


class _AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: an error message may quote what the client sent,
    and JSON text may hold a lone surrogate (``"\\udcff"``) that has no UTF-8 encoding, which
    Starlette's `JSONResponse` (``ensure_ascii=False``) cannot send."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400: the request cannot be served as it is."""
    return APIError(400, message, "invalid_request_error", param, code)


# -------------------------------------------------------------------------------------------------
# Request bodies
# -------------------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: StrictBool | None = None


class GenerationRequest(BaseModel):
    """Fields both endpoints share."""

    model_config = ConfigDict(extra="ignore")

    #: field -> (the values besides null that mean "not used", what the message adds)
    UNSUPPORTED: ClassVar[dict[str, tuple[tuple, str]]] = {
        "n": ((1,), "other than 1 (one engine decodes one sequence)"),
        "presence_penalty": ((0,), "other than 0 (use repetition_penalty)"),
        "frequency_penalty": ((0,), "other than 0 (use repetition_penalty)"),
        "logit_bias": (({},), ""),
    }

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
    # beyond OpenAI, as vLLM's and llama.cpp's servers accept them
    top_k: Annotated[StrictInt, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] | None = None

    def check_supported(self) -> None:
        """400 for the first field given a value this server cannot honour."""
        for field, (neutral, instead) in self.UNSUPPORTED.items():
            value = getattr(self, field)
            if value is not None and not any(value == ok for ok in neutral):
                raise invalid(
                    f"'{field}'{' ' + instead if instead else ''} is not supported by this server",
                    field,
                    "unsupported_parameter",
                )
        if self.stream_options is not None and not self.stream:
            raise invalid("'stream_options' is only allowed with 'stream': true", "stream_options")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(GenerationRequest):
    UNSUPPORTED: ClassVar[dict[str, tuple[tuple, str]]] = GenerationRequest.UNSUPPORTED | {
        "echo": ((False,), "true"),
        "logprobs": ((), ""),
        "best_of": ((1,), "other than 1"),
        "suffix": (("",), ""),
    }

    prompt: str | list[_TokenId] | list[str] | list[list[_TokenId]]
    echo: StrictBool | None = None
    logprobs: StrictInt | None = None
    best_of: StrictInt | None = None
    suffix: str | None = None

    def single_prompt(self) -> str | list[int]:
        """The one prompt (text or token ids); a list of several is refused (no batches here)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise invalid(
                    f"'prompt' holds {len(prompt)} prompts; this server takes one per request",
                    "prompt",
                    "unsupported_value",
                )
            prompt = prompt[0]
        return prompt


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(GenerationRequest):
    UNSUPPORTED: ClassVar[dict[str, tuple[tuple, str]]] = GenerationRequest.UNSUPPORTED | {
        "logprobs": ((False,), "true"),
        "top_logprobs": ((0,), ""),
        "tools": (([],), ""),
        "functions": (([],), ""),
        "tool_choice": (("none",), ""),
        "function_call": (("none",), ""),
        "response_format": (({"type": "text"},), 'other than {"type": "text"}'),
    }

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: _PositiveInt | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None

    def template_messages(self) -> list[dict[str, str]]:
        """The messages as a chat template reads them: text content (parts joined), and the role
        "developer" (OpenAI's newer name for "system") as "system", the one templates know."""
        messages = []
        for i, message in enumerate(self.messages):
            role = "system" if message.role == "developer" else message.role
            entry = {"role": role, "content": _text(message.content, i)}
            if message.name is not None:
                entry["name"] = message.name
            messages.append(entry)
        return messages


def _text(content: str | list[ContentPart] | None, i: int) -> str:
    """A message's content as one string (text parts joined; a part of another type is refused)."""
    if not isinstance(content, list):
        return content or ""
    for part in content:
        if part.type != "text" or part.text is None:
            raise invalid(
                f"messages[{i}].content holds a '{part.type}' part; only text parts are supported",
                "messages",
                "unsupported_value",
            )
    return "".join(part.text for part in content)


# -------------------------------------------------------------------------------------------------
# Reading a body
# -------------------------------------------------------------------------------------------------

_JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


async def parse_body(request: Request, schema: type[BaseModel]) -> Any:
    """The request body as `schema`. Read as JSON whatever its Content-Type (the API has no other
    body; `curl -d` labels JSON as a form), so every malformed body gets the same 400."""
    raw = await request.body()
    if not raw.strip():
        raise invalid("the request has no body; send a JSON object", code="invalid_json")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(
            f"the request body is not valid JSON ({e}); send a JSON object", code="invalid_json"
        ) from None
    except RecursionError:  # Python's json parser recurses once per nested array or object
        raise invalid(
            "the request body nests arrays or objects too deeply to parse; send a flatter JSON object",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        kind = _JSON_KINDS.get(type(data), "a number")
        raise invalid(f"the request body must be a JSON object, not {kind}", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


#: what pydantic appends to an error's location for the member of a union that failed
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def field_path(loc) -> str:
    """`messages[0].role` from pydantic's ('messages', 0, 'role'), without the union member tags
    (('stop', 'str'), ('prompt', 'list[constrained-int]'))."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier() and part not in _TYPE_TAGS:
            path += f".{part}" if path else part
    return path


def validation_error(errors: list[dict]) -> APIError:
    """The first problem pydantic found, as one sentence naming the field (`param`, its top-level
    name). FastAPI's locations start with "body" (or "path", "query"); that part is dropped."""
    if not errors:
        return invalid("the request body is invalid")
    first = errors[0]
    loc = [part for part in first.get("loc", ()) if part not in ("body", "path", "query")]
    if not loc:
        return invalid(f"the request body must be a JSON object: {first.get('msg', '')}", code="invalid_json")
    param, where = str(loc[0]), field_path(loc)
    if first.get("type") == "missing":
        return invalid(f"'{where}' is required", param, "missing_required_parameter")
    got = first.get("input")
    shown = repr(got) if len(repr(got)) < 80 else type(got).__name__
    return invalid(
        f"invalid value for '{where}': {first.get('msg', 'invalid')} (got {shown})", param, "invalid_value"
    )
