"""`AneKernel` and `compile_model`: the engine call sequence wrapped as an anekit `Kernel`.

What this module decides (all of it testable off a Mac with a stand-in for `bridge`):
- which programs really get compiled: identical text + weights + options compile once per process
  (`ModelCache`; identical programs would share one hex id and temp dir anyway, §1.4 notes);
- where they get compiled: in this process until `compile_budget` compiles were spent (§1.11: the
  compiler leaks and fails after ~119 per process; maderix budgets 100 and exec()s itself), then
  in worker processes (`anekit.backends.worker`), transparently;
- how tensors sit in surfaces (`layout`), one surface per input and output (§1.5), a request built
  once per binding and reused (§1.6), many bindings sharing one compiled model and its output
  surfaces (§1.6 per-layer requests);
- timing of each synchronous eval, and cleanup of everything on close, on error and at exit.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
import time
import uuid
import warnings
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..base import Binding, EvalTiming, Kernel, KernelInputError, TensorSpec, check_inputs
from ..worker import WorkerPool, in_worker
from .layout import (
    SurfaceLayout,
    match_strides,
    pack,
    parse_model_attributes,
    slot_order_warnings,
    surface_layout,
    unpack,
)

_log = logging.getLogger("anekit.ane")

#: §1.2: QoS 21 (QOS_CLASS_DEFAULT) everywhere in maderix; §4.7: every value works alike.
DEFAULT_QOS = 21
#: §1.11: maderix's MAX_COMPILES; the compiler fails after ~119 compiles in one process.
DEFAULT_COMPILE_BUDGET = 100
BUDGET_ENV = "ANEKIT_COMPILE_BUDGET"
#: How many per-eval timings a kernel keeps.
TIMINGS_KEPT = 1024
#: Compiled models kept loaded after their last kernel closed, for a recompile of the same program.
DEFAULT_KEEP_IDLE = 16


def default_budget() -> int:
    """The compile budget per process: `$ANEKIT_COMPILE_BUDGET` or 100 (§1.11)."""
    raw = os.environ.get(BUDGET_ENV)
    if raw is None:
        return DEFAULT_COMPILE_BUDGET
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"${BUDGET_ENV} must be an integer, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"${BUDGET_ENV} must be >= 0, not {value}")
    return value


class CompileCounter:
    """Engine compiles attempted in this process (§1.11). A failed compile counts too: the
    compiler ran, and whether a failure leaks is not known."""

    def __init__(self) -> None:
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def add(self) -> int:
        with self._lock:
            self._used += 1
            return self._used


#: This process's counter.
COMPILES = CompileCounter()


def cache_key(text: str, weights: Mapping[str, bytes], options: Mapping[str, Any]) -> str:
    """SHA-256 of the MIL text, every weight file (path and bytes) and the options that change
    what gets compiled. Two programs with the same key are the same engine program."""
    h = hashlib.sha256()
    h.update(b"anekit-ane-v1\0")
    data = text.encode("utf-8")
    h.update(len(data).to_bytes(8, "little") + data)
    for path in sorted(weights):
        blob = bytes(weights[path])
        p = path.encode("utf-8")
        h.update(len(p).to_bytes(8, "little") + p + len(blob).to_bytes(8, "little") + blob)
    h.update(repr(sorted(options.items())).encode("utf-8"))
    return h.hexdigest()


class ModelCache:
    """Compiled models by cache key, shared by every kernel that uses them (reference counted).

    When the last kernel releases an entry it stays loaded among the `keep_idle` most recently
    idle ones, so compiling the same program again costs nothing; older idle entries are closed
    (unloaded, temp dir removed). Entries acquired with `keep=False` close as soon as they are idle.
    """

    def __init__(self, keep_idle: int = DEFAULT_KEEP_IDLE):
        self.keep_idle = keep_idle
        self._entries: dict[str, list] = {}  # key -> [object, refcount, keep]
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def acquire(self, key: str, factory: Callable[[], Any], keep: bool = True) -> Any:
        """The object for `key`, made by `factory()` on a miss (a failing factory caches nothing)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self.hits += 1
                entry[1] += 1
                self._idle.pop(key, None)
                return entry[0]
            self.misses += 1
            obj = factory()
            self._entries[key] = [obj, 1, keep]
            return obj

    def release(self, key: str) -> None:
        """One user is done with `key`; closes what falls out of the idle window."""
        to_close = []
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return  # already cleared (interpreter exit)
            entry[1] -= 1
            if entry[1] > 0:
                return
            if not entry[2]:
                to_close.append(self._entries.pop(key)[0])
            else:
                self._idle[key] = None
                while len(self._idle) > self.keep_idle:
                    old, _ = self._idle.popitem(last=False)
                    to_close.append(self._entries.pop(old)[0])
        for obj in to_close:
            _close_quietly(obj)

    def clear(self) -> None:
        """Close every entry, used or not (interpreter exit)."""
        with self._lock:
            objs = [e[0] for e in self._entries.values()]
            self._entries.clear()
            self._idle.clear()
        for obj in objs:
            _close_quietly(obj)


