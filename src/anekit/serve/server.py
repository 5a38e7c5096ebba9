"""Running the app under uvicorn: a listening socket bound before the model is announced, and a
shutdown that stops decoding first.

uvicorn's graceful shutdown waits for open responses to finish before the app's lifespan ends
(`uvicorn.Server.shutdown`); a stream may last minutes, so `Server.shutdown` first closes the engine
queue: the decoding request stops at its next token and its stream ends with an error event, waiting
ones end at once, and the wait that follows is short.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from fastapi import FastAPI

from ..errors import AnekitError


class BindError(AnekitError):
    """The server cannot listen on the host and port it was given."""


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port` (port 0: a free one the system picks), not yet listening."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise BindError(
            f"--host {host}: cannot resolve it ({e.strerror}); give an address such as 127.0.0.1"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # a restarted server may reuse the port while old connections linger in TIME_WAIT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise BindError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port (or stop what uses it)"
        ) from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """`http://host:port` of a bound socket (IPv6 addresses in brackets)."""
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class Server(uvicorn.Server):
    """uvicorn's server, closing the app's engine queue before its graceful shutdown (module docstring)."""

    def __init__(self, app: FastAPI, **config: Any):
        config.setdefault("timeout_graceful_shutdown", 10)
        super().__init__(uvicorn.Config(app, **config))
        self.app = app

    async def shutdown(self, sockets=None) -> None:
        engine = getattr(self.app.state, "engine", None)
        if engine is not None:
            engine.close(wait=0)
        await super().shutdown(sockets=sockets)
