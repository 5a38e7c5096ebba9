"""`anekit.compile`: one entry point from a program (or text, or a directory) to a runnable Kernel."""

from __future__ import annotations

import os
from pathlib import Path

from .backends import get, resolve
from .backends.base import Kernel


def compile(source, backend: str = "auto", **options) -> Kernel:
    """Compile `source` for `backend` and return a Kernel: `kernel(**inputs) -> dict[str, ndarray]`.

    source: a coremltools MIL Program, an `anekit.mil.MilModel`, or a path to a model directory or
        its `model.mil`; from a directory only `model.mil` and the weight files its text references
        are read, each only if it resolves inside the directory (`anekit.mil.model.load`).
    backend: "auto" (the engine where reachable, else the reference backend, saying so), "ane",
        "reference" or "coreml".
    options: passed to the backend, e.g. numerics="exact" for the reference backend.
    """
    if isinstance(source, (str, os.PathLike)):
        from .mil.model import load

        source = load(Path(source))
    name = resolve(backend)
    return get(name).compile(source, **options)
