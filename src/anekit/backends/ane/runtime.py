"""`AneKernel` and `compile_model`: the engine call sequence wrapped as an anekit `Kernel`.

What this module decides (all of it testable off a Mac with a stand-in for `bridge`):
- which programs really get compiled: identical text + weights + options compile once per process
  (`ModelCache`; identical programs would share one hex id and temp dir anyway, §1.4 notes);
- how many are loaded: the engine's driver holds at most 128 loaded programs per process and
  unloading frees a slot (ane-private-api.md §10.1, correcting §1.11's "~119 compiles"). Programs
  no kernel uses stay loaded until room is needed, then the least recently used is unloaded
  (kept for a reload without compiling, §1.10); a program in use (an open kernel: its requests
  are built against the loaded model, §1.6) is never unloaded. Only when more programs must be
  live at once than the loaded-program budget allows do new kernels go to worker processes
  (`anekit.backends.worker`), transparently;
- how tensors sit in surfaces (`layout`), one surface per input and output (§1.5), matched to the
  model's own entries by name and passed in the model's own order (§10.3), a request built once
  per binding and reused (§1.6), many bindings sharing one compiled model and its output surfaces
  (§1.6 per-layer requests);
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

from ...engine_limits import DEFAULT_LOADED_PROGRAM_BUDGET, ENGINE_PROGRAM_CAP
from ...errors import AnekitError
from ..base import (
    Binding,
    EvalTiming,
    Kernel,
    KernelInputError,
    TensorSpec,
    check_inputs,
    pick_function,
    var_spec,
)
from ..worker import WorkerPool, in_worker
from .layout import (
    SurfaceLayout,
    match_ports,
    pack,
    parse_ports,
    slot_order_warnings,
    surface_layout,
    unpack,
)

_log = logging.getLogger("anekit.ane")

#: §1.2: QoS 21 (QOS_CLASS_DEFAULT) everywhere in maderix; §4.7: every value works alike.
DEFAULT_QOS = 21
# ENGINE_PROGRAM_CAP (128 per process, §10.1) and DEFAULT_LOADED_PROGRAM_BUDGET (120) are imported
# from anekit.engine_limits, which states why.
BUDGET_ENV = "ANEKIT_LOADED_PROGRAM_BUDGET"
#: The names the compile budget had; asking for them is an error that names the replacement.
RENAMED_ENV = {"ANEKIT_COMPILE_BUDGET": BUDGET_ENV}
RENAMED_OPTIONS = {
    "compile_budget": "loaded_program_budget",
    "worker_budget": "worker_loaded_program_budget",
}
#: How many per-eval timings a kernel keeps.
TIMINGS_KEPT = 1024
#: Unloaded programs kept (compiled model + temp dir) so a later use reloads instead of compiling.
DEFAULT_KEEP_UNLOADED = 64


class AneOptionError(AnekitError, ValueError):
    """An ane backend option or environment variable is out of range or was renamed; the message
    says what to use."""


class LoadedProgramBudgetError(AnekitError, RuntimeError):
    """More programs must be loaded at once in a worker process than its budget allows."""


def check_budget(value: Any, what: str) -> int:
    """A loaded-program budget: an integer from 1 to the engine's cap of 128 (§10.1)."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
    if number is None:
        raise AneOptionError(f"{what} must be an integer from 1 to {ENGINE_PROGRAM_CAP}, not {value!r}")
    if not 1 <= number <= ENGINE_PROGRAM_CAP:
        raise AneOptionError(
            f"{what} must be from 1 to {ENGINE_PROGRAM_CAP} (the engine holds at most "
            f"{ENGINE_PROGRAM_CAP} loaded programs per process, ane-private-api.md §10.1), not {number}"
        )
    return number


