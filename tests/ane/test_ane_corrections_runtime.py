"""Issue 8 §4 in the runtime, off a Mac with the stand-in bridge (`ane_fake_bridge`):

- §10.3: inputs and outputs matched to the model's entries by `Symbol` or by `Name` without its
  `@...` suffix, the request in the model's own order, lower ranks laid out from the reported
  NCHW with element counts checked;
- §10.1: a loaded-program budget (128 is the engine's cap) instead of a compile budget: idle
  programs unloaded least recently used first, programs in use never, unloaded programs reloaded
  (or recompiled) on use, workers only when more must be live at once.
Nothing here runs on an engine: the stand-in computes with the reference backend.
"""

from __future__ import annotations

import numpy as np
import pytest
from ane_fake_bridge import ENGINE_CAP, FakeBridge, Report
from ane_programs import conv_program, rand

from anekit.backends.ane import runtime
from anekit.backends.ane.layout import LayoutError, Port, Strides, match_ports, parse_ports
from anekit.backends.ane.runtime import (
    AneOptionError,
    CompileCounter,
    LoadedProgramBudgetError,
    ModelCache,
    compile_model,
)
from anekit.backends.reference import compile as reference_compile
from anekit.mil import ct, mb, types


def use(tmp_path, monkeypatch, **kwargs) -> FakeBridge:
    bridge = FakeBridge(tmp_path, **kwargs)
    monkeypatch.setattr(runtime, "_bridge", lambda: bridge)
    monkeypatch.setattr(runtime, "CACHE", ModelCache())
    monkeypatch.setattr(runtime, "COMPILES", CompileCounter())
    monkeypatch.delenv(runtime.BUDGET_ENV, raising=False)
    monkeypatch.delenv("ANEKIT_COMPILE_BUDGET", raising=False)
    return bridge


@pytest.fixture(autouse=True)
def _clear_cache():
    yield
    runtime.CACHE.clear()


def two_in_two_out():
    """Inputs of different sizes, outputs of different sizes and ranks: any swap is visible."""

    @mb.program(
        input_specs=[
            mb.TensorSpec(shape=(1, 8, 1, 32), dtype=types.fp16),
            mb.TensorSpec(shape=(1, 16, 1, 32), dtype=types.fp16),
        ],
        opset_version=ct.target.iOS18,
    )
    def prog(a, b):
        s = mb.reduce_sum(x=b, axes=[1], keep_dims=True, name="s")
        big = mb.concat(values=[mb.mul(x=a, y=s, name="as"), b], axis=1, interleave=False, name="big")
        small = mb.add(x=a, y=np.float16(1.0), name="small")
        return small, big

    return prog


def rank2_program(c=64, w=32):
    @mb.program(input_specs=[mb.TensorSpec(shape=(c, w), dtype=types.fp16)], opset_version=ct.target.iOS18)
    def prog(x):
        return mb.mul(x=x, y=np.float16(2.0), name="y")

    return prog


def scaled(k: int):
    """A small distinct program per k (no weights)."""

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 4, 1, 32), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.mul(x=x, y=np.float16(1.0 + k / 1024), name="y")

    return prog


# -- §10.3 names, order, NCHW --------------------------------------------------------------------
def test_ports_are_matched_by_symbol_or_by_name_without_its_suffix():
    ins, outs = parse_ports(
        {"NetworkStatusList": [{
            "LiveInputList": [{"Name": "b", "Symbol": "b", "PlaneStride": 64}, {"Symbol": "a"}],
            "LiveOutputList": [{"Name": "y@output", "Batches": 1, "Channels": 4, "Height": 1, "Width": 32}],
        }]}
    )  # fmt: skip
    assert ins[0].names == ("b",) and ins[0].strides == Strides(plane=64, name="b") and ins[1].names == ("a",)
    assert outs[0].names == ("y",) and outs[0].nchw == (1, 4, 1, 32) and outs[0].strides is None
    ports, order = match_ports(["a", "b"], ins)
    assert ports == [ins[1], ins[0]] and order == [1, 0]  # request index 0 carries "b"
    assert match_ports(["y"], outs, "output") == ([outs[0]], [0])
    with pytest.raises(LayoutError, match="lists output 'z'.*does not declare"):
        match_ports(["y"], [Port(names=("z",))], "output")
    with pytest.raises(LayoutError, match="does not list the program's input\\(s\\) b"):
        match_ports(["a", "b"], [Port(names=("a",))])
    with pytest.raises(LayoutError, match="names some"):
        match_ports(["a", "b"], [Port(names=("a",)), Port()])


