"""A stand-in for PyObjC and AppleNeuralEngine.framework, so the real `bridge.py` runs off a Mac.

`install(monkeypatch, tmp)` puts fake `objc` and `Foundation` modules into `sys.modules`, imports
`anekit.backends.ane.bridge` afresh on top of them and gives it byte buffers for the IOSurface and
CoreFoundation C functions. The fake framework offers the four classes of ane-private-api.md §1.1
(plus `_ANEDeviceInfo`) with PyObjC's calling conventions (selector `a:b:` is the Python method
`a_b_`; a registered `NSError**` out-argument makes the call return `(BOOL, NSError)`), and
evaluates with `ane_fake_bridge.FakeProgram`, so the whole runtime can run on it.

What it records for the corrections of issue 8 §4:
- every framework call and every Foundation object the framework would autorelease notes the
  autorelease-pool depth of its thread (`objc.autorelease_pool()` nests; §10.2), so a call made
  outside any pool, on any thread, is visible (`events_outside_pools`);
- the request indices it was given, what `modelAttributes` reported, and the engine's cap of
  128 loaded programs with loads and unloads counted (§10.1, §10.3);
- that `model.mil` and the weight files exist in `NSTemporaryDirectory()/<hex>/` when compiling
  (§1.4).
It computes with NumPy; it never stands for the engine's arithmetic.
"""

from __future__ import annotations

import ctypes
import importlib.util
import itertools
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from ane_fake_bridge import ENGINE_CAP, FakeProgram, hex_identifier

BRIDGE = "anekit.backends.ane.bridge"


class FakeNSDict(dict):
    def allKeys(self):
        return list(self.keys())


class FakeNSArray(list):
    def count(self):
        return len(self)

    def objectAtIndex_(self, i):
        return self[i]


class FakeNSData:
    def __init__(self, data: bytes):
        self._data = bytes(data)

    def bytes(self):
        return self._data

    def length(self):
        return len(self._data)


class FakeNSError:
    def __init__(self, description: str, code: int = 1):
        self._description, self._code = description, code

    def domain(self):
        return "com.apple.appleneuralengine"

    def code(self):
        return self._code

    def localizedDescription(self):
        return self._description

    def userInfo(self):
        return FakeNSDict(NSLocalizedDescription=self._description)


def _foundation_value(value):
    """Plain Python attributes as the Foundation containers PyObjC would hand back."""
    if isinstance(value, dict):
        return FakeNSDict({k: _foundation_value(v) for k, v in value.items()})
    if isinstance(value, list):
        return FakeNSArray(_foundation_value(v) for v in value)
    return value


class FakeObjC:
    """The parts of the `objc` module the bridge uses."""

    _C_OUT = b"o"

    class nosuchclass_error(Exception):  # noqa: N801 - PyObjC's name
        pass

    def __init__(self, framework):
        self.framework = framework
        self._local = threading.local()
        self.events: list[tuple[str, int, int]] = []  # (what, thread id, pool depth)
        self.metadata: dict[tuple[bytes, bytes], dict] = {}
        self.ids: dict[int, object] = {}
        self.pools = 0

    @property
    def depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @contextmanager
    def autorelease_pool(self):
        self._local.depth = self.depth + 1
        self.pools += 1
        try:
            yield
        finally:
            self._local.depth -= 1

    def record(self, what: str) -> None:
        self.events.append((what, threading.get_ident(), self.depth))

    def loadBundle(self, name, module_globals, bundle_path=None, scan_classes=True):  # noqa: N802
        self.record("loadBundle")

    def registerMetaDataForSelector(self, cls, sel, meta):  # noqa: N802
        self.metadata[(cls, sel)] = meta

    def lookUpClass(self, name):  # noqa: N802
        self.record(f"lookUpClass {name}")
        cls = self.framework.classes.get(name)
        if cls is None:
            raise self.nosuchclass_error(name)
        return cls

    def pyobjc_id(self, obj):
        self.ids[id(obj)] = obj
        return id(obj)


def _selector(pyname: str) -> str:
    return pyname.replace("_", ":")


class FakeClass:
    """A class object: class methods by selector, and which selectors its instances answer."""

    def __init__(self, name, rec, class_methods=None, instance_selectors=()):
        self._name, self._rec = name, rec
        self._methods = dict(class_methods or {})
        self._instance = set(instance_selectors)

    def respondsToSelector_(self, sel):  # noqa: N802
        return sel in self._methods

    def instancesRespondToSelector_(self, sel):  # noqa: N802
        return sel in self._instance

    def __getattr__(self, pyname):
        sel = _selector(pyname)
        methods = self.__dict__.get("_methods", {})
        if sel not in methods:
            raise AttributeError(f"+[{self._name} {sel}] is not offered by the stand-in")

        def method(*args):
            self._rec.record(f"+[{self._name} {sel}]")
            return methods[sel](*args)

        return method


