"""The ane runtime off a Mac: compile cache, loaded-program budget, layouts honoured, bindings, cleanup.

The Objective-C bridge is replaced by `ane_fake_bridge.FakeBridge`, which computes with the
reference backend: these tests pin the runtime's bookkeeping, not the engine's arithmetic.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from ane_fake_bridge import FakeBridge, program_dirs
from ane_programs import conv_program, dynamic_program, rand

from anekit.backends import KernelInputError
from anekit.backends.ane import runtime
from anekit.backends.ane.errors import ANEError
from anekit.backends.ane.layout import LayoutError
from anekit.backends.ane.runtime import CompileCounter, ModelCache, cache_key, compile_model
from anekit.backends.reference import compile as reference_compile
from anekit.mil import MilModel, ct, dumps, mb, types

HERE = os.path.dirname(__file__)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    bridge = FakeBridge(tmp_path)
    monkeypatch.setattr(runtime, "_bridge", lambda: bridge)
    monkeypatch.setattr(runtime, "CACHE", ModelCache())
    monkeypatch.setattr(runtime, "COMPILES", CompileCounter())
    yield bridge
    runtime.CACHE.clear()


def compiles(bridge):
    return sum(1 for c in bridge.calls if c[0] == "compile")


# -- cache key and cache ---------------------------------------------------------------------------
def test_cache_key_covers_text_weights_and_options():
    text, w = (
        "program(1.3) {}",
        {"@model_path/weights/a.bin": b"\x00" * 64, "@model_path/weights/b.bin": b"\x01"},
    )
    k = cache_key(text, w, {"qos": 21})
    assert k == cache_key(text, dict(reversed(list(w.items()))), {"qos": 21})  # order does not matter
    assert k != cache_key(text + " ", w, {"qos": 21})
    assert k != cache_key(text, {**w, "@model_path/weights/a.bin": b"\x00" * 63 + b"\x01"}, {"qos": 21})
    assert k != cache_key(
        text,
        {"@model_path/weights/c.bin": w["@model_path/weights/a.bin"], "@model_path/weights/b.bin": b"\x01"},
        {"qos": 21},
    )
    assert k != cache_key(text, w, {"qos": 0})
    assert k != cache_key(text, {}, {"qos": 21})


class Closeable:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def unload(self):
        self.log.append(("unload", self.name))

    def reload(self):
        self.log.append(("reload", self.name))

    def close(self):
        self.log.append(("close", self.name))


def test_model_cache_refcounts_and_keeps_idle_entries_loaded():
    log, made = [], []

    def factory(name):
        def make():
            made.append(name)
            return Closeable(log, name)

        return make

    cache = ModelCache()
    a1 = cache.acquire("a", factory("a"))
    a2 = cache.acquire("a", factory("a"))
    assert a1 is a2 and made == ["a"] and (cache.hits, cache.misses) == (1, 1)
    cache.release("a")
    cache.release("a")  # idle now, still loaded
    assert log == [] and "a" in cache and cache.is_loaded("a") and cache.in_use == 0
    assert cache.acquire("a", factory("a")) is a1 and made == ["a"]  # idle hit: no new compile
    cache.release("a")
    cache.acquire("c", factory("c"), keep=False)
    cache.release("c")
    assert log == [("close", "c")]  # keep=False: closed as soon as idle
    with pytest.raises(ZeroDivisionError):
        cache.acquire("d", lambda: 1 / 0)
    assert "d" not in cache
    cache.acquire("e", factory("e"))
    cache.clear()  # in use or idle: everything is closed
    assert sorted(e for e in log if e[0] == "close") == [("close", "a"), ("close", "c"), ("close", "e")]
    assert len(cache) == 0
    cache.release("e")  # releasing after clear (interpreter exit order) is harmless


# -- the runtime with the stand-in bridge ----------------------------------------------------------
def test_identical_program_compiles_once_per_process(fake):
    x = rand((1, 32, 1, 32), 1)
    prog = conv_program(0)
    expected = reference_compile(prog)(x=x)["y"]
    k1 = compile_model(prog)
    k2 = compile_model(prog)
    model = dumps(prog)
    k3 = compile_model(
        MilModel(str(model.text), {p: bytes(b) for p, b in model.weights.items()})
    )  # equal copies
    assert compiles(fake) == 1 and runtime.COMPILES.used == 1
    for k in (k1, k2, k3):
        np.testing.assert_array_equal(k(x=x)["y"], expected)
        assert k.backend == "ane" and k.last_eval is not None and k.last_eval.hw_ns is None
    k4 = compile_model(conv_program(1))  # other weights: another program
    assert compiles(fake) == 2
    k5 = compile_model(prog, qos=0)  # the QoS is part of the key
    assert compiles(fake) == 3 and fake.calls[-1][0] == "request"
    for k in (k4, k5, k1, k2, k3):
        k.close()
    # idle programs stay loaded until room is needed (§10.1)
    assert not any(m.closed for m in fake.models) and fake.unloads == 0
    k6 = compile_model(prog)  # still loaded: no recompile
    assert compiles(fake) == 3
    k6.close()


def test_uncached_compiles_every_time_and_unloads_on_close(fake):
    prog = conv_program(0)
    k1 = compile_model(prog, cache=False)
    k2 = compile_model(prog, cache=False)
    assert compiles(fake) == 2
    assert fake.models[0].directory == fake.models[1].directory  # one program text: one hex id (§1.4)
    k1.close()
    assert ("unload", 21) in fake.calls and fake.models[0].closed
    assert not fake.models[1].closed and fake.models[1].directory.exists()  # k2 still holds it
    k2.close()
    assert fake.models[1].closed and not fake.models[1].directory.exists()


def test_close_releases_surfaces_and_cache_clear_unloads(fake):
    k = compile_model(conv_program(0))
    # one input and one output surface, zeroed, sized C·S·2 (§1.5)
    assert [s.nbytes for s in fake.surfaces] == [32 * 32 * 2, 32 * 32 * 2]
    assert all(not any(s.data) for s in fake.surfaces)
    k.close()
    k.close()  # twice is fine
    assert fake.live_surfaces == [] and fake.released_surfaces == 2
    assert not fake.models[0].closed  # idle in the cache
    with pytest.raises(RuntimeError, match="closed"):
        k(x=rand((1, 32, 1, 32), 0))
    runtime.CACHE.clear()
    assert fake.models[0].closed and not fake.models[0].directory.exists()


def test_garbage_collected_kernel_releases_its_surfaces(fake):
    k = compile_model(conv_program(0))
    k(x=rand((1, 32, 1, 32), 0))
    del k
    gc.collect()
    assert fake.live_surfaces == []


def test_plane_stride_from_model_attributes_is_honoured(tmp_path, monkeypatch):
    # [1, 4, 1, 8]: 16-byte rows break the dense rule; with PlaneStride 128 the layout is known.
    bridge = FakeBridge(tmp_path, plane_stride=128)
    monkeypatch.setattr(runtime, "_bridge", lambda: bridge)
    monkeypatch.setattr(runtime, "CACHE", ModelCache())

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 4, 1, 8), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.mul(x=x, y=np.float16(3.0), name="y")

    k = compile_model(prog)
    assert k.input_layouts["x"].strided and k.input_layouts["x"].byte_strides[1] == 128
    assert [s.nbytes for s in bridge.surfaces] == [4 * 128, 4 * 128]  # BatchStride = C·PlaneStride
    x = rand((1, 4, 1, 8), 3)
    np.testing.assert_array_equal(k(x=x)["y"], reference_compile(prog)(x=x)["y"])
    k.close()
    runtime.CACHE.clear()


def test_without_plane_stride_unaligned_shapes_are_refused_and_nothing_leaks(fake):
    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 4, 1, 8), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.mul(x=x, y=np.float16(3.0), name="y")

    with pytest.raises(LayoutError, match="multiple of 32 fp16 elements"):
        compile_model(prog)
    assert fake.surfaces == []
    runtime.CACHE.clear()
    assert all(m.closed for m in fake.models)


def test_bindings_have_their_own_inputs_and_share_outputs(fake):
    with pytest.warns(UserWarning, match=r"not strictly ascending.*§1.12"):  # two equal-size inputs
        k = compile_model(dynamic_program())
    out_surfaces = fake.surfaces[:1]  # created first: the kernel's output surface
    layers = [k.new_binding() for _ in range(3)]
    weights = [rand((1, 4, 1, 32), 10 + i) for i in range(3)]
    for b, w in zip(layers, weights):
        b.write(w=w)  # staged once, like a layer's weights
    requests = [c for c in fake.calls if c[0] == "request"]
    assert len(requests) == 4  # the default binding + 3; each built once
    ref = reference_compile(dynamic_program())
    for step in range(2):
        x = rand((1, 4, 1, 32), 100 + step)
        for b, w in zip(layers, weights):
            np.testing.assert_array_equal(b.run(x=x)["y"], ref(x=x, w=w)["y"])
    # every request's outputs are the kernel's one output surface
    models = fake.models[0]
    assert models.evals == 6
    assert all(s in fake.surfaces for s in out_surfaces)
    with pytest.raises(KernelInputError, match="no value yet for input\\(s\\): w"):
        k.new_binding().run(x=x)
    n_live = len(fake.live_surfaces)
    layers[0].close()
    assert len(fake.live_surfaces) == n_live - 2  # its x and w surfaces; the output stays
    np.testing.assert_array_equal(layers[1](x=x)["y"], ref(x=x, w=weights[1])["y"])
    k.close()
    assert fake.live_surfaces == []


def test_kernel_call_validates_inputs(fake):
    k = compile_model(conv_program(0))
    with pytest.raises(KernelInputError, match="shape"):
        k(x=np.zeros((1, 32, 1, 31)))
    with pytest.raises(KernelInputError, match="missing"):
        k()
    k.close()


def test_eval_failure_raises_ane_error_and_kernel_still_closes(fake):
    k = compile_model(conv_program(0))
    fake.fail_eval = True
    with pytest.raises(ANEError) as info:
        k(x=rand((1, 32, 1, 32), 0))
    assert info.value.step == "eval"
    k.close()
    assert fake.live_surfaces == []


def test_compile_failure_is_counted_and_cached_nowhere(tmp_path, monkeypatch):
    bridge = FakeBridge(tmp_path, fail_compile=True)
    monkeypatch.setattr(runtime, "_bridge", lambda: bridge)
    monkeypatch.setattr(runtime, "CACHE", ModelCache())
    monkeypatch.setattr(runtime, "COMPILES", CompileCounter())
    for _ in range(2):
        with pytest.raises(ANEError, match="ANE compile failed"):
            compile_model(conv_program(0))
    assert runtime.COMPILES.used == 2 and len(runtime.CACHE) == 0
    assert program_dirs(tmp_path) == []  # the temp dirs are gone


def test_surface_failure_releases_what_was_made(tmp_path, monkeypatch):
    bridge = FakeBridge(tmp_path, fail_surface_after=1)
    monkeypatch.setattr(runtime, "_bridge", lambda: bridge)
    monkeypatch.setattr(runtime, "CACHE", ModelCache())
    with pytest.raises(ANEError, match="ANE surface failed"):
        compile_model(conv_program(0))
    assert len(bridge.surfaces) == 1 and bridge.live_surfaces == []
    assert runtime.CACHE.in_use == 0 and runtime.CACHE.loaded == 1  # the hold was released: idle
    runtime.CACHE.clear()
    assert bridge.models[0].closed


def test_qos_is_used_for_every_step(fake):
    k = compile_model(conv_program(0), qos=7)
    k(x=rand((1, 32, 1, 32), 0))
    k.close()
    runtime.CACHE.clear()
    assert ("compile", 7) in fake.calls and ("eval", 7) in fake.calls and ("unload", 7) in fake.calls
    with pytest.raises(ValueError, match="qos"):
        compile_model(conv_program(0), qos=-1)


def test_past_the_loaded_program_budget_new_kernels_move_to_a_worker(fake):
    x = rand((1, 32, 1, 32), 5)
    prog = conv_program(0)
    here = compile_model(prog, loaded_program_budget=1)
    assert here.backend == "ane" and runtime.COMPILES.used == 1
    again = compile_model(prog, loaded_program_budget=1)  # cached and loaded: stays here
    assert type(again).__name__ == "AneKernel" and runtime.COMPILES.used == 1
    other = conv_program(1)
    moved = compile_model(  # the one loaded program is in use: §10.1, a worker holds this one
        other, loaded_program_budget=1, worker_backend="reference", start_method="forkserver", timeout=60
    )
    try:
        assert type(moved).__name__ == "WorkerKernel" and moved.pid not in (None, os.getpid())
        assert runtime.COMPILES.used == 1 and compiles(fake) == 1  # not compiled in this process
        np.testing.assert_array_equal(moved(x=x)["y"], reference_compile(other)(x=x)["y"])
    finally:
        moved.close()
        here.close()
        again.close()
    third = compile_model(other, loaded_program_budget=1)  # the idle one is unloaded: room here
    assert type(third).__name__ == "AneKernel" and fake.unloads == 1 and fake.max_loaded == 1
    third.close()


def test_budget_from_environment(monkeypatch):
    monkeypatch.delenv("ANEKIT_COMPILE_BUDGET", raising=False)
    monkeypatch.setenv(runtime.BUDGET_ENV, "7")
    assert runtime.default_loaded_program_budget() == 7
    monkeypatch.setenv(runtime.BUDGET_ENV, "many")
    with pytest.raises(runtime.AneOptionError, match="must be an integer"):
        runtime.default_loaded_program_budget()
    monkeypatch.setenv(runtime.BUDGET_ENV, "129")
    with pytest.raises(runtime.AneOptionError, match="at most 128 loaded programs"):
        runtime.default_loaded_program_budget()
    monkeypatch.delenv(runtime.BUDGET_ENV)
    assert runtime.default_loaded_program_budget() == 120


def test_interpreter_exit_unloads_and_removes_temp_dirs(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {HERE!r})
        from ane_fake_bridge import FakeBridge, program_dirs
        from anekit.backends.ane import runtime
        from anekit.mil import ct, mb, types
        import numpy as np
        bridge = FakeBridge({str(tmp_path)!r})
        runtime._bridge = lambda: bridge

        @mb.program(input_specs=[mb.TensorSpec(shape=(1, 32, 1, 32), dtype=types.fp16)],
                    opset_version=ct.target.iOS18)
        def prog(x):
            return mb.relu(x=x, name="y")

        kernel = runtime.compile_model(prog)          # never closed
        kernel(x=np.ones((1, 32, 1, 32), np.float16))
        import atexit
        atexit.register(lambda: print("dirs-before-exit", len(program_dirs(bridge.tmp))))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "dirs-before-exit 1" in result.stdout  # it existed while the program ran
    assert program_dirs(tmp_path) == []  # and atexit cleanup removed it
