"""The only module that touches Objective-C: AppleNeuralEngine.framework through PyObjC, IOSurface
and CoreFoundation through ctypes. macOS only; imported lazily by `runtime` (never on Linux).

Read it beside ane-private-api.md §1: each call carries the § it follows. Everything that can be
decided without the framework (weights dictionary contents, temp-dir layout, surface sizes and
strides, packing arrays, error mapping) lives in pure modules and is tested on any machine.

Interface used by `runtime` (a test double with the same shape exercises the runtime off a Mac):
    require()                                   -> None, or BackendUnavailable naming what is missing
    probe()                                     -> selectors.Probe
    compile_and_load(mil_text, weights, qos)    -> EngineModel   (§1.2 steps 1-6)
    EngineModel.attributes()                    -> dict | None   (§1.7 modelAttributes)
    EngineModel.evaluate(request, qos)          -> None          (§1.2 step 8)
    EngineModel.unload(qos) / .load(qos)        -> None          (§1.2 steps 9 / 6: frees / retakes
                                                                  one of the 128 slots, §10.1)
    EngineModel.close(qos)                      -> None          (§1.2 step 9, §1.4 "on free")
    create_surface(nbytes)                      -> Surface       (§1.5, wrapped per §1.6)
    Surface.lock(read_only) -> memoryview context; Surface.release()
    make_request(inputs, outputs, input_indices, output_indices) -> request   (§1.6, §10.3)
    hw_execution_time(request)                  -> int | None    (§1.10)

Every one of these runs inside its own `objc.autorelease_pool()` (the `autoreleased` decorator,
§10.2), on whatever thread calls it.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import objc  # PyObjC (pyobjc-core)
from Foundation import (  # pyobjc-framework-Cocoa
    NSArray,
    NSData,
    NSDictionary,
    NSMutableDictionary,
    NSNumber,
    NSTemporaryDirectory,
)

from ..base import BackendUnavailable
from .errors import ANEError, call, check_bool, check_object
from .layout import surface_properties
from .selectors import FRAMEWORK, OPTIONAL, REQUIRED, Probe
from .weights import acquire_model_dir, model_dir, release_model_dir, weights_entries

_IOSURFACE = "/System/Library/Frameworks/IOSurface.framework/IOSurface"
_COREFOUNDATION = "/System/Library/Frameworks/CoreFoundation.framework/CoreFoundation"
#: IOSurfaceLock option for reads (§1.5: "Read: same with kIOSurfaceLockReadOnly").
_LOCK_READ_ONLY = 1
#: §1.2: the bridge retries loadWithQoS once after 100 ms ("ANE slot reclamation").
_LOAD_RETRY_DELAY_S = 0.1

_lock = threading.Lock()
_state: dict[str, Any] = {}
F = TypeVar("F", bound=Callable[..., Any])


# -- §10.2: one autorelease pool per entry point ---------------------------------------------------
def autoreleased(fn: F) -> F:
    """Run `fn` inside `objc.autorelease_pool()`, drained when it returns or raises.

    §10.2: PyObjC makes one pool at import and never drains it per call, and threads other than
    the importing one have none, so everything the framework autoreleases (the descriptor and
    model, NSData copies of the MIL text and weights, `_ANEIOSurfaceObject` wrappers, requests,
    NSErrors, option dictionaries) would live until exit. maderix wraps compile, eval and free in
    `@autoreleasepool` (bridge/ane_bridge.m, training_dynamic/io.h). What a function returns
    survives the drain: a PyObjC proxy holds its own reference to the object it wraps.
    """

    @functools.wraps(fn)
    def pooled(*args: Any, **kwargs: Any) -> Any:
        with objc.autorelease_pool():
            return fn(*args, **kwargs)

    return pooled  # type: ignore[return-value]


# -- §1.1: framework, classes, selector metadata --------------------------------------------------
def _register_metadata() -> None:
    """Tell PyObjC how the pointer arguments are passed; the framework ships no metadata.

    Indices count the hidden self (0) and _cmd (1), so a selector's first argument is 2.
    """
    out = {"type_modifier": objc._C_OUT}  # NSError** out-argument: the call returns (BOOL, NSError)
    for sel, index in (
        (b"compileWithQoS:options:error:", 4),  # §1.2 step 5
        (b"loadWithQoS:options:error:", 4),  # §1.2 step 6
        (b"evaluateWithQoS:options:request:error:", 5),  # §1.2 step 8
        (b"unloadWithQoS:error:", 3),  # §1.2 step 9
    ):
        objc.registerMetaDataForSelector(b"_ANEInMemoryModel", sel, {"arguments": {index: out}})
    # §1.6: the argument is an IOSurfaceRef; declared `void *` so the C pointer (an int) passes as is.
    objc.registerMetaDataForSelector(
        b"_ANEIOSurfaceObject", b"objectWithIOSurface:", {"arguments": {2: {"type": b"^v"}}}
    )


def _load_c_functions() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """IOSurfaceCreate/Lock/Unlock/GetBaseAddress/GetAllocSize, CFRelease via ctypes (§1.5, §1.2 step 10)."""
    ios = ctypes.cdll.LoadLibrary(_IOSURFACE)
    cf = ctypes.cdll.LoadLibrary(_COREFOUNDATION)
    vp, u32 = ctypes.c_void_p, ctypes.c_uint32
    for name, restype, argtypes in (
        ("IOSurfaceCreate", vp, [vp]),  # IOSurfaceRef IOSurfaceCreate(CFDictionaryRef)
        ("IOSurfaceLock", ctypes.c_int32, [vp, u32, vp]),  # kern_return_t (surface, options, seed*)
        ("IOSurfaceUnlock", ctypes.c_int32, [vp, u32, vp]),
        ("IOSurfaceGetBaseAddress", vp, [vp]),
        ("IOSurfaceGetAllocSize", ctypes.c_size_t, [vp]),
    ):
        fn = getattr(ios, name)
        fn.restype, fn.argtypes = restype, argtypes
    cf.CFRelease.restype, cf.CFRelease.argtypes = None, [vp]
    return ios, cf


@autoreleased
def _ensure_loaded() -> dict[str, Any]:
    """Load the framework once (§1.1 step 1), resolve the classes (§1.1 step 2), register metadata."""
    with _lock:
        if _state:
            return _state
        try:
            # §1.1 step 1: the dlopen of the framework; loadBundle is PyObjC's documented way.
            objc.loadBundle("AppleNeuralEngine", {}, bundle_path=FRAMEWORK, scan_classes=False)
        except Exception as exc:
            raise ANEError("framework", f"cannot load {FRAMEWORK}: {exc}") from exc
        _register_metadata()
        classes = {}
        for name in dict.fromkeys(c for c, _, _ in REQUIRED + OPTIONAL):
            try:
                classes[name] = objc.lookUpClass(name)  # §1.1 step 2 (NSClassFromString)
            except objc.nosuchclass_error:
                classes[name] = None
        ios, cf = _load_c_functions()
        _state.update(classes=classes, iosurface=ios, cf=cf)
        return _state


def _responds(cls: Any, kind: str, sel: str) -> bool:
    if cls is None:
        return False
    if kind == "class":
        return bool(cls.respondsToSelector_(sel))
    return bool(cls.instancesRespondToSelector_(sel))


@autoreleased
def probe() -> Probe:
    """Which classes and selectors exist here (feature detection, ane-private-api.md §6)."""
    try:
        state = _ensure_loaded()
    except ANEError as exc:
        return Probe(loaded=False, error=exc.message)
    classes = state["classes"]
    result = Probe(loaded=True, classes={name: cls is not None for name, cls in classes.items()})
    for entry in REQUIRED + OPTIONAL:
        cls, kind, sel = entry
        result.selectors[entry] = _responds(classes.get(cls), kind, sel)
    return result


@autoreleased
def require() -> None:
    """Raise `BackendUnavailable` naming every missing class/selector."""
    missing = probe().missing
    if missing:
        raise BackendUnavailable(
            "AppleNeuralEngine.framework on this macOS lacks what the ane backend calls: "
            + ", ".join(missing)
        )


def _cls(name: str) -> Any:
    return _ensure_loaded()["classes"][name]


def _has(name: str, kind: str, sel: str) -> bool:
    return _responds(_cls(name), kind, sel)


# -- Foundation values ---------------------------------------------------------------------------
def _nsdata(data: bytes) -> Any:
    return NSData.dataWithBytes_length_(data, len(data))


def _empty_options() -> Any:
    """§1.2: every options dictionary is the empty dictionary (an NSDictionary, not nil)."""
    return NSDictionary.dictionary()


def _weights_dictionary(weights: Mapping[str, bytes]) -> Any:
    """§1.3: {"@model_path/weights/x.bin": {"offset": @0, "data": NSData}}; empty, never nil."""
    result = NSMutableDictionary.dictionary()
    for path, (offset, data) in weights_entries(weights).items():
        entry = NSMutableDictionary.dictionary()
        entry["offset"] = NSNumber.numberWithUnsignedLongLong_(offset)
        entry["data"] = _nsdata(data)
        result[path] = entry
    return result


def to_python(value: Any) -> Any:
    """Foundation containers and values as plain Python (dict, list, str, int, float, bytes)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if hasattr(value, "bytes") and hasattr(value, "length"):  # NSData
        return bytes(value)
    if hasattr(value, "allKeys"):  # NSDictionary
        return {str(k): to_python(value[k]) for k in value.allKeys()}
    if hasattr(value, "count") and hasattr(value, "objectAtIndex_"):  # NSArray
        return [to_python(value.objectAtIndex_(i)) for i in range(int(value.count()))]
    return str(value)


