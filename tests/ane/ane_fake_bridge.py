"""A stand-in for `anekit.backends.ane.bridge`, to test the runtime's bookkeeping off a Mac.

It has the bridge's interface (compile_and_load, create_surface, make_request, ...), keeps
surfaces in bytearrays, records every call, and "evaluates" by reading the input surfaces with
its own offset arithmetic (independent of anekit's layout module), running the program on the
reference backend and writing the outputs back the same way. What it checks is the runtime
(cache, loaded-program budget, layouts honoured, bindings, cleanup), never the engine: its outputs
are NumPy's.

What it does like the engine, so that each correction of issue 8 §4 is observable:
- the temp directory is named by a hash of the program text and weights, so identical programs
  share it (ane-private-api.md §1.4), held through `weights.acquire_model_dir` as the bridge does;
- at most `cap` (128) programs are loaded at once; one more load fails, unloads free a slot
  (§10.1); loads, unloads and compiles are counted;
- with `report=Report(...)`, `modelAttributes` lists the inputs and outputs in the model's own
  order, outputs named "<var>@output" with a `Symbol`, every tensor in the engine's NCHW
  (Batches/Channels/Height/Width, a rank-2 `[C, W]` is N=1, C, H=1, W) with Plane/Row/Batch
  strides (§1.7, §10.3), and the request's index i means entry i of those lists.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anekit.backends.ane.errors import ANEError
from anekit.backends.ane.weights import (
    LOCK_FILE,
    USERS_SUFFIX,
    acquire_model_dir,
    model_dir,
    release_model_dir,
)
from anekit.backends.reference import compile as reference_compile
from anekit.mil.model import MilModel

#: §10.1: the driver holds at most 128 loaded programs per process.
ENGINE_CAP = 128


@dataclass(frozen=True)
class Report:
    """What the stand-in's `modelAttributes` says (None anywhere: that field is not reported).

    names: entries carry `Name` (outputs "<var>@output") and `Symbol` "<var>" (§10.3).
    order: "mil" (declaration order) or "reversed": the model's own order of its I/O.
    plane_stride: bytes between channels (default: RowStride x Height, rows padded to 64 bytes).
    nchw: report Batches/Channels/Height/Width (§10.3); count_error adds 1 to Width (a mismatch).
    """

    names: bool = True
    order: str = "mil"
    plane_stride: int | None = None
    nchw: bool = True
    count_error: bool = False


def engine_nchw(shape) -> tuple[int, int, int, int]:
    """The stand-in engine's own NCHW for a MIL shape: rank 4 as is; lower ranks keep the last
    axis as Width and the first of the others as Channels (not "leading ones")."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 4:
        return shape
    if len(shape) == 3:
        return (1, shape[0], shape[1], shape[2])
    if len(shape) == 2:
        return (1, shape[0], 1, shape[1])
    return (1, 1, 1, shape[0])


