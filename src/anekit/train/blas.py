"""Limit the BLAS thread count while the training step runs (best effort, OpenBLAS only).

The step runs two threads of its own: kernels on the main thread and the dW = dy·xᵀ products on
a worker (ane-private-api.md §5.4's serial cblas queue). If each BLAS call also forks its own
threads, the two callers oversubscribe the cores, and every call waits for a time slice: on a
loaded 2-core machine a 512x512 matmul measured 25-48 ms with OpenBLAS's default 2 threads and
4-7 ms with 1. NumPy's wheels bundle OpenBLAS, whose `openblas_set_num_threads_local` sets the
count for the calling thread and returns the previous one, so it can be restored afterwards. Where
that symbol is not found (Accelerate on macOS, MKL, an older OpenBLAS), this does nothing.
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["blas_threads", "set_blas_threads"]

_UNSET = object()
_setter = _UNSET


def _find_setter():
    """`openblas_set_num_threads_local` of the OpenBLAS NumPy loaded, or None."""
    global _setter
    if _setter is _UNSET:
        _setter = None
        try:
            import numpy as np

            base = os.path.dirname(os.path.dirname(np.__file__))
            for path in sorted(glob.glob(os.path.join(base, "numpy.libs", "*openblas*"))):
                lib = ctypes.CDLL(path)  # already loaded by NumPy: this returns the same handle
                fn = getattr(lib, "openblas_set_num_threads_local", None)
                if fn is not None:
                    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
                    _setter = fn
                    break
        except OSError:
            _setter = None
    return _setter


def set_blas_threads(n: int) -> int | None:
    """Set the calling thread's BLAS thread count; returns the previous count, or None if the
    BLAS library offers no such control."""
    fn = _find_setter()
    return None if fn is None else int(fn(int(n)))


@contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` BLAS threads in this thread (None: leave BLAS alone)."""
    prev = None if n is None else set_blas_threads(n)
    try:
        yield
    finally:
        if prev is not None:
            set_blas_threads(prev)