# -- §1.2 steps 1-6: compile and load ------------------------------------------------------------
def _load(model: Any, qos: int) -> None:
    """§1.2 step 6 `loadWithQoS:options:error:`, retried once after 100 ms as the maderix bridge
    does ("ANE slot reclamation"); a second failure names both."""
    what = "loadWithQoS:options:error:"
    try:
        check_bool(
            "load", what, call("load", what, model.loadWithQoS_options_error_, qos, _empty_options(), None)
        )
    except ANEError as first:
        time.sleep(_LOAD_RETRY_DELAY_S)
        try:
            result = call("load", what, model.loadWithQoS_options_error_, qos, _empty_options(), None)
            check_bool("load", what, result)
        except ANEError as second:
            raise ANEError(
                "load", f"{second.message} (also failed 100 ms earlier: {first.message})",
                domain=second.domain, code=second.code, name=second.name, details=second.details,
            ) from second  # fmt: skip


class EngineModel:
    """A compiled `_ANEInMemoryModel`, loaded or not, plus its hold on its temp directory (§1.4)."""

    def __init__(self, model: Any, hex_id: str, directory: Path):
        self.model = model
        self.hex_id = hex_id
        self.directory = directory
        self.loaded = False
        self._holds_directory = True

    @autoreleased
    def attributes(self) -> dict | None:
        """§1.7: `modelAttributes` (NetworkStatusList/LiveInputList/PlaneStride...), if offered."""
        if not _has("_ANEInMemoryModel", "instance", "modelAttributes"):
            return None
        raw = call("load", "modelAttributes", self.model.modelAttributes)
        return None if raw is None else to_python(raw)

    @autoreleased
    def evaluate(self, request: Any, qos: int) -> None:
        """§1.2 step 8: synchronous `evaluateWithQoS:options:request:error:`; checks the BOOL."""
        what = "evaluateWithQoS:options:request:error:"
        evaluate = self.model.evaluateWithQoS_options_request_error_
        check_bool("eval", what, call("eval", what, evaluate, qos, _empty_options(), request, None))

    @autoreleased
    def unload(self, qos: int) -> None:
        """§1.2 step 9 `unloadWithQoS:error:` only: frees one of the process's 128 program slots
        (§10.1) and keeps the compiled model and its directory for `load`. Idempotent."""
        if self.loaded:
            self.loaded = False
            what = "unloadWithQoS:error:"
            check_bool("unload", what, call("unload", what, self.model.unloadWithQoS_error_, qos, None))

    @autoreleased
    def load(self, qos: int) -> None:
        """Load an unloaded model again without compiling (§1.10 test_weight_reload: unload then
        load, no recompile, 3.8 ms on M5). Raises ANEError("load") if the engine refuses; the
        caller then compiles it afresh."""
        if self.model is None:
            raise ANEError("load", "this engine model was closed")
        if not self.loaded:
            _load(self.model, qos)
            self.loaded = True

    @autoreleased
    def close(self, qos: int) -> None:
        """§1.2 step 9 `unloadWithQoS:error:` (if loaded), then §1.4 "on free": let go of the
        temp directory, which is deleted only when no other model here or elsewhere holds it.

        Idempotent. The directory is released even when unload fails; the unload error is raised.
        """
        try:
            self.unload(qos)
        finally:
            if self._holds_directory:
                self._holds_directory = False
                release_model_dir(self.directory)
            self.model = None


