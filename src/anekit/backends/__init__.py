"""Where a program runs. Each backend module exposes `availability() -> (ok, reason)` and
`compile(source, **options) -> Kernel`, where `source` is a coremltools Program or a `MilModel`.

- `reference`: NumPy, ANE numerics, runs anywhere.
- `ane`: the Neural Engine through the private AppleNeuralEngine classes (macOS on Apple silicon).
- `coreml`: the same program through Core ML (macOS), for comparison.
"""

from __future__ import annotations

import importlib
import logging

from .base import BackendUnavailable, Kernel, KernelInputError, TensorSpec

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "Kernel",
    "KernelInputError",
    "TensorSpec",
    "availability",
    "resolve",
    "get",
]

BACKENDS = ("ane", "reference", "coreml")
_log = logging.getLogger("anekit")
_told_fallback = False


def get(name: str):
    """The backend module called `name`."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{name}")


def availability(name: str) -> tuple[bool, str]:
    """Whether backend `name` can run here, and if not, why (what is missing)."""
    try:
        return get(name).availability()
    except ImportError as e:  # a backend whose own imports fail is unavailable, not a crash
        return False, f"cannot import the {name} backend: {e}"


def resolve(backend: str) -> str:
    """`auto` -> `ane` where the engine is reachable, else `reference` (and says so once)."""
    global _told_fallback
    if backend != "auto":
        get(backend)
        return backend
    ok, why = availability("ane")
    if ok:
        return "ane"
    if not _told_fallback:
        _log.warning("anekit: the ANE backend is unavailable (%s); using the reference backend", why)
        _told_fallback = True
    return "reference"