class FakeProgram:
    """One program as the stand-in engine sees it: its ports, their byte layout, evaluation."""

    def __init__(self, text: str, weights, report: Report | None):
        self.kernel = reference_compile(MilModel(text, dict(weights)))
        self.report = report
        self.inputs = self._ports(self.kernel.inputs, "input")
        self.outputs = self._ports(self.kernel.outputs, "output")

    def _ports(self, specs, role):
        ports = []
        for name, spec in specs.items():
            n, c, h, w = engine_nchw(spec.shape)
            item = 2 if spec.dtype == "fp16" else 4
            row = w * item
            if self.report is not None and h > 1:
                row = -(-row // 64) * 64  # rows padded to 64 bytes (mil-text.md §5 #4)
            plane = h * row
            if self.report is not None and self.report.plane_stride is not None:
                plane = self.report.plane_stride
            ports.append(
                {"mil": name, "shape": tuple(spec.shape), "nchw": (n, c, h, w), "item": item,
                 "row": row, "plane": plane, "batch": c * plane, "role": role}
            )  # fmt: skip
        if self.report is not None and self.report.order == "reversed":
            ports.reverse()
        return ports

    def attributes(self):
        if self.report is None:
            return None

        def entry(p):
            e = {"PlaneStride": p["plane"], "BatchStride": p["batch"], "Channels": p["nchw"][1],
                 "Type": "Float16" if p["item"] == 2 else "Float32"}  # fmt: skip
            if p["nchw"][2] > 1:
                e["RowStride"] = p["row"]
            if self.report.nchw:
                n, c, h, w = p["nchw"]
                e.update(Batches=n, Channels=c, Height=h, Width=w + (1 if self.report.count_error else 0))
            if self.report.names:
                e["Name"] = p["mil"] + ("@output" if p["role"] == "output" else "")
                e["Symbol"] = p["mil"]
            return e

        return {
            "NetworkStatusList": [
                {"LiveInputList": [entry(p) for p in self.inputs],
                 "LiveOutputList": [entry(p) for p in self.outputs]}
            ]
        }  # fmt: skip

    @staticmethod
    def nbytes(port) -> int:
        return port["nchw"][0] * port["batch"]

    # element (n, c, h, w) at n·BatchStride + c·PlaneStride + h·RowStride + w·item
    def read(self, buffer, port) -> np.ndarray:
        n_, c_, h_, w_ = port["nchw"]
        dt = "<f2" if port["item"] == 2 else "<f4"
        if len(buffer) < self.nbytes(port):
            raise ANEError("eval", f"stand-in: surface of {len(buffer)} bytes for {port['mil']}")
        out = np.empty((n_, c_, h_, w_), dt)
        for n in range(n_):
            for c in range(c_):
                for h in range(h_):
                    off = n * port["batch"] + c * port["plane"] + h * port["row"]
                    out[n, c, h] = np.frombuffer(bytes(buffer[off : off + w_ * port["item"]]), dt)
        return out.reshape(port["shape"])

    def write(self, buffer, port, array) -> None:
        n_, c_, h_, w_ = port["nchw"]
        dt = "<f2" if port["item"] == 2 else "<f4"
        if len(buffer) < self.nbytes(port):
            raise ANEError("eval", f"stand-in: surface of {len(buffer)} bytes for {port['mil']}")
        a = np.asarray(array).astype(dt).reshape(n_, c_, h_, w_)
        for n in range(n_):
            for c in range(c_):
                for h in range(h_):
                    off = n * port["batch"] + c * port["plane"] + h * port["row"]
                    buffer[off : off + w_ * port["item"]] = a[n, c, h].tobytes()

    def evaluate(self, in_buffers, in_indices, out_buffers, out_indices) -> None:
        """Index i of the request is entry i of the model's own lists (§10.3)."""
        if sorted(in_indices) != list(range(len(self.inputs))) or sorted(out_indices) != list(
            range(len(self.outputs))
        ):
            raise ANEError("eval", f"stand-in: request indices {in_indices} / {out_indices}")
        arrays = {self.inputs[i]["mil"]: self.read(b, self.inputs[i]) for b, i in zip(in_buffers, in_indices)}
        result = self.kernel(**arrays)
        for b, i in zip(out_buffers, out_indices):
            port = self.outputs[i]
            self.write(b, port, result[port["mil"]])


def program_dirs(root) -> list[Path]:
    """The model directories under a temp root (not the bookkeeping: the lock file and the
    `<hex>.users/` markers, `weights.LOCK_FILE` / `USERS_SUFFIX`)."""
    return sorted(
        p for p in Path(root).iterdir() if p.name != LOCK_FILE and not p.name.endswith(USERS_SUFFIX)
    )


def hex_identifier(text: bytes, weights) -> str:
    """Like `hexStringIdentifier`: a hash of the text and weights (§1.2 row 3)."""
    h = hashlib.sha256(bytes(text))
    for path in sorted(weights):
        h.update(path.encode() + bytes(weights[path]))
    return h.hexdigest()[:32]


class FakeSurface:
    def __init__(self, bridge, nbytes):
        self.bridge, self.nbytes = bridge, nbytes
        self.data = bytearray(nbytes)
        self.released = False
        self.locks = 0

    @contextmanager
    def lock(self, read_only=False):
        assert not self.released, "surface used after release"
        self.locks += 1
        view = memoryview(self.data)
        try:
            yield view
        finally:
            view.release()

    def release(self):
        assert not self.released, "surface released twice"
        self.released = True
        self.bridge.released_surfaces += 1


class FakeRequest:
    def __init__(self, inputs, outputs, input_indices, output_indices):
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.input_indices, self.output_indices = list(input_indices), list(output_indices)


class FakeModel:
    def __init__(self, bridge, text, weights, qos, directory, hex_id, report):
        self.bridge = bridge
        self.text, self.weights, self.qos = text, weights, qos
        self.directory = directory
        self.hex_id = hex_id
        self.program = FakeProgram(text.decode(), weights, report)
        self.kernel = self.program.kernel
        self.closed = False
        self.loaded = False
        self.evals = 0

    def attributes(self):
        return self.program.attributes()

    def load(self, qos):
        assert not self.closed, "load after close"
        if self.loaded:
            return
        self.bridge.calls.append(("load", qos))
        if self.bridge.fail_reload and self.bridge.loads_of(self) > 0:
            raise ANEError("load", "loadWithQoS:options:error: returned NO: stand-in reload failure")
        if len(self.bridge.loaded) >= self.bridge.cap:
            self.bridge.refused_loads += 1
            raise ANEError(
                "load", f"loadWithQoS:options:error: returned NO: stand-in: {self.bridge.cap} programs loaded"
            )
        self.loaded = True
        self.bridge.loaded.add(self)
        self.bridge.load_log.append(self)
        self.bridge.max_loaded = max(self.bridge.max_loaded, len(self.bridge.loaded))

    def unload(self, qos):
        if self.loaded:
            self.loaded = False
            self.bridge.loaded.discard(self)
            self.bridge.unloads += 1
            self.bridge.calls.append(("unload", qos))

    def evaluate(self, request, qos):
        assert not self.closed, "evaluate after close"
        assert self.loaded, "evaluate of an unloaded program"
        self.bridge.calls.append(("eval", qos))
        if self.bridge.fail_eval:
            raise ANEError("eval", "evaluateWithQoS:options:request:error: returned NO: stand-in failure")
        self.evals += 1
        self.program.evaluate(
            [s.data for s in request.inputs], request.input_indices,
            [s.data for s in request.outputs], request.output_indices,
        )  # fmt: skip

    def close(self, qos):
        try:
            self.unload(qos)
        finally:
            if not self.closed:
                self.closed = True
                release_model_dir(self.directory)


class FakeBridge:
    def __init__(
        self, tmp: Path, plane_stride=None, fail_compile=False, fail_surface_after=None, report=None,
        cap=ENGINE_CAP,
    ):  # fmt: skip
        self.tmp = Path(tmp)
        if report is None and plane_stride is not None:  # strides only, unnamed, in MIL order
            report = Report(names=False, nchw=False, plane_stride=plane_stride)
        self.report = report
        self.fail_compile = fail_compile
        self.fail_surface_after = fail_surface_after
        self.fail_eval = False
        self.fail_reload = False
        self.cap = cap
        self.calls = []
        self.models = []
        self.surfaces = []
        self.released_surfaces = 0
        self.loaded: set[FakeModel] = set()
        self.load_log: list[FakeModel] = []
        self.max_loaded = 0
        self.unloads = 0
        self.refused_loads = 0

    def require(self):
        pass

    def loads_of(self, model) -> int:
        return sum(1 for m in self.load_log if m is model)

    def compile_and_load(self, mil_text, weights, qos, perf_stats_mask=None):
        self.calls.append(("compile", qos))
        hex_id = hex_identifier(mil_text, weights)
        directory = acquire_model_dir(model_dir(self.tmp, hex_id), mil_text, weights)
        model = None
        try:
            if self.fail_compile:
                raise ANEError("compile", "compileWithQoS:options:error: returned NO: stand-in failure")
            model = FakeModel(self, mil_text, weights, qos, directory, hex_id, self.report)
            self.models.append(model)
            model.load(qos)
        except BaseException:
            if model is not None:
                model.close(qos)
            else:
                release_model_dir(directory)
            raise
        return model

    def create_surface(self, nbytes):
        if self.fail_surface_after is not None and len(self.surfaces) >= self.fail_surface_after:
            raise ANEError("surface", "IOSurfaceCreate returned NULL (stand-in)")
        s = FakeSurface(self, nbytes)
        self.surfaces.append(s)
        return s

    def make_request(self, inputs, outputs, input_indices=None, output_indices=None):
        ii = list(range(len(inputs))) if input_indices is None else list(input_indices)
        oi = list(range(len(outputs))) if output_indices is None else list(output_indices)
        self.calls.append(("request", len(inputs), len(outputs)))
        return FakeRequest(inputs, outputs, ii, oi)

    def hw_execution_time(self, request):
        return None

    @property
    def live_surfaces(self):
        return [s for s in self.surfaces if not s.released]

    def compiles(self) -> int:
        return sum(1 for c in self.calls if c[0] == "compile")