@autoreleased
def compile_and_load(
    mil_text: bytes, weights: Mapping[str, bytes], qos: int, perf_stats_mask: int | None = None
) -> EngineModel:
    """§1.2 steps 1-6. On any failure the hold on the temp directory is given back before the
    error propagates."""
    _ensure_loaded()
    descriptor_cls, model_cls = _cls("_ANEInMemoryModelDescriptor"), _cls("_ANEInMemoryModel")
    # Step 1: descriptor from the MIL text as NSData (an NSString does not work), the weights
    # dictionary (§1.3, empty not nil), optionsPlist nil.
    what = "modelWithMILText:weights:optionsPlist:"
    descriptor = call(
        "descriptor", what, descriptor_cls.modelWithMILText_weights_optionsPlist_,
        _nsdata(mil_text), _weights_dictionary(weights), None,
    )  # fmt: skip
    check_object("descriptor", what, descriptor)
    # Step 2: the in-memory model.
    what = "inMemoryModelWithDescriptor:"
    model = call("model", what, model_cls.inMemoryModelWithDescriptor_, descriptor)
    check_object("model", what, model)
    # Step 3: its identifier names the temp directory.
    hex_id = call("model", "hexStringIdentifier", model.hexStringIdentifier)
    check_object("model", "hexStringIdentifier", hex_id)
    # Step 4 (§1.4): NSTemporaryDirectory()/<hex>/ with model.mil and weights/<file>.bin, held
    # (reference counted): an identical program compiled by another model shares it.
    directory = model_dir(str(NSTemporaryDirectory()), str(hex_id))
    try:
        acquire_model_dir(directory, mil_text, weights)
    except OSError as exc:  # disk full, permissions: say where, not a raw OSError
        raise ANEError("model", f"cannot write the program's files into {directory}: {exc}") from exc
    engine = EngineModel(model, str(hex_id), directory)
    try:
        if perf_stats_mask is not None and _has("_ANEInMemoryModel", "instance", "setPerfStatsMask:"):
            # §1.10: the untested hypothesis that setting the mask makes the driver fill perfStats.
            call("model", "setPerfStatsMask:", model.setPerfStatsMask_, int(perf_stats_mask))
        # Step 5: compile, QoS (21 by default), empty options; the BOOL is checked (§6 silent failures).
        what = "compileWithQoS:options:error:"
        result = call("compile", what, model.compileWithQoS_options_error_, qos, _empty_options(), None)
        check_bool("compile", what, result)
        # Step 6: load (retried once after 100 ms, §1.2).
        _load(model, qos)
        engine.loaded = True
        return engine
    except BaseException:
        engine.close(qos)  # nothing loaded: only gives the directory back
        raise