def default_loaded_program_budget() -> int:
    """Programs loaded at once per process: `$ANEKIT_LOADED_PROGRAM_BUDGET` or 120 (§10.1)."""
    for old, new in RENAMED_ENV.items():
        if old in os.environ:
            raise AneOptionError(
                f"${old} is no longer read: the per-process limit is on loaded programs, not compiles "
                f"(ane-private-api.md §10.1); unset it and set ${new} (1 to {ENGINE_PROGRAM_CAP}, "
                f"default {DEFAULT_LOADED_PROGRAM_BUDGET}) if you need another limit"
            )
    raw = os.environ.get(BUDGET_ENV)
    if raw is None:
        return DEFAULT_LOADED_PROGRAM_BUDGET
    return check_budget(raw, f"${BUDGET_ENV}")


def refuse_renamed(options: Mapping[str, Any]) -> None:
    """`AneOptionError` for an option of the old compile budget, `TypeError` for anything else."""
    for name in options:
        if name in RENAMED_OPTIONS:
            raise AneOptionError(
                f"the ane option {name}= was removed: the engine limits loaded programs (128 per "
                f"process, ane-private-api.md §10.1), not compiles; use {RENAMED_OPTIONS[name]}="
            )
        raise TypeError(f"compile() got an unexpected keyword argument {name!r}")


class CompileCounter:
    """Engine compiles attempted in this process (reported by doctor; no longer a limit, §10.1)."""

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


class NoRoom(Exception):
    """Every loaded program is in use and the budget is reached (`compile_model` then uses a
    worker process). Internal: never reaches a user."""

    def __init__(self, loaded: int, budget: int):
        super().__init__(f"{loaded} programs loaded and in use, budget {budget}")
        self.loaded, self.budget = loaded, budget


class _Entry:
    __slots__ = ("obj", "users", "keep", "loaded")

    def __init__(self, obj: Any, keep: bool):
        self.obj, self.users, self.keep, self.loaded = obj, 1, keep, True


class ModelCache:
    """The programs this process compiled, by cache key, shared by every kernel that uses them.

    Each entry is loaded or not. A loaded entry with users (open kernels) is in use and is never
    unloaded. When the last user lets go it stays loaded (idle), so compiling the same program
    again costs nothing. `acquire(..., budget=N)` keeps at most N programs loaded: before loading
    one more it unloads the least recently used idle entries (ane-private-api.md §10.1); if every
    loaded entry is in use it raises `NoRoom`. An unloaded entry is kept (at most `keep_unloaded`,
    least recently used closed first) and reloaded without compiling on its next use (§1.10),
    or compiled afresh when the reload fails. Entries made with `keep=False` close when idle.

    The objects need `unload()`, `reload()` and `close()`.
    """

    def __init__(self, keep_unloaded: int = DEFAULT_KEEP_UNLOADED):
        self.keep_unloaded = keep_unloaded
        self._entries: dict[str, _Entry] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()  # loaded, no user; oldest first
        self._unloaded: OrderedDict[str, None] = OrderedDict()  # kept for reload; oldest first
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0
        self.reloads = 0
        self.unloads = 0

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def loaded(self) -> int:
        """Programs loaded on the engine now."""
        with self._lock:
            return sum(1 for e in self._entries.values() if e.loaded)

    @property
    def in_use(self) -> int:
        """Loaded programs with at least one user (never unloaded)."""
        with self._lock:
            return sum(1 for e in self._entries.values() if e.users > 0)

    def is_loaded(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.loaded

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "loaded": self.loaded,
                "in_use": self.in_use,
                "idle_loaded": len(self._idle),
                "unloaded_kept": len(self._unloaded),
                "hits": self.hits,
                "misses": self.misses,
                "reloads": self.reloads,
                "unloads": self.unloads,
            }

    def acquire(
        self, key: str, factory: Callable[[], Any], keep: bool = True, budget: int | None = None
    ) -> Any:
        """The loaded object for `key`: as it is, reloaded, or made by `factory()` (a failing
        factory caches nothing). With `budget`, at most that many entries are loaded afterwards;
        `NoRoom` when that would need unloading one in use."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.loaded:
                self.hits += 1
                entry.users += 1
                self._idle.pop(key, None)
                return entry.obj
            self._make_room(budget)
            if entry is not None:  # unloaded earlier: load it again without compiling (§1.10)
                self._unloaded.pop(key, None)
                try:
                    entry.obj.reload()
                except Exception as exc:  # e.g. its compiled files are gone: compile it afresh
                    _log.info("anekit: reloading an unloaded program failed (%s); compiling it again", exc)
                    del self._entries[key]
                    _close_quietly(entry.obj)
                else:
                    entry.loaded, entry.users = True, 1
                    self.reloads += 1
                    return entry.obj
            self.misses += 1
            obj = factory()
            self._entries[key] = _Entry(obj, keep)
            return obj

    def _make_room(self, budget: int | None) -> None:
        """Unload idle entries, least recently used first, until one more fits in `budget`."""
        if budget is None:
            return
        while self.loaded >= budget:
            if not self._idle:
                raise NoRoom(self.loaded, budget)
            key, _ = self._idle.popitem(last=False)
            entry = self._entries[key]
            try:
                entry.obj.unload()
            except Exception as exc:
                _log.warning("anekit: unloading an idle program failed (%s); closing it", exc)
                del self._entries[key]
                _close_quietly(entry.obj)
                continue
            entry.loaded = False
            self.unloads += 1
            if entry.keep and self.keep_unloaded > 0:
                self._unloaded[key] = None
                while len(self._unloaded) > self.keep_unloaded:
                    old, _ = self._unloaded.popitem(last=False)
                    _close_quietly(self._entries.pop(old).obj)
            else:
                del self._entries[key]
                _close_quietly(entry.obj)

    def release(self, key: str) -> None:
        """One user is done with `key`: it becomes idle (most recently used), or closes if made
        with keep=False."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return  # already cleared (interpreter exit)
            entry.users -= 1
            if entry.users > 0:
                return
            if not entry.keep:
                del self._entries[key]
                _close_quietly(entry.obj)
            else:
                self._idle[key] = None

    def clear(self) -> None:
        """Close every entry, used or not (interpreter exit)."""
        with self._lock:
            objs = [e.obj for e in self._entries.values()]
            self._entries.clear()
            self._idle.clear()
            self._unloaded.clear()
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


