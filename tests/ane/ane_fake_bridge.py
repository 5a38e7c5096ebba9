"""A stand-in for `anekit.backends.ane.bridge`, to test the runtime's bookkeeping off a Mac.

It has the bridge's interface (compile_and_load, create_surface, make_request, ...), keeps
surfaces in bytearrays, records every call, and "evaluates" by reading the input surfaces with
its own offset arithmetic (independent of anekit's layout module), running the program on the
reference backend and writing the outputs back the same way. What it checks is the runtime
(cache, budget, layouts honoured, bindings, cleanup), never the engine: its outputs are NumPy's.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from anekit.backends.ane.errors import ANEError
from anekit.backends.ane.weights import model_dir, populate_model_dir, remove_model_dir
from anekit.backends.reference import compile as reference_compile
from anekit.mil.model import MilModel


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
    def __init__(self, inputs, outputs):
        self.inputs, self.outputs = list(inputs), list(outputs)


class FakeModel:
    def __init__(self, bridge, text, weights, qos, directory, plane_stride):
        self.bridge = bridge
        self.text, self.weights, self.qos = text, weights, qos
        self.directory = directory
        self.plane_stride = plane_stride
        self.kernel = reference_compile(MilModel(text.decode(), dict(weights)))
        self.closed = False
        self.evals = 0

    def attributes(self):
        if self.plane_stride is None:
            return None

        def entries(specs):
            return [
                {"PlaneStride": self.plane_stride, "BatchStride": s.shape[1] * self.plane_stride,
                 "Channels": s.shape[1], "Type": "Float16"}
                for s in specs.values()
            ]  # fmt: skip

        return {
            "NetworkStatusList": [
                {"LiveInputList": entries(self.kernel.inputs), "LiveOutputList": entries(self.kernel.outputs)}
            ]
        }

    # [1, C, 1, W] fp16 tensors only: channel c starts at c·stride (stride = 2W when dense)
    def _stride(self, w):
        return self.plane_stride if self.plane_stride is not None else 2 * w

    def _read(self, surface, shape):
        _, c, _, w = shape
        ps = self._stride(w)
        rows = [np.frombuffer(bytes(surface.data[i * ps : i * ps + 2 * w]), "<f2") for i in range(c)]
        return np.stack(rows).reshape(shape)

    def _write(self, surface, arr):
        _, c, _, w = arr.shape
        ps = self._stride(w)
        for i in range(c):
            surface.data[i * ps : i * ps + 2 * w] = arr[0, i, 0].astype("<f2").tobytes()

    def evaluate(self, request, qos):
        assert not self.closed, "evaluate after unload"
        self.bridge.calls.append(("eval", qos))
        if self.bridge.fail_eval:
            raise ANEError("eval", "evaluateWithQoS:options:request:error: returned NO: stand-in failure")
        self.evals += 1
        inputs = {
            name: self._read(s, spec.shape)
            for (name, spec), s in zip(self.kernel.inputs.items(), request.inputs)
        }
        outs = self.kernel(**inputs)
        for (name, _spec), s in zip(self.kernel.outputs.items(), request.outputs):
            self._write(s, np.asarray(outs[name], np.float16))

    def close(self, qos):
        if not self.closed:
            self.closed = True
            self.bridge.calls.append(("unload", qos))
        remove_model_dir(self.directory)


class FakeBridge:
    def __init__(self, tmp: Path, plane_stride=None, fail_compile=False, fail_surface_after=None):
        self.tmp = Path(tmp)
        self.plane_stride = plane_stride
        self.fail_compile = fail_compile
        self.fail_surface_after = fail_surface_after
        self.fail_eval = False
        self.calls = []
        self.models = []
        self.surfaces = []
        self.released_surfaces = 0

    def require(self):
        pass

    def compile_and_load(self, mil_text, weights, qos, perf_stats_mask=None):
        self.calls.append(("compile", qos))
        directory = model_dir(self.tmp, f"h{len(self.models)}")
        populate_model_dir(directory, mil_text, weights)
        if self.fail_compile:
            remove_model_dir(directory)
            raise ANEError("compile", "compileWithQoS:options:error: returned NO: stand-in failure")
        model = FakeModel(self, mil_text, weights, qos, directory, self.plane_stride)
        self.models.append(model)
        return model

    def create_surface(self, nbytes):
        if self.fail_surface_after is not None and len(self.surfaces) >= self.fail_surface_after:
            raise ANEError("surface", "IOSurfaceCreate returned NULL (stand-in)")
        s = FakeSurface(self, nbytes)
        self.surfaces.append(s)
        return s

    def make_request(self, inputs, outputs):
        self.calls.append(("request", len(inputs), len(outputs)))
        return FakeRequest(inputs, outputs)

    def hw_execution_time(self, request):
        return None

    @property
    def live_surfaces(self):
        return [s for s in self.surfaces if not s.released]