# -- §1.5, §1.6: surfaces and requests -----------------------------------------------------------
class Surface:
    """One IOSurface (§1.5) and its `_ANEIOSurfaceObject` wrapper (§1.6)."""

    @autoreleased
    def __init__(self, nbytes: int):
        state = _ensure_loaded()
        self._ios, self._cf = state["iosurface"], state["cf"]
        self.nbytes = nbytes
        props = NSMutableDictionary.dictionary()
        for key, value in surface_properties(nbytes).items():  # §1.5: flat byte buffer, exact keys
            props[key] = NSNumber.numberWithUnsignedLongLong_(value)
        # IOSurfaceCreate takes a CFDictionaryRef; NSDictionary is toll-free bridged to it.
        self.ref: int | None = self._ios.IOSurfaceCreate(objc.pyobjc_id(props))
        if not self.ref:
            raise ANEError("surface", f"IOSurfaceCreate returned NULL for {nbytes} bytes")
        try:
            size = int(self._ios.IOSurfaceGetAllocSize(self.ref))
            if size < nbytes:
                raise ANEError("surface", f"IOSurfaceCreate gave {size} bytes, {nbytes} were asked")
            what = "objectWithIOSurface:"
            wrapped = call("surface", what, _cls("_ANEIOSurfaceObject").objectWithIOSurface_, self.ref)
            self.wrapped = check_object("surface", what, wrapped)
        except BaseException:
            self.release()
            raise

    @contextmanager
    def lock(self, read_only: bool = False) -> Iterator[memoryview]:
        """§1.5: IOSurfaceLock -> the bytes at IOSurfaceGetBaseAddress -> IOSurfaceUnlock.

        The memoryview is valid only inside the block.
        """
        if not self.ref:
            raise ANEError("surface", "the surface was released")
        options = _LOCK_READ_ONLY if read_only else 0
        rc = self._ios.IOSurfaceLock(self.ref, options, None)
        if rc != 0:
            raise ANEError("surface", f"IOSurfaceLock returned {rc:#x}")
        try:
            base = self._ios.IOSurfaceGetBaseAddress(self.ref)
            if not base:
                raise ANEError("surface", "IOSurfaceGetBaseAddress returned NULL")
            view = memoryview((ctypes.c_char * self.nbytes).from_address(base)).cast("B")
            try:
                yield view
            finally:
                view.release()
        finally:
            self._ios.IOSurfaceUnlock(self.ref, options, None)

    @autoreleased
    def release(self) -> None:
        """§1.2 step 10: drop the wrapper and CFRelease the surface (once)."""
        self.wrapped = None
        ref, self.ref = self.ref, None
        if ref:
            self._cf.CFRelease(ref)


