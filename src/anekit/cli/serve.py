"""`anekit serve`: an OpenAI-compatible HTTP server over one model (anekit.serve, with uvicorn)."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import typer

from .common import err, fail, stdout_console


class _Stop(Exception):
    """SIGTERM arrived: stop as for Ctrl-C."""


@contextlib.contextmanager
def _terminate_as_stop():
    """While serving, SIGTERM (a service manager stopping the server) ends like Ctrl-C: uvicorn shuts
    down gracefully, re-raises the signal into this handler, and the command exits 0 rather than being
    killed by the default action."""

    def stop(signum, frame):
        raise _Stop

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(
    model: Path = typer.Argument(
        ..., help="A Hugging Face model directory, or an anekit run / checkpoint directory."
    ),
    host: str = typer.Option(
        "127.0.0.1", help="Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every network)."
    ),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on (0: a free one, printed)."),
    queue_size: int = typer.Option(
        8, min=0, help="Requests that may wait while one decodes; more are answered 503."
    ),
    backend: str = typer.Option("auto", help="auto, reference or ane."),
    weights: str = typer.Option("fp16", help="Engine weights: fp16, int8 or int4."),
    max_len: int = typer.Option(
        None, "--max-len", min=1, help="Context length in tokens (default: the model's)."
    ),
    model_name: str = typer.Option(
        None, "--model-name", help="The name clients ask for (default: the model's name; see /v1/models)."
    ),
    log_level: str = typer.Option("info", help="uvicorn's log level: critical, error, warning, info, debug."),
) -> None:
    """Serve a model over HTTP with the OpenAI API (/v1/models, /v1/completions, /v1/chat/completions,
    streaming as server-sent events). One request decodes at a time; Ctrl-C stops the server."""
    from ..llm import load
    from ..serve import create_app
    from ..serve.server import Server, bind, url_of

    levels = ("critical", "error", "warning", "info", "debug", "trace")
    if log_level not in levels:
        raise fail(f"--log-level must be one of {', '.join(levels)}, got {log_level!r}")
    if not model.exists():
        raise fail(f"{model} does not exist; give a Hugging Face model directory or an anekit checkpoint")
    # bind before loading: a busy port is reported at once, not after a long load
    sock = bind(host, port)
    try:
        err.print(f"loading {model} ...", highlight=False)
        llm = load(model, backend=backend, weights=weights, max_len=max_len)
        try:
            app = create_app(llm, queue_size=queue_size, model_name=model_name)
            name = app.state.model_name
            server = Server(app, log_level=log_level)
            base = url_of(sock)
            out = stdout_console()
            out.print(
                f"serving {name} at {base}/v1 (OpenAI API; Ctrl-C stops)", highlight=False, markup=False
            )
            out.file.flush()
            try:
                with _terminate_as_stop():
                    server.run(sockets=[sock])
            except (KeyboardInterrupt, _Stop):
                # uvicorn shuts down gracefully on SIGINT / SIGTERM, then raises the signal again for
                # the caller (uvicorn.Server.capture_signals); stopping is what the user asked for
                pass
        finally:
            llm.close()
    finally:
        sock.close()
    err.print("server stopped", highlight=False)