class FakeEngineModel:
    """An `_ANEInMemoryModel` instance."""

    SELECTORS = {
        "hexStringIdentifier", "compileWithQoS:options:error:", "loadWithQoS:options:error:",
        "evaluateWithQoS:options:request:error:", "unloadWithQoS:error:", "modelAttributes",
        "setPerfStatsMask:",
    }  # fmt: skip

    def __init__(self, fw, text: bytes, weights: dict):
        self.fw, self.text, self.weights = fw, text, weights
        self.hex = hex_identifier(text, weights)
        self.program = FakeProgram(text.decode(), weights, fw.report)
        self.compiled = self.loaded = False
        fw.models.append(self)

    def _out(self, sel, ok, error=None):
        """What PyObjC returns for a BOOL call with a registered NSError** out-argument."""
        meta = self.fw.objc.metadata.get((b"_ANEInMemoryModel", sel.encode()))
        assert meta is not None, f"no metadata registered for {sel}: PyObjC could not pass the NSError**"
        return (ok, None if ok else error)

    def _note(self, sel):
        self.fw.objc.record(f"-[_ANEInMemoryModel {sel}]")

    def hexStringIdentifier(self):  # noqa: N802
        self._note("hexStringIdentifier")
        return self.hex

    def setPerfStatsMask_(self, mask):  # noqa: N802
        self._note("setPerfStatsMask:")

    def compileWithQoS_options_error_(self, qos, options, error):  # noqa: N802
        sel = "compileWithQoS:options:error:"
        self._note(sel)
        directory = Path(self.fw.tmp) / self.hex  # §1.4: the compiler reads these files
        ok = (directory / "model.mil").is_file() and (directory / "model.mil").read_bytes() == self.text
        for path, data in self.weights.items():
            f = directory / path.removeprefix("@model_path/")
            ok = ok and f.is_file() and f.read_bytes() == bytes(data)
        self.compiled = ok
        self.fw.compiles += 1
        return self._out(sel, ok, FakeNSError(f"stand-in: {directory} does not hold the program"))

    def loadWithQoS_options_error_(self, qos, options, error):  # noqa: N802
        sel = "loadWithQoS:options:error:"
        self._note(sel)
        if not self.compiled or len(self.fw.loaded) >= self.fw.cap:
            self.fw.refused_loads += 1
            return self._out(sel, False, FakeNSError(f"stand-in: {len(self.fw.loaded)} programs loaded"))
        self.loaded = True
        self.fw.loaded.add(self)
        self.fw.loads += 1
        return self._out(sel, True)

    def unloadWithQoS_error_(self, qos, error):  # noqa: N802
        sel = "unloadWithQoS:error:"
        self._note(sel)
        if self.loaded:
            self.loaded = False
            self.fw.loaded.discard(self)
            self.fw.unloads += 1
        return self._out(sel, True)

    def modelAttributes(self):  # noqa: N802
        self._note("modelAttributes")
        self.fw.autoreleased("modelAttributes dictionary")
        attrs = self.program.attributes()
        return None if attrs is None else _foundation_value(attrs)

    def evaluateWithQoS_options_request_error_(self, qos, options, request, error):  # noqa: N802
        sel = "evaluateWithQoS:options:request:error:"
        self._note(sel)
        assert self.loaded, "evaluate of an unloaded model"
        buffers = self.fw.ios.buffers
        self.fw.requests_seen.append((list(request.input_indices), list(request.output_indices)))
        self.program.evaluate(
            [buffers[s.ref] for s in request.inputs], list(request.input_indices),
            [buffers[s.ref] for s in request.outputs], list(request.output_indices),
        )  # fmt: skip
        self.fw.evals += 1
        return self._out(sel, True)


class FakeANERequest:
    def __init__(self, fw, inputs, input_indices, outputs, output_indices, procedure):
        self.fw = fw
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.input_indices, self.output_indices = (
            [int(i) for i in input_indices],
            [int(i) for i in output_indices],
        )
        self.procedure = procedure

    def respondsToSelector_(self, sel):  # noqa: N802
        return sel == "perfStats"

    def perfStats(self):  # noqa: N802
        self.fw.objc.record("-[_ANERequest perfStats]")
        return None  # §1.10: nothing on consumer builds


class FakeIOSurfaceLib:
    """IOSurfaceCreate/Lock/Unlock/GetBaseAddress/GetAllocSize over ctypes byte buffers."""

    def __init__(self, objc: FakeObjC):
        self.objc = objc
        self._buffers: dict[int, ctypes.Array] = {}
        self.buffers: dict[int, memoryview] = {}
        self._refs = itertools.count(0x1000)
        self.released: set[int] = set()

    def IOSurfaceCreate(self, props_id):  # noqa: N802
        props = self.objc.ids[props_id]
        n = int(props["IOSurfaceAllocSize"])
        assert int(props["IOSurfaceWidth"]) == n and int(props["IOSurfaceBytesPerRow"]) == n  # §1.5
        ref = next(self._refs)
        self._buffers[ref] = (ctypes.c_char * n)()
        self.buffers[ref] = memoryview(self._buffers[ref]).cast("B")
        return ref

    def IOSurfaceLock(self, ref, options, seed):  # noqa: N802
        return 0

    def IOSurfaceUnlock(self, ref, options, seed):  # noqa: N802
        return 0

    def IOSurfaceGetBaseAddress(self, ref):  # noqa: N802
        return ctypes.addressof(self._buffers[ref])

    def IOSurfaceGetAllocSize(self, ref):  # noqa: N802
        return len(self.buffers[ref])


