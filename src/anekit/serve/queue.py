"""The request queue in front of the one engine.

A model owns one engine (one KV cache, one set of bound buffers), so one request decodes at a time.
`EngineQueue` runs each admitted request's work on a single worker thread, in arrival order; the
HTTP side (an asyncio event loop) receives what the work emits through an asyncio queue, so the event
loop never blocks on decoding. At most `queue_size` requests wait behind the one decoding; one more is
refused with `QueueFull` (the server answers 503), because a request that waits longer than its
client does only holds memory and delays everyone behind it.

A request's slot is freed when its work returns, or at once when it is cancelled while still
waiting. Cancelling a running request sets a flag the work checks between tokens: decoding stops
after at most the token being computed. The slot is freed *before* the last item reaches the HTTP
side, so a client that saw its answer end can send the next request without meeting a full queue.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable
from typing import Any

from ..errors import AnekitError


class QueueFull(AnekitError):
    """The engine is busy and `queue_size` requests already wait for it."""


class QueueClosed(AnekitError):
    """The server is shutting down: no request is admitted and waiting ones are dropped."""


class _End:
    """The item after a job's last one: its work returned (`error` None) or raised `error`."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None = None):
        self.error = error


#: What `Job.next` returns after a job's last item.
END = object()


class Job:
    """One admitted request: `work(job)` runs on the engine thread, hands items to the HTTP side with
    `job.emit(item)` and stops when `job.cancelled` turns true. The HTTP side reads them with
    `await job.next()`, which returns `END` after the last item and re-raises an exception the work
    raised (or the reason the server stopped it)."""

    def __init__(self, work: Callable[[Job], None], loop: asyncio.AbstractEventLoop):
        self._work = work
        self._loop = loop
        self._items: asyncio.Queue = asyncio.Queue()
        self._cancel = threading.Event()
        self.cancel_reason: BaseException | None = None
        self.state = "waiting"  # waiting -> running -> done; or waiting -> dropped
        self._ended = False

    @property
    def cancelled(self) -> bool:
        """True once the client went away or the server is shutting down: the work should return."""
        return self._cancel.is_set()

    def emit(self, item: Any) -> None:
        """Hand `item` to the HTTP side (callable from any thread)."""
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    async def next(self) -> Any:
        """The next item the work emitted, or `END` (waits for it). Not `StopAsyncIteration`: an
        asyncio task cannot carry that exception out of a coroutine."""
        if self._ended:
            return END
        item = await self._items.get()
        if isinstance(item, _End):
            self._ended = True
            if item.error is not None:
                raise item.error
            return END
        return item


class EngineQueue:
    """Admits requests up to one decoding plus `queue_size` waiting, and runs them one at a time on
    one worker thread (started on first use)."""

    def __init__(self, queue_size: int = 8):
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 0:
            raise AnekitError(
                f"queue_size must be a whole number >= 0 (requests that may wait for the engine), "
                f"got {queue_size!r}"
            )
        self.queue_size = queue_size
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self.finished = 0  # jobs whose work returned or raised (for /health and tests)
        self.dropped = 0  # jobs cancelled while waiting

    # -- the HTTP side ------------------------------------------------------------------------

    def submit(self, work: Callable[[Job], None]) -> Job:
        """Admit a request (call from the event loop). Raises `QueueFull` or `QueueClosed`."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._closed:
                raise QueueClosed("the server is shutting down and takes no new requests")
            in_flight = len(self._waiting) + (self._running is not None)
            if in_flight >= self.queue_size + 1:
                raise QueueFull(
                    f"the engine is busy: one request is decoding and {len(self._waiting)} wait "
                    f"(queue size {self.queue_size}); retry later"
                )
            job = Job(work, loop)
            self._waiting.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="anekit-engine", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return job

    def cancel(self, job: Job, reason: BaseException | None = None) -> None:
        """Stop `job`: a waiting one leaves the queue now (its slot is free on return); a running one
        stops at its next token. Safe to call more than once, and on a finished job."""
        with self._cond:
            if job.state == "waiting":
                self._waiting.remove(job)
                job.state = "dropped"
                self.dropped += 1
                job._cancel.set()
                job.cancel_reason = reason
                if reason is not None:
                    job.emit(_End(reason))
                self._cond.notify_all()
            elif job.state == "running" and not job._cancel.is_set():
                job.cancel_reason = reason
                job._cancel.set()

    def stats(self) -> dict[str, int | bool]:
        """How busy the engine is: `running` (0 or 1), `waiting`, `queue_size`, `finished`, `dropped`."""
        with self._cond:
            return {
                "running": int(self._running is not None),
                "waiting": len(self._waiting),
                "queue_size": self.queue_size,
                "finished": self.finished,
                "dropped": self.dropped,
                "closed": self._closed,
            }

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing runs or waits; False if `timeout` seconds passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._running is None and not self._waiting, timeout)

    def close(self, *, wait: float | None = 0) -> None:
        """Refuse new requests, drop the waiting ones and stop the running one at its next token
        (each ends with `QueueClosed`); then wait up to `wait` seconds (None: forever) for the worker
        thread to finish."""
        reason = QueueClosed("the server is shutting down; the request was stopped")
        with self._cond:
            self._closed = True
            for job in list(self._waiting):
                self.cancel(job, reason)
            if self._running is not None:
                self.cancel(self._running, reason)
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and wait != 0:
            thread.join(wait)

    # -- the engine thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting or self._closed)
                if not self._waiting:  # closed and nothing left
                    return
                job = self._waiting.popleft()
                job.state = "running"
                self._running = job
            error: BaseException | None = None
            try:
                job._work(job)
            except BaseException as e:  # handed to the request that caused it, never lost
                error = e
            if error is None and job.cancelled and job.cancel_reason is not None:
                error = job.cancel_reason
            with self._cond:
                job.state = "done"
                self._running = None
                self.finished += 1
                self._cond.notify_all()
            # after the slot is free (see the module docstring)
            job.emit(_End(error))
