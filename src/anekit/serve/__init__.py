"""`anekit.serve`: an OpenAI-compatible HTTP server over one `anekit.llm.LanguageModel`.

`create_app(model, queue_size=8, model_name=None)` gives the ASGI app (FastAPI); `anekit serve MODEL`
runs it with uvicorn. One engine decodes one request at a time behind a bounded queue (`queue.py`).
"""

from __future__ import annotations

from .app import create_app
from .queue import EngineQueue, QueueClosed, QueueFull
from .schemas import APIError

__all__ = ["APIError", "EngineQueue", "QueueClosed", "QueueFull", "create_app"]