def prepare(source: Any, function: str | None = None) -> Prepared:
    """MIL text + weights (printed from a Program, or as given) and the I/O specs as the text names
    them (parsed back, so names are exactly what the compiler sees), in declaration order: input
    and output i is surface index i of the request (§1.6)."""
    from ...mil.model import MilModel

    if isinstance(source, MilModel):
        model = source
    else:
        from ...mil.printer import dumps

        model = dumps(source)
    program = model.program()
    func = program.functions[pick_function(program, function)]
    inputs = {name: var_spec(v) for name, v in func.inputs.items()}
    outputs = {v.name: var_spec(v) for v in func.outputs}
    return Prepared(model, inputs, outputs)


class CompiledModel:
    """One compiled engine program, loaded or not, and how its I/O sits in the model (§1.7, §10.3).

    in_ports / out_ports: the engine's entry for each declared input / output (None when not
    reported). in_order / out_order: the declared indices in the model's own order, request
    index i carrying tensor `in_order[i]` (§10.3).
    """

    def __init__(self, engine: Any, qos: int, prepared: Prepared):
        self.engine = engine
        self.qos = qos
        try:
            self.attributes = engine.attributes()
            ins, outs = parse_ports(self.attributes)  # §1.7, §10.3
            self.in_ports, self.in_order = match_ports(list(prepared.inputs), ins, "input")
            self.out_ports, self.out_order = match_ports(list(prepared.outputs), outs, "output")
        except BaseException:
            engine.close(qos)
            raise

    @property
    def in_strides(self) -> list:
        return [None if p is None else p.strides for p in self.in_ports]

    @property
    def out_strides(self) -> list:
        return [None if p is None else p.strides for p in self.out_ports]

    def unload(self) -> None:
        """Free its engine slot (§10.1), keeping the compiled model for `reload`."""
        self.engine.unload(self.qos)

    def reload(self) -> None:
        """Load it again without compiling (§1.10 test_weight_reload)."""
        self.engine.load(self.qos)

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close(self.qos)  # §1.2 step 9 + §1.4 temp dir release


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
            # §10.3: each tensor from its own entry (strides, and the engine's NCHW for any rank)
            self._in_layouts = [
                surface_layout(spec, None if p is None else p.strides, None if p is None else p.nchw)
                for spec, p in zip(self.inputs.values(), compiled.in_ports)
            ]
            self._out_layouts = [
                surface_layout(spec, None if p is None else p.strides, None if p is None else p.nchw)
                for spec, p in zip(self.outputs.values(), compiled.out_ports)
            ]
            self._in_order, self._out_order = list(compiled.in_order), list(compiled.out_order)
            for note in slot_order_warnings(  # §1.12: sizes in the order the request passes them
                [self._in_layouts[i].nbytes for i in self._in_order],
                [self._out_layouts[i].nbytes for i in self._out_order],
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
            # §1.6, built once. §10.3: surfaces in the model's own order, index i = its entry i.
            self._request = _bridge().make_request(
                [self._surfaces[i] for i in kernel._in_order],
                [kernel._out_surfaces[i] for i in kernel._out_order],
                list(range(len(kernel._in_order))),
                list(range(len(kernel._out_order))),
            )
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

    def write_slice(self, name: str, index, values) -> None:
        """Assign `values` into part of input `name` directly in this binding's input surface
        (locked, through the tensor's strided view, `layout.view`): no other byte of the surface is
        touched or copied, e.g. the new K/V rows of a cache bound once (§1.6). fp16 rounding as in
        `pack`. The input must have been written once before."""
        kernel = self.kernel
        names = list(kernel.inputs)
        if name not in names:
            raise KernelInputError(f"write_slice: no input {name!r}; the kernel takes {', '.join(names)}")
        if name not in self._written:
            raise KernelInputError(f"write_slice: input {name!r} has no value yet (write it whole first)")
        i = names.index(name)
        lay = kernel._in_layouts[i]
        with kernel._lock:
            kernel._check_open()
            if self._request is None:
                raise RuntimeError("this binding is closed")
            with self._surfaces[i].lock() as buf:
                view = lay.view(buf)
                try:
                    if view.shape != lay.shape:  # engine NCHW for a lower MIL rank: index the logical shape
                        view = view.reshape(lay.shape, copy=False)  # never a copy: the write must land
                    with np.errstate(over="ignore", invalid="ignore"):
                        view[index] = values
                except (IndexError, ValueError, TypeError) as e:
                    raise KernelInputError(f"write_slice into input {name!r} {lay.shape}: {e}") from e

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


def _pool(backend: str, max_kernels: int, start_method: str | None, timeout: float | None) -> WorkerPool:
    key = (backend, max_kernels, start_method, timeout)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None or pool.closed:
            kwargs = {} if timeout is None else {"timeout": timeout}
            pool = _POOLS[key] = WorkerPool(
                backend, max_kernels=max_kernels, start_method=start_method, **kwargs
            )
        return pool


def loaded_program_report() -> dict[str, Any]:
    """The loaded-program budget and this process's counts, for `anekit doctor` (plain values)."""
    try:
        budget: Any = default_loaded_program_budget()
    except AneOptionError as exc:
        budget = f"error: {exc}"
    with _POOLS_LOCK:
        workers = sorted({pid for pool in _POOLS.values() if not pool.closed for pid in pool.pids})
    return {
        "engine_program_cap": ENGINE_PROGRAM_CAP,
        "loaded_program_budget": budget,
        "budget_env": BUDGET_ENV,
        "source": (
            "at most 128 loaded programs per process, unloading frees a slot: MidasMulli/ane-compiler "
            "README, sbryngelson/ANEForge docs/roadmap.md (ane-private-api.md §10.1; docs/ane-backend.md)"
        ),
        "policy": (
            "idle programs stay loaded until room is needed, then the least recently used is unloaded "
            "(reloaded without compiling on its next use); programs in use are never unloaded; worker "
            "processes only when more programs must be loaded at once than the budget"
        ),
        **CACHE.stats(),
        "compiles": COMPILES.used,
        "worker_pids": workers,
    }


def compile_model(
    source: Any,
    *,
    qos: int = DEFAULT_QOS,
    cache: bool = True,
    loaded_program_budget: int | None = None,
    worker_loaded_program_budget: int | None = None,
    worker_backend: str = "ane",
    worker_options: Mapping[str, Any] | None = None,
    start_method: str | None = None,
    timeout: float | None = None,
    perf_stats_mask: int | None = None,
    function: str | None = None,
    **renamed: Any,
) -> Kernel:
    """Compile `source` (Program or MilModel) for the engine and return its kernel.

    qos: the QoS of compile, load, eval and unload (§1.2; 21). cache: reuse an identical program
        compiled earlier in this process instead of compiling it again.
    loaded_program_budget: programs this process keeps loaded at once (default
        `$ANEKIT_LOADED_PROGRAM_BUDGET` or 120; at most 128, the engine's cap, §10.1). Idle programs
        are unloaded, least recently used first, to stay under it; when every loaded program is in
        use (an open kernel), the new kernel is compiled and run in a worker process, each holding
        at most `worker_loaded_program_budget` (default: the same) live kernels.
    worker_backend: the backend the workers run ("ane"; "reference" exercises the worker path
        off a Mac). worker_options: options for that backend's compile (the ane options here are
        forwarded when it is "ane"). start_method: multiprocessing start method of the workers
        (spawn on macOS, where forkserver is refused). timeout: seconds a worker may take to
        answer one call.
    perf_stats_mask: set `perfStatsMask` before compile, the untested §1.10 hypothesis for
        getting `hwExecutionTime`; None leaves the model as maderix does.
    compile_budget= and worker_budget= (the old compile budget) raise `AneOptionError`.
    """
    refuse_renamed(renamed)
    if not isinstance(qos, int) or qos < 0:
        raise AneOptionError(f"qos must be a non-negative int, not {qos!r}")
    budget = (
        default_loaded_program_budget()
        if loaded_program_budget is None
        else check_budget(loaded_program_budget, "loaded_program_budget")
    )
    per_worker = (
        budget
        if worker_loaded_program_budget is None
        else check_budget(worker_loaded_program_budget, "worker_loaded_program_budget")
    )
    prepared = prepare(source, function)
    key = cache_key(
        prepared.model.text, prepared.model.weights, {"qos": qos, "perf_stats_mask": perf_stats_mask}
    )
    cache_id = key if cache else f"uncached:{uuid.uuid4().hex}"
    try:
        compiled = CACHE.acquire(
            cache_id, lambda: _compile_engine(prepared, qos, perf_stats_mask), keep=cache, budget=budget
        )
    except NoRoom as full:
        if in_worker():
            raise LoadedProgramBudgetError(
                f"this worker process has {full.loaded} programs loaded and in use, its loaded-program "
                f"budget (ane-private-api.md §10.1); close kernels or raise worker_loaded_program_budget "
                f"(at most {ENGINE_PROGRAM_CAP})"
            ) from None
        # §10.1: every loaded program here is in use; a worker process has its own 128 slots.
        options = dict(worker_options or {})
        if worker_backend == "ane":
            options.update(
                qos=qos, cache=cache, perf_stats_mask=perf_stats_mask, function=function,
                loaded_program_budget=per_worker,
            )  # fmt: skip
        _log.info(
            "anekit: %d programs loaded and in use in this process (budget %d); compiling in a worker",
            full.loaded, budget,
        )  # fmt: skip
        return _pool(worker_backend, per_worker, start_method, timeout).compile(prepared.model, **options)
    # From here the kernel owns one hold on the cache entry; it gives it back on close, on
    # garbage collection, at exit, and if its own construction fails (layout, surfaces).
    return AneKernel(prepared, cache_id, CACHE, compiled)