def _close_quietly(obj: Any) -> None:
    try:
        obj.close()
    except Exception as exc:  # cleanup must go on; the failure is still reported
        _log.warning("anekit: releasing %r failed: %s", obj, exc)


#: This process's compiled models.
CACHE = ModelCache()
atexit.register(CACHE.clear)


def _bridge():
    """The Objective-C bridge (macOS only; tests substitute a stand-in here)."""
    from . import bridge

    return bridge


@dataclass
class Prepared:
    """A program ready for the compiler: its MIL text and weights, and its I/O in order."""

    model: Any  # MilModel
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


def prepare(source: Any, function: str = "main") -> Prepared:
    """MIL text + weights (printed from a Program, or as given) and the I/O specs as the text names
    them (parsed back, so names are exactly what the compiler sees), in declaration order: input
    and output i is surface index i of the request (§1.6)."""
    from ...mil.model import MilModel
    from ..reference.interpreter import var_spec

    if isinstance(source, MilModel):
        model = source
    else:
        from ...mil.printer import dumps

        model = dumps(source)
    program = model.program()
    if function not in program.functions:
        raise ValueError(f"program has no function {function!r} (it has {', '.join(program.functions)})")
    func = program.functions[function]
    inputs = {name: var_spec(v) for name, v in func.inputs.items()}
    outputs = {v.name: var_spec(v) for v in func.outputs}
    return Prepared(model, inputs, outputs)


class CompiledModel:
    """One compiled, loaded engine program and the strides the engine reported for its I/O."""

    def __init__(self, engine: Any, qos: int, prepared: Prepared):
        self.engine = engine
        self.qos = qos
        try:
            self.attributes = engine.attributes()
        except BaseException:
            engine.close(qos)
            raise
        ins, outs = parse_model_attributes(self.attributes)  # §1.7
        self.in_strides = match_strides(list(prepared.inputs), ins)
        self.out_strides = match_strides(list(prepared.outputs), outs)

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close(self.qos)  # §1.2 step 9 + §1.4 temp dir removal


def _compile_engine(prepared: Prepared, qos: int, perf_stats_mask: int | None) -> CompiledModel:
    bridge = _bridge()
    bridge.require()
    COMPILES.add()
    text = prepared.model.text.encode("utf-8")
    engine = bridge.compile_and_load(text, prepared.model.weights, qos, perf_stats_mask)
    return CompiledModel(engine, qos, prepared)


class _Resources:
    """What a kernel must give back, kept apart from it so a finalizer can release it."""

    def __init__(self, cache: ModelCache, key: str):
        self.cache = cache
        self.key = key
        self.surfaces: list[Any] = []
        self.released = False

    def surface(self, nbytes: int) -> Any:
        surface = _bridge().create_surface(nbytes)
        self.surfaces.append(surface)
        with surface.lock() as buf:  # start from zeros, padding bytes included
            np.frombuffer(buf, dtype=np.uint8)[:] = 0
        return surface

    def drop(self, surface: Any) -> None:
        if surface in self.surfaces:
            self.surfaces.remove(surface)
        _release_surface(surface)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        for surface in self.surfaces:
            _release_surface(surface)
        self.surfaces.clear()
        self.cache.release(self.key)


def _release_surface(surface: Any) -> None:
    try:
        surface.release()
    except Exception as exc:
        _log.warning("anekit: releasing an IOSurface failed: %s", exc)