@autoreleased
def create_surface(nbytes: int) -> Surface:
    return Surface(nbytes)


@autoreleased
def make_request(
    inputs: Sequence[Surface],
    outputs: Sequence[Surface],
    input_indices: Sequence[int] | None = None,
    output_indices: Sequence[int] | None = None,
) -> Any:
    """§1.6: requestWithInputs:@[...] inputIndices:@[...] outputs:@[...] outputIndices:@[...]
    weightsBuffer:nil perfStats:nil procedureIndex:@0. Built once per binding and reused.

    Index i says which of the model's own inputs (outputs) surface i is: its position in the
    model's lists as `modelAttributes` gives them, not the MIL declaration order (§10.3); the
    runtime passes the surfaces in that order, so the indices are @0...@(n-1) as maderix's.
    """
    input_indices = list(range(len(inputs))) if input_indices is None else list(input_indices)
    output_indices = list(range(len(outputs))) if output_indices is None else list(output_indices)
    if len(input_indices) != len(inputs) or len(output_indices) != len(outputs):
        raise ANEError("request", "one index per surface is needed")
    what = "requestWithInputs:inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:"
    request_cls = _cls("_ANERequest")
    request = call(
        "request", what,
        request_cls.requestWithInputs_inputIndices_outputs_outputIndices_weightsBuffer_perfStats_procedureIndex_,
        NSArray.arrayWithArray_([s.wrapped for s in inputs]),
        NSArray.arrayWithArray_([NSNumber.numberWithInt_(int(i)) for i in input_indices]),
        NSArray.arrayWithArray_([s.wrapped for s in outputs]),
        NSArray.arrayWithArray_([NSNumber.numberWithInt_(int(i)) for i in output_indices]),
        None, None, NSNumber.numberWithInt_(0),
    )  # fmt: skip
    return check_object("request", what, request)


@autoreleased
def hw_execution_time(request: Any) -> int | None:
    """§1.10: `request.perfStats.hwExecutionTime` in ns when the driver filled it, else None.

    With `perfStats:nil` (§1.6) consumer builds are expected to give None; nothing is estimated.
    """
    try:
        if not request.respondsToSelector_("perfStats"):
            return None
        stats = request.perfStats()
        if stats is None or not stats.respondsToSelector_("hwExecutionTime"):
            return None
        value = int(stats.hwExecutionTime())
    except Exception:
        return None
    return value if value > 0 else None


@autoreleased
def device_info() -> dict[str, str]:
    """`_ANEDeviceInfo` class methods that answer here (doctor), as strings."""
    cls = _cls("_ANEDeviceInfo")
    info = {}
    for owner, kind, sel in OPTIONAL:
        if owner == "_ANEDeviceInfo" and _responds(cls, kind, sel):
            try:
                info[sel] = str(to_python(getattr(cls, sel)()))
            except Exception as exc:  # a private getter that throws is reported, not fatal
                info[sel] = f"<raised {type(exc).__name__}: {exc}>"
    return info
