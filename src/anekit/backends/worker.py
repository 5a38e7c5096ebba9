"""Kernels that compile and run in a worker process, for any backend.

Why: the engine's driver holds at most 128 loaded programs per process (ane-private-api.md
§10.1, which corrects §1.11's "~119 compiles": that was this cap seen from code that never
unloads). The ane runtime unloads idle programs to stay under its loaded-program budget; only when
more programs must be live *at once* than the budget allows does it move compiling and running
into worker processes, each with its own 128 slots, without the caller noticing. Nothing here is
ANE-specific: the worker runs `anekit.backends.<backend>.compile`, so the mechanism is tested
anywhere with the reference backend.

How:
- `WorkerPool(backend, max_kernels)` starts workers (spawn, or forkserver off macOS; never plain
  fork: the Objective-C runtime does not survive a fork) and places each new kernel in a worker
  holding fewer than `max_kernels` live kernels, starting a new worker only when every worker is
  full; a worker that is not the newest exits when its last kernel closes.
- A `WorkerKernel` is the caller-side kernel. Inputs and outputs travel through shared memory
  blocks (`multiprocessing.shared_memory`) owned and unlinked by the caller; only small messages
  go over the pipe: `("compile", text, weights, options)`, `("bind", id)`, `("write", id, inputs)`,
  `("run", id, inputs, outputs)`, `("close", id)`, `("exit",)`; replies are `("ok", value)` or
  `("error", exception, traceback)`.
- Every call waits on the reply *and* the process sentinel with a timeout, so a worker that dies
  or hangs gives a `WorkerError` instead of a hang. The next call on a kernel whose worker died
  compiles it again in a new worker and re-sends its bindings' staged inputs.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import traceback
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from multiprocessing import connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from ..engine_limits import DEFAULT_LOADED_PROGRAM_BUDGET
from ..errors import AnekitError
from .base import Binding, EvalTiming, Kernel, KernelInputError, TensorSpec, check_inputs

_log = logging.getLogger("anekit.worker")

#: Seconds one call may take before the worker is declared hung and killed (compiles are slow).
DEFAULT_TIMEOUT = 600.0
#: Seconds a worker gets to exit cleanly before it is killed.
EXIT_GRACE = 5.0
#: Live kernels one worker holds at most: the ane runtime's default loaded-program budget
#: (`anekit.engine_limits.DEFAULT_LOADED_PROGRAM_BUDGET`), under the engine's 128 loaded
#: programs per process (ane-private-api.md §10.1).
DEFAULT_MAX_KERNELS = DEFAULT_LOADED_PROGRAM_BUDGET

_IN_WORKER = False


def in_worker() -> bool:
    """True inside a worker process (its backend then compiles in-process, whatever its budget)."""
    return _IN_WORKER


class WorkerError(AnekitError, RuntimeError):
    """A worker process died, hung, or the pool was closed; the message says which and what next."""


class WorkerOptionError(AnekitError, ValueError):
    """A worker pool was asked for something it does not do (start method, size, a renamed
    option); the message says what to pass instead."""


class RemoteError(RuntimeError):
    """An exception raised in the worker that could not be sent back as itself (not an `AnekitError`:
    what it wraps may be anything)."""


def _platform() -> str:
    """`sys.platform` (a function, so tests can check the macOS rules anywhere)."""
    return sys.platform


def default_start_method() -> str:
    """spawn on macOS (fork after the Objective-C runtime initialised is unsafe), else forkserver."""
    return "spawn" if _platform() == "darwin" else "forkserver"


def check_start_method(method: str) -> str:
    """`method` if workers may start with it here, else `WorkerOptionError` saying what to use.

    Never "fork": a forked child of a process that loaded the Objective-C runtime and system
    frameworks is not safe (Python's multiprocessing docs: on macOS "the fork start method should
    be considered unsafe as it can lead to crashes of the subprocess as macOS system libraries may
    start threads"). On macOS not "forkserver" either: its server is a process like any other that
    imports the backend it preloads (AppleNeuralEngine.framework through PyObjC for "ane") and then
    forks every worker from itself, which is the same unsafe fork (issue 8 §4).
    """
    if method not in ("spawn", "forkserver"):
        raise WorkerOptionError(f"start_method must be 'spawn' or 'forkserver' (never fork), not {method!r}")
    if method == "forkserver" and _platform() == "darwin":
        raise WorkerOptionError(
            "start_method 'forkserver' is refused on macOS: the fork server forks each worker from "
            "a process that has loaded the Objective-C runtime, which is not fork-safe; use 'spawn' "
            "(the default on macOS)"
        )
    return method


# -- worker side --------------------------------------------------------------------------------
def _attach(cache: dict, key: tuple, shm_name: str) -> SharedMemory:
    old = cache.get(key)
    if old is not None and old.name == shm_name:
        return old
    if old is not None:
        old.close()
    # On Python < 3.13 attaching registers the block with the (shared) resource tracker again;
    # that is harmless: the caller unregisters it when it unlinks the block.
    block = cache[key] = SharedMemory(name=shm_name)
    return block


def _read_inputs(cache: dict, oid: int, descriptors: list) -> dict[str, np.ndarray]:
    arrays = {}
    for name, shm_name, dtype, shape in descriptors:
        block = _attach(cache, (oid, "in", name), shm_name)
        view = np.ndarray(shape, dtype=np.dtype(dtype), buffer=block.buf)
        arrays[name] = np.array(view, copy=True)  # no view may outlive the attachment
        del view
    return arrays


def _write_outputs(cache: dict, oid: int, outputs: Mapping[str, np.ndarray], slots: list) -> list:
    results = []
    for name, shm_name, capacity in slots:
        arr = np.ascontiguousarray(outputs[name])
        if arr.nbytes <= capacity and arr.dtype != object:
            block = _attach(cache, (oid, "out", name), shm_name)
            view = np.ndarray(arr.shape, dtype=arr.dtype, buffer=block.buf)
            view[...] = arr
            del view
            results.append((name, "shm", arr.dtype.str, arr.shape))
        else:  # the caller's block is too small: send it inline, the caller grows the block
            results.append((name, "inline", arr))
    return results


def _specs(specs: Mapping[str, TensorSpec]) -> list[tuple]:
    return [(s.name, tuple(s.shape), s.dtype) for s in specs.values()]


def _picklable(exc: BaseException) -> BaseException | None:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return None


class _WorkerState:
    """What one worker process holds: its backend module, its kernels and bindings by id, and the
    shared-memory blocks it has attached."""

    def __init__(self, backend: str):
        self.backend = backend
        self.module: Any = None  # imported on the first compile, so a worker starts in a fraction of a second
        self.objects: dict[int, Any] = {}
        self.owners: dict[int, int] = {}  # binding id -> kernel id
        self.attached: dict[tuple, SharedMemory] = {}
        self.ids = itertools.count(1)
        self.running = True

    def close(self) -> None:
        """Close every kernel and binding (newest first) and detach every block; a close that
        fails is logged and the rest still close."""
        for oid, obj in list(self.objects.items())[::-1]:
            try:
                obj.close()
            except Exception:
                _log.warning(
                    "anekit: closing %s (id %d) in the worker failed", type(obj).__name__, oid, exc_info=True
                )
        self.objects.clear()
        for block in self.attached.values():
            block.close()


def _on_exit(state: _WorkerState, msg: tuple) -> None:
    state.running = False


def _on_compile(state: _WorkerState, msg: tuple) -> tuple:
    _, text, weights, options = msg
    from ..mil.model import MilModel

    if state.module is None:
        from . import get

        state.module = get(state.backend)
    kernel = state.module.compile(MilModel(text, dict(weights)), **options)
    oid = next(state.ids)
    state.objects[oid] = kernel
    return (oid, _specs(kernel.inputs), _specs(kernel.outputs), type(kernel).__name__)


def _on_bind(state: _WorkerState, msg: tuple) -> int:
    kid = msg[1]
    oid = next(state.ids)
    state.objects[oid] = state.objects[kid].new_binding()
    state.owners[oid] = kid
    return oid


def _on_write(state: _WorkerState, msg: tuple) -> None:
    _, oid, inputs = msg
    state.objects[oid].write(**_read_inputs(state.attached, oid, inputs))


def _on_run(state: _WorkerState, msg: tuple) -> tuple:
    _, oid, inputs, slots = msg
    obj = state.objects[oid]
    arrays = _read_inputs(state.attached, oid, inputs)
    result = obj.run(**arrays) if isinstance(obj, Binding) else obj.run(arrays)
    kernel = state.objects[state.owners[oid]] if oid in state.owners else obj
    timing = getattr(kernel, "last_eval", None)
    return (_write_outputs(state.attached, oid, result, slots), timing)


def _on_close(state: _WorkerState, msg: tuple) -> None:
    oid = msg[1]
    obj = state.objects.pop(oid, None)
    state.owners.pop(oid, None)
    for key in [k for k in state.attached if k[0] == oid]:
        state.attached.pop(key).close()
    if obj is not None:
        obj.close()


def _on_ping(state: _WorkerState, msg: tuple) -> int:
    return os.getpid()


#: The worker's requests (see the module docstring) and their handlers: handler(state, msg) -> the
#: value of the ("ok", value) reply; an exception becomes the ("error", ...) reply.
_HANDLERS = {
    "exit": _on_exit,
    "compile": _on_compile,
    "bind": _on_bind,
    "write": _on_write,
    "run": _on_run,
    "close": _on_close,
    "ping": _on_ping,
}


def _handle(state: _WorkerState, msg: tuple) -> tuple:
    """The reply to one request: ("ok", value) or ("error", exception or None, text)."""
    try:
        handler = _HANDLERS.get(msg[0])
        if handler is None:
            raise ValueError(f"unknown worker request {msg[0]!r}")
        return ("ok", handler(state, msg))
    except Exception as exc:
        return ("error", _picklable(exc), f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")


def _worker_main(conn: connection.Connection, backend: str) -> None:
    """The worker's loop: one request, one reply, until "exit" or the pipe closes."""
    global _IN_WORKER
    _IN_WORKER = True
    state = _WorkerState(backend)
    try:
        while state.running:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break  # the caller closed the pipe or went away: nothing left to answer
            conn.send(_handle(state, msg))
    finally:
        state.close()


# -- caller side: shared memory ------------------------------------------------------------------
class _Slots:
    """Shared-memory blocks owned by the caller, one per tensor name, grown on demand.

    The caller creates and unlinks every block, so a worker killed at any moment leaks nothing.
    """

    def __init__(self) -> None:
        self._blocks: dict[str, SharedMemory] = {}
        self._meta: dict[str, tuple[str, tuple[int, ...]]] = {}

    def _ensure(self, name: str, nbytes: int) -> SharedMemory:
        block = self._blocks.get(name)
        if block is not None and block.size >= nbytes:
            return block
        if block is not None:
            _unlink(block)
        block = self._blocks[name] = SharedMemory(create=True, size=max(int(nbytes), 1))
        return block

    def put(self, name: str, array: np.ndarray) -> tuple:
        """Copy `array` into the block for `name`; returns its descriptor for the worker."""
        arr = np.ascontiguousarray(array)
        if arr.dtype == object:
            raise KernelInputError(f"input {name!r} has dtype object; pass a numeric array")
        block = self._ensure(name, arr.nbytes)
        view = np.ndarray(arr.shape, dtype=arr.dtype, buffer=block.buf)
        view[...] = arr
        del view
        self._meta[name] = (arr.dtype.str, arr.shape)
        return (name, block.name, arr.dtype.str, arr.shape)

    def descriptors(self) -> list[tuple]:
        """Descriptors of everything put so far (re-sent to a new worker)."""
        return [(n, self._blocks[n].name, d, s) for n, (d, s) in self._meta.items()]

    def reserve(self, name: str, nbytes: int) -> tuple:
        block = self._ensure(name, nbytes)
        return (name, block.name, block.size)

    def read(self, name: str, dtype: str, shape: tuple) -> np.ndarray:
        view = np.ndarray(shape, dtype=np.dtype(dtype), buffer=self._blocks[name].buf)
        out = np.array(view, copy=True)
        del view
        return out

    @property
    def names(self) -> list[str]:
        """The shared-memory names in use (for tests and leak checks)."""
        return [b.name for b in self._blocks.values()]

    def close(self) -> None:
        blocks, self._blocks = list(self._blocks.values()), {}
        self._meta.clear()
        for block in blocks:
            _unlink(block)


def _unlink(block: SharedMemory) -> None:
    try:
        block.close()
    except BufferError:  # a view is still alive somewhere; unlinking still frees the name
        _log.debug("anekit: shared memory %s still has a view; unlinking it anyway", block.name)
    try:
        block.unlink()
    except FileNotFoundError:
        _log.debug("anekit: shared memory %s was already unlinked", block.name)


# -- caller side: one worker process -------------------------------------------------------------
_MAIN_LOCK = threading.Lock()


@contextmanager
def _main_hidden() -> Iterator[None]:
    """Start a worker without it re-running the caller's `__main__`.

    spawn and forkserver children normally import the parent's main script (as `__mp_main__`),
    which re-executes any unguarded top-level code: a training script without an
    `if __name__ == "__main__":` guard would start over inside the worker. The worker needs nothing
    from `__main__` (its target lives in this module), so the main module's `__spec__` and
    `__file__` are hidden while the process starts; multiprocessing then leaves main alone.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    with _MAIN_LOCK:
        spec = getattr(main, "__spec__", None)
        has_file = hasattr(main, "__file__")
        path = getattr(main, "__file__", None)
        main.__spec__ = None
        if has_file:
            del main.__file__
        try:
            yield
        finally:
            main.__spec__ = spec
            if has_file:
                main.__file__ = path


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is not running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class _Worker:
    """One worker process and its pipe. Calls are serialised by a lock."""

    def __init__(self, ctx: Any, backend: str, timeout: float):
        self.backend = backend
        self.timeout = timeout
        parent, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_worker_main, args=(child, backend), name=f"anekit-{backend}-worker", daemon=True
        )
        with _main_hidden():
            self.proc.start()
        child.close()
        self.conn = parent
        self.lock = threading.RLock()
        self.compiles = 0  # compiles sent here
        self.kernels = 0  # live kernels here, and compiles on their way here (slots taken)
        self.dead: str | None = None  # why it is gone

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        if self.dead is None and not self.proc.is_alive():
            self.dead = f"the {self.backend} worker (pid {self.pid}) {_describe_exit(self.proc.exitcode)}"
        return self.dead is None

    def _gone(self, why: str) -> WorkerError:
        self.dead = why
        try:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(1.0)
        except Exception:  # the WorkerError below is what the caller acts on
            _log.warning(
                "anekit: stopping the %s worker (pid %s) failed", self.backend, self.pid, exc_info=True
            )
        self.conn.close()
        return WorkerError(why)

    def call(self, msg: tuple, timeout: float | None = None) -> Any:
        """Send `msg`, wait for the reply; WorkerError if the worker dies or does not answer."""
        timeout = self.timeout if timeout is None else timeout
        with self.lock:
            if not self.alive:
                raise WorkerError(f"{self.dead}; its kernels will be compiled again in a new worker")
            try:
                self.conn.send(msg)
            except (BrokenPipeError, OSError) as exc:
                raise self._gone(
                    f"the {self.backend} worker (pid {self.pid}) cannot be reached: {exc}"
                ) from None
            ready = connection.wait([self.conn, self.proc.sentinel], timeout)
            if self.conn in ready:
                try:
                    reply = self.conn.recv()
                except (EOFError, OSError):
                    self.proc.join(1.0)
                    raise self._gone(
                        f"the {self.backend} worker (pid {self.pid}) {_describe_exit(self.proc.exitcode)} "
                        f"during {msg[0]!r}; the next call starts a new worker"
                    ) from None
            elif ready:
                self.proc.join(1.0)
                raise self._gone(
                    f"the {self.backend} worker (pid {self.pid}) {_describe_exit(self.proc.exitcode)} "
                    f"during {msg[0]!r}; the next call starts a new worker"
                )
            else:
                raise self._gone(
                    f"the {self.backend} worker (pid {self.pid}) did not answer {msg[0]!r} within "
                    f"{timeout:g} s and was killed; the next call starts a new worker"
                )
        if reply[0] == "ok":
            return reply[1]
        _, exc, text = reply
        if exc is not None:
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(f"(raised in the {self.backend} worker, pid {self.pid})\n{text}")
            raise exc
        raise RemoteError(f"in the {self.backend} worker (pid {self.pid}): {text}")

    def shutdown(self) -> None:
        """Ask the worker to exit; kill it if it does not."""
        if self.alive:
            try:
                self.call(("exit",), timeout=EXIT_GRACE)
            except Exception as exc:  # it is killed below if it does not exit
                _log.debug(
                    "anekit: the %s worker (pid %s) did not exit cleanly: %s", self.backend, self.pid, exc
                )
        self.proc.join(EXIT_GRACE)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(1.0)
        self.dead = self.dead or "shut down"
        try:
            self.conn.close()
        except OSError as exc:
            _log.debug("anekit: closing the pipe to the %s worker failed: %s", self.backend, exc)


def _shutdown_all(workers: list[_Worker]) -> None:
    for worker in list(workers):
        worker.shutdown()
    workers.clear()


class WorkerPool:
    """Worker processes running `backend`, each holding at most `max_kernels` live kernels.

    max_kernels: kernels live at once in one worker. For the ane backend each live kernel is a
        loaded program, and a process holds at most 128 (ane-private-api.md §10.1), so this is a
        worker's loaded-program budget; a new kernel goes to a worker with room, and a new worker
        starts only when every worker is full. (It replaces `budget`, a number of compiles per
        worker: compiles are not what is limited.)
    start_method: "spawn" or "forkserver" (default: spawn on macOS, where forkserver is refused,
        forkserver elsewhere, with the backend preloaded in the fork server so a new worker starts
        in milliseconds).
    preload: modules the fork server imports once (default: the backend and anekit.mil); only
        takes effect if this process's fork server is not running yet.
    timeout: seconds any one call may take before the worker is killed.
    """

    def __init__(
        self,
        backend: str,
        *,
        max_kernels: int = DEFAULT_MAX_KERNELS,
        start_method: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        preload: Sequence[str] | None = None,
        budget: int | None = None,
    ):
        if budget is not None:
            raise WorkerOptionError(
                "WorkerPool(budget=...) was a number of compiles per worker; what a process is "
                "limited in is programs loaded at once (ane-private-api.md §10.1), so pass "
                "max_kernels=N (live kernels per worker) instead"
            )
        if not isinstance(max_kernels, int) or max_kernels < 1:
            raise WorkerOptionError(
                f"a worker must hold at least 1 kernel (max_kernels), not {max_kernels!r}"
            )
        method = check_start_method(start_method or default_start_method())
        from . import BACKENDS

        if backend not in BACKENDS:  # fail here, not in the worker (without importing it here)
            raise WorkerOptionError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.max_kernels = max_kernels
        self.timeout = timeout
        self.start_method = method
        self._ctx = mp.get_context(method)
        if method == "forkserver":
            if preload is None:
                preload = [f"anekit.backends.{backend}", "anekit.mil", __name__]
            self._ctx.set_forkserver_preload(list(preload))
        self._workers: list[_Worker] = []
        self._current: _Worker | None = None  # the newest worker; it stays up when idle
        self._lock = threading.RLock()
        self.compiles = 0
        self._finalizer = weakref.finalize(self, _shutdown_all, self._workers)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers still running."""
        with self._lock:
            return [w.pid for w in self._workers if w.alive]

    def _worker_for_compile(self) -> _Worker:
        """A worker with room for one more kernel (the newest if it has room, else the first
        that has), or a new one when all are full; the slot is taken here, before the compile."""
        with self._lock:
            if self.closed:
                raise WorkerError(f"the {self.backend} worker pool is closed")
            room = [w for w in self._workers if w.alive and w.kernels < self.max_kernels]
            worker = self._current if self._current in room else (room[0] if room else None)
            if worker is None:
                previous = self._current
                worker = self._current = _Worker(self._ctx, self.backend, self.timeout)
                self._workers.append(worker)
                if previous is not None:
                    self._stop_if_idle(previous)
            worker.kernels += 1
            worker.compiles += 1
            self.compiles += 1
            return worker

    def _stop_if_idle(self, worker: _Worker) -> None:
        """Stop a worker that holds no kernel, unless it is the newest one and alive."""
        with self._lock:
            if worker.kernels <= 0 and (worker is not self._current or not worker.alive):
                worker.shutdown()
                if worker in self._workers:
                    self._workers.remove(worker)
                if self._current is worker:
                    self._current = None

    def _kernel_closed(self, worker: _Worker) -> None:
        with self._lock:
            worker.kernels -= 1
            self._stop_if_idle(worker)

    def compile(self, source: Any, **options: Any) -> WorkerKernel:
        """Compile `source` (Program or MilModel) in a worker; `options` go to the backend."""
        from ..mil.model import MilModel

        if not isinstance(source, MilModel):
            from ..mil.printer import dumps

            source = dumps(source)
        return WorkerKernel(self, source, options)

    def close(self) -> None:
        """Stop every worker; their kernels fail from then on."""
        with self._lock:
            self._current = None
            self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- caller side: kernels and bindings -----------------------------------------------------------
class _Remote:
    """What a WorkerKernel/WorkerBinding must give back (kept apart for its finalizer)."""

    def __init__(self, pool: WorkerPool | None):
        self.pool = pool
        self.worker: _Worker | None = None
        self.rid: int | None = None
        self.inputs = _Slots()
        self.outputs = _Slots()
        self.is_kernel = pool is not None

    def release(self) -> None:
        worker, rid = self.worker, self.rid
        self.worker = self.rid = None
        if worker is not None and rid is not None and worker.alive:
            try:
                worker.call(("close", rid), timeout=EXIT_GRACE)
            except WorkerError as exc:  # the worker is gone, and what it held with it
                _log.debug("anekit: %s", exc)
            except Exception:  # closing failed inside the worker; the caller's side is freed anyway
                _log.warning(
                    "anekit: closing object %d in the %s worker failed", rid, worker.backend, exc_info=True
                )
        if self.is_kernel and worker is not None and self.pool is not None:
            self.pool._kernel_closed(worker)
        self.inputs.close()
        self.outputs.close()


def _capacity(spec: TensorSpec) -> int:
    if any(d is None for d in spec.shape):
        return 64
    try:
        from ..mil.dtypes import dtype

        item = dtype(spec.dtype).numpy.itemsize
    except Exception:  # a dtype without NumPy storage: a guess; a result that does not fit
        item = 8  # comes back inline and the block grows to it (`_write_outputs`, `_call_run`)
    return max(int(np.prod(spec.shape, dtype=np.int64)) * item, 1)


class WorkerKernel(Kernel):
    """A kernel compiled and run in a worker process; used like any other kernel.

    `pid` is the worker's process id. If the worker dies, the call in flight raises WorkerError
    and the next call compiles the program again in a new worker (bindings re-send their staged
    inputs), so a long run continues.
    """

    def __init__(self, pool: WorkerPool, model: Any, options: Mapping[str, Any]):
        self.backend = pool.backend
        self._pool = pool
        self._model = model
        self._options = dict(options)
        self._lock = threading.RLock()
        self._remote = _Remote(pool)
        self._finalizer = weakref.finalize(self, self._remote.release)
        self.last_eval: EvalTiming | None = None
        self.remote_type = "?"
        self.compiles = 0
        try:
            self._connect()
        except BaseException:
            self._finalizer()
            raise

    @property
    def pid(self) -> int | None:
        worker = self._remote.worker
        return worker.pid if worker is not None else None

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def _connect(self) -> None:
        """Compile in a worker with room (the first time, and after a worker died)."""
        remote = self._remote
        old = remote.worker
        if old is not None:
            remote.worker = remote.rid = None
            self._pool._kernel_closed(old)
        worker = self._pool._worker_for_compile()  # takes a slot there
        self.compiles += 1
        try:
            rid, ins, outs, kind = worker.call(
                ("compile", self._model.text, dict(self._model.weights), self._options)
            )
        except BaseException:
            self._pool._kernel_closed(worker)  # give the slot back
            raise
        remote.worker, remote.rid = worker, rid
        self.inputs = {n: TensorSpec(n, tuple(s), d) for n, s, d in ins}
        self.outputs = {n: TensorSpec(n, tuple(s), d) for n, s, d in outs}
        self.remote_type = kind

    def _ensure(self) -> _Worker:
        if self.closed:
            raise RuntimeError("this worker kernel is closed")
        worker = self._remote.worker
        if worker is None or not worker.alive:
            _log.warning(
                "anekit: the %s worker is gone; compiling the kernel again in a new one", self.backend
            )
            self._connect()
        return self._remote.worker

    def _call_run(self, worker: _Worker, rid: int, descriptors: list) -> dict[str, np.ndarray]:
        slots = self._remote.outputs
        reserve = [slots.reserve(name, _capacity(spec)) for name, spec in self.outputs.items()]
        results, timing = worker.call(("run", rid, descriptors, reserve))
        self.last_eval = timing
        outputs = {}
        for item in results:
            if item[1] == "shm":
                name, _, dtype, shape = item
                outputs[name] = slots.read(name, dtype, shape)
            else:
                name, _, arr = item
                outputs[name] = arr
                slots.reserve(name, arr.nbytes)  # grow the block for next time
        return outputs

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            worker = self._ensure()
            descriptors = [self._remote.inputs.put(name, arr) for name, arr in inputs.items()]
            return self._call_run(worker, self._remote.rid, descriptors)

    def new_binding(self) -> WorkerBinding:
        with self._lock:
            self._ensure()
            return WorkerBinding(self)

    @property
    def shared_memory_names(self) -> list[str]:
        """Names of the shared-memory blocks this kernel holds (tests check they are unlinked)."""
        return self._remote.inputs.names + self._remote.outputs.names

    def close(self) -> None:
        with self._lock:
            self._finalizer()


class WorkerBinding(Binding):
    """A binding of a WorkerKernel: its own input blocks in shared memory and its own request in
    the worker; the kernel's output blocks."""

    kernel: WorkerKernel

    def __init__(self, kernel: WorkerKernel):
        super().__init__(kernel)
        self._remote = _Remote(None)
        self._finalizer = weakref.finalize(self, self._remote.release)
        self._connect()

    def _connect(self) -> None:
        worker = self.kernel._remote.worker
        self._remote.rid = worker.call(("bind", self.kernel._remote.rid))
        self._remote.worker = worker
        staged = self._remote.inputs.descriptors()
        if staged:  # a new worker: stage again what the old one had
            worker.call(("write", self._remote.rid, staged))

    def _ensure(self) -> _Worker:
        if not self._finalizer.alive:
            raise RuntimeError("this binding is closed")
        worker = self.kernel._ensure()
        if self._remote.worker is not worker:
            self._connect()
        return worker

    def write(self, **inputs) -> None:
        arrays = check_inputs(self.kernel.inputs, inputs, partial=True)
        with self.kernel._lock:
            worker = self._ensure()
            descriptors = [self._remote.inputs.put(name, arr) for name, arr in arrays.items()]
            worker.call(("write", self._remote.rid, descriptors))

    def run(self, **inputs) -> dict[str, np.ndarray]:
        arrays = check_inputs(self.kernel.inputs, inputs, partial=True) if inputs else {}
        with self.kernel._lock:
            worker = self._ensure()
            staged = {d[0] for d in self._remote.inputs.descriptors()} | set(arrays)
            missing = [n for n in self.kernel.inputs if n not in staged]
            if missing:
                raise KernelInputError(f"binding has no value yet for input(s): {', '.join(missing)}")
            descriptors = [self._remote.inputs.put(name, arr) for name, arr in arrays.items()]
            return self.kernel._call_run(worker, self._remote.rid, descriptors)

    __call__ = run

    def close(self) -> None:
        self._finalizer()