@pytest.mark.parametrize("order", ["mil", "reversed"])
def test_named_outputs_in_the_models_own_order_reach_the_right_tensors(tmp_path, monkeypatch, order):
    """§10.3: "<var>@output" names and the model's own order (here reversed); before this
    correction the names did not match, the runtime fell back to position, and swapped them."""
    use(tmp_path, monkeypatch, report=Report(order=order))
    prog = two_in_two_out()
    with pytest.warns(UserWarning, match="§1.12"):  # two inputs, two outputs: the slot-order advice
        kernel = compile_model(prog)
    a, b = rand((1, 8, 1, 32), 1), rand((1, 16, 1, 32), 2)
    got, want = kernel(a=a, b=b), reference_compile(prog)(a=a, b=b)
    for name in ("small", "big"):
        np.testing.assert_array_equal(got[name], want[name])
    attrs = kernel.attributes["NetworkStatusList"][0]
    assert attrs["LiveOutputList"][0]["Name"].endswith("@output")
    kernel.close()


def test_lower_rank_tensors_are_laid_out_from_the_reported_nchw(tmp_path, monkeypatch):
    """A rank-2 [64, 32] tensor that the engine reports as N=1, C=64, H=1, W=32 with a padded
    PlaneStride: channel c starts at c·PlaneStride. Leading 1s ([1, 1, 64, 32]) put it elsewhere."""
    use(tmp_path, monkeypatch, report=Report(plane_stride=128))
    prog = rank2_program()
    kernel = compile_model(prog)
    lay = kernel.input_layouts["x"]
    assert lay.dims == (1, 64, 1, 32) and lay.byte_strides[1] == 128 and lay.nbytes == 64 * 128
    x = rand((64, 32), 3)
    np.testing.assert_array_equal(kernel(x=x)["y"], reference_compile(prog)(x=x)["y"])
    kernel.close()


def test_a_reported_nchw_with_another_element_count_is_a_clear_error(tmp_path, monkeypatch):
    bridge = use(tmp_path, monkeypatch, report=Report(count_error=True))
    with pytest.raises(LayoutError, match="NCHW \\[1, 64, 1, 33\\].*declares 2048 elements"):
        compile_model(rank2_program())
    runtime.CACHE.clear()
    assert all(m.closed for m in bridge.models) and bridge.live_surfaces == []


# -- §10.1 the loaded-program budget ------------------------------------------------------------
def test_more_compiles_than_the_cap_stay_in_process_and_never_pass_the_budget(tmp_path, monkeypatch):
    """§10.1: 140 distinct programs, each idle after use, through the default budget (120) on a
    stand-in that refuses a 129th loaded program: every one compiles here (no worker, which
    could not run off a Mac), never more than 120 loaded, the idle ones unloaded to make room."""
    bridge = use(tmp_path, monkeypatch)
    x = rand((1, 4, 1, 32), 4)
    for k in range(140):
        prog = scaled(k)
        with compile_model(prog) as kernel:
            assert type(kernel).__name__ == "AneKernel", k
            np.testing.assert_array_equal(kernel(x=x)["y"], reference_compile(prog)(x=x)["y"])
    assert bridge.compiles() == 140 and bridge.refused_loads == 0
    assert bridge.max_loaded == runtime.DEFAULT_LOADED_PROGRAM_BUDGET < ENGINE_CAP
    assert bridge.unloads == 140 - runtime.DEFAULT_LOADED_PROGRAM_BUDGET
    assert runtime.CACHE.loaded == runtime.DEFAULT_LOADED_PROGRAM_BUDGET


def test_least_recently_used_idle_program_is_unloaded_first_and_reloaded_on_use(tmp_path, monkeypatch):
    bridge = use(tmp_path, monkeypatch)
    x = rand((1, 4, 1, 32), 5)
    a, b, c, d = (scaled(k) for k in range(4))

    def run(prog):
        with compile_model(prog, loaded_program_budget=3) as kernel:
            got = kernel(x=x)["y"]
        np.testing.assert_array_equal(got, reference_compile(prog)(x=x)["y"])

    for prog in (a, b, c):
        run(prog)
    run(a)  # a used again: b is now the least recently used
    run(d)  # a fourth program: room is made by unloading b
    model_b = bridge.models[1]
    assert not model_b.loaded and not model_b.closed and all(bridge.models[i].loaded for i in (0, 2, 3))
    assert bridge.unloads == 1 and bridge.max_loaded == 3
    run(b)  # reloaded without a compile (§1.10), after unloading the least recent (c)
    assert bridge.compiles() == 4 and runtime.CACHE.reloads == 1 and bridge.loads_of(model_b) == 2
    assert not bridge.models[2].loaded and model_b.loaded