class AneKernel(Kernel):
    """A program on the engine: its compiled model (shared), output surfaces, and a default binding.

    `kernel(**inputs)` writes the inputs into the default binding's surfaces, evaluates
    synchronously and reads the outputs. `kernel.new_binding()` gives another request on the same
    compiled model with its own input surfaces and the kernel's output surfaces (§1.6).
    `kernel.timings` holds one `EvalTiming` per eval (wall time; `hw_ns` only if the engine says).
    """

    backend = "ane"

    def __init__(self, prepared: Prepared, key: str, cache: ModelCache, compiled: CompiledModel):
        self.inputs = dict(prepared.inputs)
        self.outputs = dict(prepared.outputs)
        self.qos = compiled.qos
        self.cache_key = key
        self.timings: deque[EvalTiming] = deque(maxlen=TIMINGS_KEPT)
        self._compiled = compiled
        self._lock = threading.RLock()
        self._resources = _Resources(cache, key)
        self._finalizer = weakref.finalize(self, self._resources.release)
        try:
            self._in_layouts = [
                surface_layout(spec, st) for spec, st in zip(self.inputs.values(), compiled.in_strides)
            ]
            self._out_layouts = [
                surface_layout(spec, st) for spec, st in zip(self.outputs.values(), compiled.out_strides)
            ]
            for note in slot_order_warnings(
                [lay.nbytes for lay in self._in_layouts], [lay.nbytes for lay in self._out_layouts]
            ):
                warnings.warn(note, stacklevel=3)
            self._out_surfaces = [self._resources.surface(lay.nbytes) for lay in self._out_layouts]
            self._default = AneBinding(self)
        except BaseException:
            self._finalizer()
            raise

    # -- layouts, for reports and tests ----------------------------------------------------------
    @property
    def input_layouts(self) -> dict[str, SurfaceLayout]:
        return {lay.name: lay for lay in self._in_layouts}

    @property
    def output_layouts(self) -> dict[str, SurfaceLayout]:
        return {lay.name: lay for lay in self._out_layouts}

    @property
    def attributes(self) -> Any:
        """The engine's `modelAttributes` after load (§1.7), as plain Python, or None."""
        return self._compiled.attributes

    @property
    def last_eval(self) -> EvalTiming | None:
        return self.timings[-1] if self.timings else None

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    # -- running ---------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this ane kernel is closed")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self._default._write_arrays(inputs)
            return self._default._evaluate()

    def new_binding(self) -> AneBinding:
        with self._lock:
            self._check_open()
            return AneBinding(self)

    def _evaluate(self, request: Any) -> dict[str, np.ndarray]:
        """§1.2 step 8 on `request`, timed; then the outputs, copied out of the shared surfaces."""
        self._check_open()
        t0 = time.perf_counter()
        self._compiled.engine.evaluate(request, self.qos)
        wall = time.perf_counter() - t0
        self.timings.append(EvalTiming(wall, _bridge().hw_execution_time(request)))  # §1.10
        outputs = {}
        for lay, surface in zip(self._out_layouts, self._out_surfaces):
            with surface.lock(read_only=True) as buf:
                outputs[lay.name] = unpack(lay, buf)
        return outputs

    def close(self) -> None:
        """Release the surfaces and this kernel's hold on the compiled model (unloaded when no
        kernel uses it and it falls out of the cache). Safe to call twice; also runs at exit."""
        with self._lock:
            self._finalizer()


class AneBinding(Binding):
    """One request on an `AneKernel`'s compiled model: its own input surfaces, the kernel's outputs.

    `write(**inputs)` packs inputs into this binding's surfaces (once, e.g. a layer's weights);
    `run(**inputs)` packs any given inputs and evaluates this binding's request (§1.6).
    """

    kernel: AneKernel

    def __init__(self, kernel: AneKernel):
        super().__init__(kernel)
        self._surfaces = [kernel._resources.surface(lay.nbytes) for lay in kernel._in_layouts]
        self._written: set[str] = set()
        try:
            self._request = _bridge().make_request(self._surfaces, kernel._out_surfaces)  # §1.6, once
        except BaseException:
            self.close()
            raise

    def _write_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        kernel = self.kernel
        kernel._check_open()
        if self._request is None:
            raise RuntimeError("this binding is closed")
        names = list(kernel.inputs)
        for name, array in arrays.items():
            i = names.index(name)
            with self._surfaces[i].lock() as buf:
                pack(kernel._in_layouts[i], array, buf)
            self._written.add(name)

    def _evaluate(self) -> dict[str, np.ndarray]:
        missing = [n for n in self.kernel.inputs if n not in self._written]
        if missing:
            raise KernelInputError(f"binding has no value yet for input(s): {', '.join(missing)}")
        return self.kernel._evaluate(self._request)

    def write(self, **inputs) -> None:
        arrays = check_inputs(self.kernel.inputs, inputs, partial=True)
        with self.kernel._lock:
            self._write_arrays(arrays)

    def run(self, **inputs) -> dict[str, np.ndarray]:
        arrays = check_inputs(self.kernel.inputs, inputs, partial=True) if inputs else {}
        with self.kernel._lock:
            self._write_arrays(arrays)
            return self._evaluate()

    __call__ = run

    def close(self) -> None:
        """Release this binding's input surfaces (the kernel and its outputs stay)."""
        self._request = None
        for surface in self._surfaces:
            self.kernel._resources.drop(surface)
        self._surfaces = []


