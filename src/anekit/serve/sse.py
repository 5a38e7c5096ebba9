"""Server-sent events as OpenAI streams them, and noticing a client that went away.

An OpenAI stream is a `text/event-stream` of `data: <json>` events, each ended by a blank line, and
a last `data: [DONE]` (https://platform.openai.com/docs/api-reference/chat-streaming and the SSE
format, https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"


def event(data: Any) -> bytes:
    """One `data:` event holding `data` as compact JSON (JSON text has no raw newline, so one line)."""
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


class DisconnectWatch:
    """Races awaitables against the client's disconnect, while the endpoint (not yet a streaming
    response) waits for the engine: a client that leaves while queued must free its slot then, not
    when the engine reaches it. After the request body is read, the ASGI `receive` returns only when
    the client disconnects (ASGI HTTP spec: `http.disconnect`)."""

    def __init__(self, request: Request):
        self._request = request
        self._listener: asyncio.Task | None = None

    async def _listen(self) -> None:
        while (await self._request.receive())["type"] != "http.disconnect":
            pass

    async def race(self, awaitable: Awaitable[Any]) -> Any:
        """The awaitable's result; `ClientGone` if the client disconnects first."""
        if self._listener is None:
            self._listener = asyncio.ensure_future(self._listen())
        work = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait({work, self._listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the endpoint itself is cancelled
            if not work.done():
                work.cancel()
        if work.done() and not work.cancelled():
            return work.result()
        raise ClientGone

    def stop(self) -> None:
        """Stop listening (a streaming response then listens itself)."""
        if self._listener is not None:
            self._listener.cancel()
            self._listener = None


class EventStreamResponse(Response):
    """A `text/event-stream` response that stops when the client disconnects and then calls
    `on_close` (which frees the engine for the next request).

    Starlette's `StreamingResponse` listens for the disconnect only under ASGI spec < 2.4; from 2.4
    on it relies on a failing `send`, which never happens while the stream waits for the next token.
    This response always listens, whatever the server's spec version.
    """

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], on_close: Callable[[], None]):
        self.body_iterator = chunks
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        # no-cache: a proxy must not hold the stream; X-Accel-Buffering: nginx would buffer it whole
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    try:
                        await send(
                            {
                                "type": "http.response.start",
                                "status": self.status_code,
                                "headers": self.raw_headers,
                            }
                        )
                        async for chunk in self.body_iterator:
                            await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    except OSError:  # the connection broke while writing: the same as a disconnect
                        pass
                    finally:
                        group.cancel_scope.cancel()

                async def listen() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(listen)
        finally:
            self.on_close()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
