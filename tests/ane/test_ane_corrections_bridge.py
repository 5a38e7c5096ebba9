"""Issue 8 §4 on the real `bridge.py`, run off a Mac on the PyObjC / framework stand-in
(`ane_fake_objc`): autorelease pools around every entry point on any thread (§10.2), and the
whole runtime driving the bridge (requests in the model's order, §10.3; shared temp directories,
§1.4; unload / reload, §10.1). Nothing here runs on an engine."""

from __future__ import annotations

import inspect
import threading

import numpy as np
import pytest
from ane_fake_bridge import Report, program_dirs
from ane_fake_objc import install
from ane_programs import conv_program, dynamic_program, rand

from anekit.backends.ane import runtime
from anekit.backends.ane.runtime import CompileCounter, ModelCache, compile_model
from anekit.backends.reference import compile as reference_compile
from anekit.mil import dumps


@pytest.fixture
def real_bridge(tmp_path, monkeypatch):
    bridge, fw = install(monkeypatch, tmp_path, report=Report(order="reversed"))
    monkeypatch.setattr(runtime, "_bridge", lambda: bridge)
    monkeypatch.setattr(runtime, "CACHE", ModelCache())
    monkeypatch.setattr(runtime, "COMPILES", CompileCounter())
    yield bridge, fw
    runtime.CACHE.clear()


def drive_every_entry_point(bridge):
    """probe/require, compile+load, attributes, surfaces, request, evaluate, perf stats, device
    info, unload, load, evaluate again, close, surface release."""
    bridge.require()
    bridge.probe()
    model = dumps(conv_program(3))
    engine = bridge.compile_and_load(model.text.encode(), model.weights, 21)
    engine.attributes()
    x_in, y_out = bridge.create_surface(32 * 32 * 2), bridge.create_surface(32 * 32 * 2)
    request = bridge.make_request([x_in], [y_out], [0], [0])
    engine.evaluate(request, 21)
    bridge.hw_execution_time(request)
    bridge.device_info()
    engine.unload(21)
    engine.load(21)
    engine.evaluate(request, 21)
    engine.close(21)
    x_in.release()
    y_out.release()


def test_every_bridge_entry_point_runs_inside_an_autorelease_pool_on_any_thread(real_bridge):
    """§10.2: PyObjC drains no pool per call and other threads have none; each entry point makes
    its own. The stand-in records the pool depth at every framework call and at every object the
    framework would autorelease."""
    bridge, fw = real_bridge
    drive_every_entry_point(bridge)
    box = {}

    def other_thread():
        try:
            drive_every_entry_point(bridge)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=other_thread)
    t.start()
    t.join(60)
    assert "error" not in box, box
    threads = {e[1] for e in fw.objc.events}
    assert len(threads) == 2  # both threads called into the framework
    seen = {e[0] for e in fw.objc.events}
    for what in (
        "loadBundle", "+[_ANEInMemoryModelDescriptor modelWithMILText:weights:optionsPlist:]",
        "-[_ANEInMemoryModel compileWithQoS:options:error:]", "-[_ANEInMemoryModel loadWithQoS:options:error:]",
        "-[_ANEInMemoryModel evaluateWithQoS:options:request:error:]", "-[_ANEInMemoryModel unloadWithQoS:error:]",
        "-[_ANEInMemoryModel modelAttributes]", "+[_ANEIOSurfaceObject objectWithIOSurface:]",
        "+[_ANERequest requestWithInputs:inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:]",
        "-[_ANERequest perfStats]", "+[_ANEDeviceInfo hasANE]", "autoreleased NSData", "autoreleased request",
    ):  # fmt: skip
        assert what in seen, what
    assert fw.events_outside_pools() == []


def test_one_pool_mechanism_not_copies_at_call_sites(real_bridge):
    bridge, _ = real_bridge
    source = inspect.getsource(bridge)
    assert source.count("with objc.autorelease_pool()") == 1  # only in the `autoreleased` decorator
    for fn in (bridge.compile_and_load, bridge.make_request, bridge.create_surface, bridge.probe,
               bridge.EngineModel.evaluate, bridge.EngineModel.unload, bridge.EngineModel.load,
               bridge.EngineModel.close, bridge.Surface.release, bridge.hw_execution_time):  # fmt: skip
        assert fn.__wrapped__ is not None  # functools.wraps of the decorator