# -- compile_model -----------------------------------------------------------------------------
_POOLS: dict[tuple, WorkerPool] = {}
_POOLS_LOCK = threading.Lock()


def _pool(backend: str, budget: int, start_method: str | None, timeout: float | None) -> WorkerPool:
    key = (backend, budget, start_method, timeout)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None or pool.closed:
            kwargs = {} if timeout is None else {"timeout": timeout}
            pool = _POOLS[key] = WorkerPool(backend, max_kernels=budget, start_method=start_method, **kwargs)
        return pool


def compile_model(
    source: Any,
    *,
    qos: int = DEFAULT_QOS,
    cache: bool = True,
    compile_budget: int | None = None,
    worker_budget: int | None = None,
    worker_backend: str = "ane",
    worker_options: Mapping[str, Any] | None = None,
    start_method: str | None = None,
    timeout: float | None = None,
    perf_stats_mask: int | None = None,
    function: str = "main",
) -> Kernel:
    """Compile `source` (Program or MilModel) for the engine and return its kernel.

    qos: the QoS of compile, load, eval and unload (§1.2; 21). cache: reuse an identical program
        compiled earlier in this process instead of compiling it again.
    compile_budget: engine compiles allowed in this process (default `$ANEKIT_COMPILE_BUDGET` or
        100, §1.11). Past it, compiling and running move to worker processes, each with
        `worker_budget` compiles (default: the same budget), so no process hits the limit.
    worker_backend: the backend the workers run ("ane"; "reference" exercises the worker path
        off a Mac). worker_options: options for that backend's compile (the ane options here are
        forwarded when it is "ane"). start_method: multiprocessing start method of the workers
        (spawn on macOS by default). timeout: seconds a worker may take to answer one call.
    perf_stats_mask: set `perfStatsMask` before compile, the untested §1.10 hypothesis for
        getting `hwExecutionTime`; None leaves the model as maderix does.
    """
    if not isinstance(qos, int) or qos < 0:
        raise ValueError(f"qos must be a non-negative int, not {qos!r}")
    prepared = prepare(source, function)
    budget = default_budget() if compile_budget is None else int(compile_budget)
    key = cache_key(
        prepared.model.text, prepared.model.weights, {"qos": qos, "perf_stats_mask": perf_stats_mask}
    )
    if in_worker() or (cache and key in CACHE) or COMPILES.used < budget:
        cache_id = key if cache else f"uncached:{uuid.uuid4().hex}"
        compiled = CACHE.acquire(
            cache_id, lambda: _compile_engine(prepared, qos, perf_stats_mask), keep=cache
        )
        # From here the kernel owns one hold on the cache entry; it gives it back on close, on
        # garbage collection, at exit, and if its own construction fails (layout, surfaces).
        return AneKernel(prepared, cache_id, CACHE, compiled)
    # §1.11: this process has spent its compile budget; a worker process compiles and runs it.
    per_worker = worker_budget if worker_budget is not None else (budget or DEFAULT_COMPILE_BUDGET)
    options = dict(worker_options or {})
    if worker_backend == "ane":
        options.update(qos=qos, cache=cache, perf_stats_mask=perf_stats_mask, function=function)
    _log.info("anekit: %d engine compiles spent in this process; compiling in a worker", COMPILES.used)
    return _pool(worker_backend, per_worker, start_method, timeout).compile(prepared.model, **options)
