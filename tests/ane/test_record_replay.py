"""Record and replay: bundles, their mandatory "source", and every shipped bundle replayed through
the reference backend within fp16 tolerance."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from anekit.backends import BackendUnavailable
from anekit.backends.base import Kernel, TensorSpec
from anekit.bundles import (
    SOURCES,
    BundleError,
    _source_of,
    check_replay,
    compare,
    load_bundle,
    record,
    replay,
    save_bundle,
)
from anekit.cli import app
from anekit.mil import ct, dumps, mb, types

FIXTURES = Path(__file__).parent.parent / "fixtures" / "ane"
BUNDLES = sorted(p for p in FIXTURES.iterdir() if p.is_dir()) if FIXTURES.is_dir() else []
runner = CliRunner()


WEIGHT = (np.random.default_rng(0).standard_normal((32, 32, 1, 1)) / 8).astype(np.float16)


def program():
    w = WEIGHT

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 32, 1, 32), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.relu(x=mb.conv(x=x, weight=mb.const(val=w, name="w")), name="y")

    return prog


def x_input(seed=1):
    return np.random.default_rng(seed).standard_normal((1, 32, 1, 32)).astype(np.float16)


# -- the shipped bundles -----------------------------------------------------------------------------
def test_at_least_one_bundle_is_shipped():
    assert BUNDLES, f"no bundle under {FIXTURES}"


@pytest.mark.parametrize("bundle_dir", BUNDLES, ids=[p.name for p in BUNDLES])
def test_every_bundle_replays_through_the_reference_backend(bundle_dir):
    meta = json.loads((bundle_dir / "meta.json").read_text())
    assert "source" in meta, f"{bundle_dir}/meta.json has no 'source': is it hardware output or not?"
    bundle = load_bundle(bundle_dir)  # raises BundleError for a missing/unknown source too
    assert bundle.source in SOURCES.values()
    if bundle.source == "ane-hardware":  # hardware output must say where it came from
        for key in ("chip", "macos_build"):
            assert bundle.meta["machine"].get(key) not in (None, "", "?"), key
    assert set(bundle.outputs) == set(bundle.meta["outputs"])
    problems = check_replay(bundle, "reference")
    assert not problems, problems


# -- record / save / load ----------------------------------------------------------------------------
def test_record_with_the_reference_backend_says_so(tmp_path):
    x = x_input()
    bundle = record(program(), {"x": x}, backend="reference", repeat=3)
    assert bundle.source == "reference-backend" and bundle.meta["backend"] == "reference"
    assert "not by a Neural Engine" in bundle.meta["note"]
    t = bundle.meta["timings"]
    assert t["runs"] == 3 and len(t["call_wall_s"]) == 3 and all(v > 0 for v in t["call_wall_s"])
    assert t["hw_execution_ns"] == []  # nothing is invented where the backend reports nothing
    expected = np.maximum(WEIGHT[:, :, 0, 0].astype(np.float64) @ x[0, :, 0, :].astype(np.float64), 0)
    np.testing.assert_allclose(
        bundle.outputs["y"][0, :, 0, :].astype(np.float64), expected, atol=2e-2, rtol=2e-2
    )
    root = save_bundle(bundle, tmp_path / "b")
    assert sorted(p.name for p in root.iterdir()) == [
        "inputs.npz",
        "meta.json",
        "model.mil",
        "outputs.npz",
        "weights",
    ]
    back = load_bundle(root)
    assert back.model.text == bundle.model.text and back.model.weights == bundle.model.weights
    np.testing.assert_array_equal(back.inputs["x"], x)
    np.testing.assert_array_equal(back.outputs["y"], bundle.outputs["y"])
    assert back.meta == json.loads(json.dumps(bundle.meta))
    assert check_replay(back) == []


def test_exact_numerics_bundle_replays_with_its_numerics(tmp_path):
    bundle = record(program(), {"x": x_input()}, backend="reference", numerics="exact")
    assert bundle.outputs["y"].dtype == np.float64 and bundle.meta["options"] == {"numerics": "exact"}
    np.testing.assert_array_equal(replay(bundle)["y"], bundle.outputs["y"])  # replayed with exact too


@pytest.mark.skipif(sys.platform == "darwin", reason="off macOS only")
def test_recording_on_the_engine_off_macos_is_refused():
    with pytest.raises(BackendUnavailable, match="needs macOS"):
        record(program(), {"x": x_input()}, backend="ane")


def test_a_kernel_cannot_pose_as_the_engine():
    class Impostor(Kernel):
        backend = "ane"
        inputs = {"x": TensorSpec("x", (1,), "fp16")}
        outputs = {}

        def run(self, inputs):
            return {}

    with pytest.raises(BundleError, match="not an engine kernel"):
        _source_of(Impostor())


@pytest.fixture
def saved(tmp_path):
    return save_bundle(record(program(), {"x": x_input()}, backend="reference"), tmp_path / "b")


def test_meta_without_source_fails_loudly(saved):
    meta = json.loads((saved / "meta.json").read_text())
    del meta["source"]
    (saved / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="has no 'source' field"):
        load_bundle(saved)
    result = runner.invoke(app, ["replay", str(saved)])
    assert result.exit_code == 1 and "has no 'source' field" in result.output


def test_unknown_source_and_missing_files_fail(saved, tmp_path):
    meta = json.loads((saved / "meta.json").read_text())
    meta["source"] = "my-laptop"
    (saved / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="unknown source 'my-laptop'"):
        load_bundle(saved)
    (saved / "outputs.npz").unlink()
    with pytest.raises(BundleError, match="missing outputs.npz"):
        load_bundle(saved)
    (saved / "meta.json").write_text("{not json")
    with pytest.raises(BundleError):
        load_bundle(saved)


def test_compare_uses_fp16_scale_tolerance():
    e = {"y": np.array([1.0, -2.0, 0.5, np.inf, np.nan], np.float16)}
    ulp = {
        "y": np.array([1.0009766, -2.0019531, 0.50024414, np.inf, np.nan], np.float16)
    }  # one fp16 ulp each
    assert compare(e, ulp, 1e-2, 1e-2) == []
    off = {"y": np.array([1.1, -2.0, 0.5, np.inf, np.nan], np.float16)}
    (problem,) = compare(e, off, 1e-2, 1e-2)
    assert "1 of 5 values differ" in problem and "max |diff| 0.09" in problem and "atol=0.02" in problem
    # the absolute tolerance scales with the tensor's magnitude (accumulation error grows with it)
    big = {"y": np.array([1.0, -2.0, 100.0], np.float16)}
    assert compare(big, {"y": np.array([1.5, -2.0, 100.0], np.float16)}, 1e-2, 1e-2) == []
    assert compare(big, {"y": np.array([2.5, -2.0, 100.0], np.float16)}, 1e-2, 1e-2)
    assert compare(e, {"y": np.array([1.0, -2.0, 0.5, -np.inf, np.nan], np.float16)}, 1e-2, 1e-2)
    assert compare(e, {"z": e["y"]}, 1e-2, 1e-2) == [
        "output 'y' missing from the replay",
        "output 'z' was not recorded",
    ]
    assert "shape" in compare(e, {"y": e["y"][:3]}, 1e-2, 1e-2)[0]


def test_tampered_outputs_are_caught(saved):
    b = load_bundle(saved)
    y = b.outputs["y"].copy()
    y[0, 3, 0, 5] += np.float16(0.5)
    np.savez(saved / "outputs.npz", y=y)
    problems = check_replay(load_bundle(saved))
    assert len(problems) == 1 and "1 of 1024 values differ" in problems[0]
    result = runner.invoke(app, ["replay", str(saved)])
    assert result.exit_code == 1


# -- the commands ----------------------------------------------------------------------------------
def test_record_and_replay_commands(tmp_path):
    model = dumps(program()).save(tmp_path / "model")
    np.save(tmp_path / "x.npy", x_input())
    out = tmp_path / "bundle"
    result = runner.invoke(
        app,
        [
            "record",
            str(model),
            "--input",
            f"x={tmp_path / 'x.npy'}",
            "--out",
            str(out),
            "--backend",
            "reference",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "reference-backend" in result.output
    assert json.loads((out / "meta.json").read_text())["source"] == "reference-backend"
    result = runner.invoke(app, ["replay", str(out)])
    assert result.exit_code == 0 and "every output matches" in result.output
    if sys.platform != "darwin":
        # the default backend is auto: the reference backend here, and the bundle says so
        result = runner.invoke(
            app, ["record", str(model), "--input", f"x={tmp_path / 'x.npy'}", "--out", str(tmp_path / "b2")]
        )
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / "b2" / "meta.json").read_text())["source"] == "reference-backend"
        # asking for the engine explicitly is refused, with the way out, and writes nothing
        result = runner.invoke(
            app,
            ["record", str(model), "--input", f"x={tmp_path / 'x.npy'}", "--out", str(tmp_path / "b3"),
             "--backend", "ane"],
        )  # fmt: skip
        assert result.exit_code == 1 and "--backend reference" in result.output
        assert not (tmp_path / "b3").exists()
    result = runner.invoke(app, ["record", str(model), "--input", "y=nothing.npy", "--backend", "reference"])
    assert result.exit_code == 1
    if sys.platform != "darwin":  # Core ML runs only on macOS: a one-line error, no bundle
        result = runner.invoke(app, ["record", str(model), "--backend", "coreml"])
        assert result.exit_code == 1 and "coreml backend is unavailable" in result.output


def test_fixture_bundle_is_the_reference_one_we_ship():
    # The shipped fixture was made here with `anekit record --backend reference` and must say so.
    meta = json.loads((FIXTURES / "conv1x1_reference" / "meta.json").read_text())
    assert meta["source"] == "reference-backend" and meta["backend"] == "reference"
    assert "not by a Neural Engine" in meta["note"]