def test_an_unloaded_program_whose_reload_fails_is_compiled_again(tmp_path, monkeypatch):
    bridge = use(tmp_path, monkeypatch)
    x = rand((1, 4, 1, 32), 6)
    progs = [scaled(k) for k in range(3)]
    for prog in progs:
        compile_model(prog, loaded_program_budget=2).close()
    assert not bridge.models[0].loaded  # unloaded to make room for the third
    bridge.fail_reload = True
    with compile_model(progs[0], loaded_program_budget=2) as kernel:
        np.testing.assert_array_equal(kernel(x=x)["y"], reference_compile(progs[0])(x=x)["y"])
    assert bridge.compiles() == 4 and bridge.models[0].closed and bridge.models[3].loaded


def test_a_program_in_use_is_never_unloaded_and_only_then_a_worker_is_used(tmp_path, monkeypatch):
    bridge = use(tmp_path, monkeypatch)
    x = rand((1, 4, 1, 32), 7)
    held = compile_model(scaled(0), loaded_program_budget=2)  # stays open: in use
    layer = held.new_binding()
    layer.write(x=x)
    compile_model(scaled(1), loaded_program_budget=2).close()  # idle
    third = compile_model(scaled(2), loaded_program_budget=2)  # room made by unloading the idle one
    assert bridge.models[0].loaded and not bridge.models[1].loaded and bridge.unloads == 1
    moved = compile_model(  # two in use, budget two: only now a worker
        scaled(3), loaded_program_budget=2, worker_backend="reference", start_method="forkserver", timeout=60
    )
    try:
        assert type(moved).__name__ == "WorkerKernel" and bridge.compiles() == 3
        np.testing.assert_array_equal(moved(x=x)["y"], reference_compile(scaled(3))(x=x)["y"])
        np.testing.assert_array_equal(layer.run()["y"], reference_compile(scaled(0))(x=x)["y"])
    finally:
        moved.close()
    assert bridge.models[0].loaded and bridge.max_loaded == 2
    third.close()
    held.close()


def test_in_a_worker_with_every_program_in_use_the_error_says_so(tmp_path, monkeypatch):
    use(tmp_path, monkeypatch)
    monkeypatch.setattr(runtime, "in_worker", lambda: True)
    held = compile_model(scaled(0), loaded_program_budget=1)
    with pytest.raises(LoadedProgramBudgetError, match="worker process has 1 programs loaded and in use"):
        compile_model(scaled(1), loaded_program_budget=1)
    held.close()


def test_the_compile_budget_names_are_refused_with_their_replacement(tmp_path, monkeypatch):
    use(tmp_path, monkeypatch)
    prog = conv_program(0)
    with pytest.raises(AneOptionError, match="compile_budget= was removed.*loaded_program_budget="):
        compile_model(prog, compile_budget=10)
    with pytest.raises(AneOptionError, match="worker_loaded_program_budget="):
        compile_model(prog, worker_budget=10)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        compile_model(prog, bogus=1)
    for bad in (0, 129, "seven", 2.5, True):
        with pytest.raises(AneOptionError, match="loaded_program_budget must be"):
            compile_model(prog, loaded_program_budget=bad)
    monkeypatch.setenv("ANEKIT_COMPILE_BUDGET", "100")
    with pytest.raises(
        AneOptionError, match=r"\$ANEKIT_COMPILE_BUDGET is no longer read.*ANEKIT_LOADED_PROGRAM_BUDGET"
    ):
        compile_model(prog)
    report = runtime.loaded_program_report()  # doctor shows the problem instead of failing
    assert "no longer read" in report["loaded_program_budget"]


def test_loaded_program_report_for_doctor(tmp_path, monkeypatch):
    use(tmp_path, monkeypatch)
    kernel = compile_model(conv_program(0))
    report = runtime.loaded_program_report()
    assert report["engine_program_cap"] == 128 and report["loaded_program_budget"] == 120
    assert report["loaded"] == 1 and report["in_use"] == 1 and report["compiles"] == 1
    assert "§10.1" in report["source"] and "least recently used" in report["policy"]
    kernel.close()
    assert runtime.loaded_program_report()["in_use"] == 0
