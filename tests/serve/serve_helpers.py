"""Helpers shared by the server tests: the real app served by uvicorn on 127.0.0.1 (a free port) in a
background thread, and `GatedModel`, a test double of `LanguageModel` for the queue's mechanics only
(a full queue, a client that leaves): its streams wait on an Event, so "the engine is busy" is a
state the test sets, not a race. Everything about generated text is tested with a real model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

import httpx2 as httpx
import pytest

from anekit.serve.server import Server, bind, url_of

#: generous: a loaded 2-core machine may be slow, but nothing here should take this long
TIMEOUT = 60.0


@contextmanager
def serving(app) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 (a port the system picks) in a thread; yields the base
    URL (http://127.0.0.1:PORT). Stops the server on exit (as Ctrl-C would, minus the signal)."""
    with serving_with(app) as (url, _server):
        yield url


@contextmanager
def serving_with(app) -> Iterator[tuple[str, Server]]:
    """`serving`, also yielding the uvicorn server (`server.should_exit = True` starts its shutdown)."""
    sock = bind("127.0.0.1", 0)
    server = Server(app, log_level="warning", timeout_graceful_shutdown=5)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), "the server to start")
        assert server.started, "the server did not start"
        yield url_of(sock), server
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def wait_for(condition, what: str, timeout: float = TIMEOUT) -> None:
    """Poll `condition()` until true; fail naming `what` after `timeout` seconds (never expected)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def health(base: str) -> dict:
    return httpx.get(f"{base}/health", timeout=TIMEOUT).json()


@dataclass
class Event:
    """The fields of `anekit.llm.StreamEvent` the server reads."""

    text: str
    token_id: int | None
    finish_reason: str | None


class GatedModel:
    """A stand-in for `LanguageModel` with the methods the server calls. Each stream waits for
    `gate` before its first token, then yields `max_tokens` tokens "t1 ", "t2 ", ... (endless=True:
    tokens until closed, one per millisecond). Counts streams opened, closed and tokens produced."""

    name = "gated"
    context_length = 64
    chat_template = None
    config = SimpleNamespace(vocab_size=100)

    def __init__(self, *, endless: bool = False, fail_at: int | None = None):
        self.gate = threading.Event()
        self.endless = endless
        self.fail_at = fail_at  #: raise RuntimeError instead of producing this token (a bug in the model)
        self.opened = self.closed = self.produced = 0

    def _events(self, options):
        self.opened += 1
        try:
            assert self.gate.wait(TIMEOUT), "the test never opened the gate"
            i = 0
            while self.endless or i < options.max_tokens:
                i += 1
                if i == self.fail_at:
                    raise RuntimeError(f"the model broke at token {i}")
                self.produced += 1
                if self.endless:
                    time.sleep(0.001)  # a pace, not a measurement: keeps an endless stream small
                last = not self.endless and i == options.max_tokens
                yield Event(f"t{i} ", i, "length" if last else None)
        finally:
            self.closed += 1

    def encode(self, prompt, add_special_tokens=True):
        return prompt.split() if isinstance(prompt, str) else list(prompt)

    def stream(self, prompt, options=None, **kw):
        return self._events(options)

    def chat_stream(self, messages, options=None, **kw):
        return self._events(options)

    def render_chat(self, messages, add_generation_prompt=True, **kw):
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