class FakeFramework:
    """The fake `objc`, `Foundation`, AppleNeuralEngine classes and C functions, together."""

    def __init__(self, tmp, report=None, cap=ENGINE_CAP):
        self.tmp = Path(tmp)
        self.report = report
        self.cap = cap
        self.objc = FakeObjC(self)
        self.ios = FakeIOSurfaceLib(self.objc)
        self.cf = SimpleNamespace(CFRelease=lambda ref: self.ios.released.add(ref))
        self.models: list[FakeEngineModel] = []
        self.loaded: set[FakeEngineModel] = set()
        self.compiles = self.loads = self.unloads = self.evals = self.refused_loads = 0
        self.requests_seen: list[tuple[list[int], list[int]]] = []
        rec = self.objc
        self.classes = {
            "_ANEInMemoryModelDescriptor": FakeClass(
                "_ANEInMemoryModelDescriptor", rec,
                {"modelWithMILText:weights:optionsPlist:": self._descriptor},
            ),
            "_ANEInMemoryModel": FakeClass(
                "_ANEInMemoryModel", rec, {"inMemoryModelWithDescriptor:": self._model},
                FakeEngineModel.SELECTORS,
            ),
            "_ANERequest": FakeClass(
                "_ANERequest", rec,
                {"requestWithInputs:inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:":
                 self._request},
                {"perfStats"},
            ),
            "_ANEIOSurfaceObject": FakeClass("_ANEIOSurfaceObject", rec, {"objectWithIOSurface:": self._wrap}),
            "_ANEDeviceInfo": FakeClass("_ANEDeviceInfo", rec, {"hasANE": lambda: True, "aneSubType": lambda: "h16"}),
        }  # fmt: skip
        self.foundation = self._foundation()

    def autoreleased(self, what: str) -> None:
        self.objc.record(f"autoreleased {what}")

    def _foundation(self):
        fw = self

        class NSData:
            @staticmethod
            def dataWithBytes_length_(data, n):  # noqa: N802
                fw.autoreleased("NSData")
                return FakeNSData(bytes(data)[:n])

        class NSDictionary:
            @staticmethod
            def dictionary():
                fw.autoreleased("NSDictionary")
                return FakeNSDict()

        class NSMutableDictionary(NSDictionary):
            pass

        class NSNumber:
            @staticmethod
            def numberWithUnsignedLongLong_(v):  # noqa: N802
                fw.autoreleased("NSNumber")
                return int(v)

            numberWithInt_ = numberWithUnsignedLongLong_

        class NSArray:
            @staticmethod
            def arrayWithArray_(items):  # noqa: N802
                fw.autoreleased("NSArray")
                return FakeNSArray(items)

        def NSTemporaryDirectory():  # noqa: N802
            return str(fw.tmp)

        return SimpleNamespace(
            NSData=NSData, NSDictionary=NSDictionary, NSMutableDictionary=NSMutableDictionary,
            NSNumber=NSNumber, NSArray=NSArray, NSTemporaryDirectory=NSTemporaryDirectory,
        )  # fmt: skip

    # class methods of the framework
    def _descriptor(self, text, weights, options_plist):
        assert isinstance(text, FakeNSData), "§1.2 row 1: the MIL text goes in as NSData"
        assert isinstance(weights, dict), "§1.3: a dictionary, never nil"
        self.autoreleased("descriptor")
        plain = {path: entry["data"].bytes() for path, entry in weights.items()}
        return SimpleNamespace(text=text.bytes(), weights=plain)

    def _model(self, descriptor):
        self.autoreleased("model")
        return FakeEngineModel(self, descriptor.text, descriptor.weights)

    def _request(self, inputs, input_indices, outputs, output_indices, weights_buffer, perf_stats, procedure):
        self.autoreleased("request")
        return FakeANERequest(self, inputs, input_indices, outputs, output_indices, procedure)

    def _wrap(self, ref):
        self.autoreleased("_ANEIOSurfaceObject")
        return SimpleNamespace(ref=ref)

    # what tests look at
    def events_outside_pools(self):
        return [e for e in self.objc.events if e[2] < 1]


def install(monkeypatch, tmp, report=None, cap=ENGINE_CAP):
    """Import the real bridge on the stand-in; returns `(bridge module, FakeFramework)`. Everything
    is undone by `monkeypatch` (the bridge is not importable off a Mac afterwards, as before)."""
    fw = FakeFramework(tmp, report, cap)
    monkeypatch.setitem(sys.modules, "objc", fw.objc)
    monkeypatch.setitem(sys.modules, "Foundation", fw.foundation)
    monkeypatch.delitem(sys.modules, BRIDGE, raising=False)
    spec = importlib.util.find_spec(BRIDGE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, BRIDGE, module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "_load_c_functions", lambda: (fw.ios, fw.cf))
    import anekit.backends.ane as package

    monkeypatch.setattr(package, "bridge", module, raising=False)
    return module, fw