def test_the_runtime_on_the_real_bridge_passes_surfaces_in_the_models_order(real_bridge):
    """§10.3: the stand-in model lists its inputs and outputs in reverse declaration order and
    names outputs "<var>@output"; the kernel must still give the reference backend's answer."""
    bridge, fw = real_bridge
    prog = dynamic_program(c=4, s=32)
    with pytest.warns(UserWarning, match="§1.12"):
        kernel = compile_model(prog)
    ref = reference_compile(prog)
    x, w = rand((1, 4, 1, 32), 1), rand((1, 4, 1, 32), 2)
    np.testing.assert_array_equal(kernel(x=x, w=w)["y"], ref(x=x, w=w)["y"])
    layer = kernel.new_binding()
    layer.write(w=w)
    np.testing.assert_array_equal(layer.run(x=x)["y"], ref(x=x, w=w)["y"])
    assert fw.requests_seen[-1] == ([0, 1], [0])
    kernel.close()
    runtime.CACHE.clear()
    assert fw.loaded == set() and program_dirs(fw.tmp) == []


def test_two_live_models_of_one_program_share_its_directory_until_the_last_closes(real_bridge):
    """§1.4: one text + weights = one hexStringIdentifier = one directory. Closing one model
    must not delete what the other was compiled from (it needs it to reload, §1.10)."""
    bridge, fw = real_bridge
    prog = conv_program(5)
    a = compile_model(prog, cache=False)
    b = compile_model(prog, cache=False, qos=7)  # another engine model, same identifier
    assert fw.compiles == 2 and len({m.hex for m in fw.models}) == 1
    directory = fw.tmp / fw.models[0].hex
    a.close()
    assert (directory / "model.mil").is_file()
    engine = b._compiled.engine
    engine.unload(7)
    engine.load(7)  # the stand-in compiler/loader reads the directory: it must still be whole
    x = rand((1, 32, 1, 32), 4)
    np.testing.assert_array_equal(b(x=x)["y"], reference_compile(prog)(x=x)["y"])
    b.close()
    assert not directory.exists() and program_dirs(fw.tmp) == []


def test_doctor_reports_the_loaded_program_budget_as_structured_data(real_bridge):
    """`anekit doctor` (and `--json`) says what the cap is and what anekit does about it (§10.1)."""
    import io
    import json

    from rich.console import Console

    from anekit.backends.ane.doctor import doctor_report

    bridge, fw = real_bridge
    out = io.StringIO()
    data = doctor_report(Console(file=out, width=200), bridge=bridge)
    json.dumps(data)  # plain values only
    assert data["missing"] == [] and data["smoke_test"]["ok"]  # the stand-in computes with NumPy
    budget = data["loaded_programs"]
    assert budget["engine_program_cap"] == 128 and budget["loaded_program_budget"] == 120
    assert budget["compiles"] == 1 and budget["loaded"] == 0  # the smoke test's program was unloaded
    text = out.getvalue()
    assert "loaded-program budget: 120 of the engine's 128 programs per process" in text
    assert "least recently used" in text and "§10.1" in text and "smoke test" in text
    entry = data["smoke_test"]["model_attributes"]["NetworkStatusList"][0]["LiveOutputList"][0]
    assert entry["Name"] == "y@output" and "modelAttributes of the smoke-test program" in text


def test_a_temp_directory_that_cannot_be_written_is_an_ane_error(real_bridge, monkeypatch):
    from anekit.backends.ane.errors import ANEError

    bridge, fw = real_bridge

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bridge, "acquire_model_dir", full)
    model = dumps(conv_program(8))
    with pytest.raises(ANEError, match="ANE model failed: cannot write the program's files.*No space left"):
        bridge.compile_and_load(model.text.encode(), model.weights, 21)
    assert fw.loaded == set()
