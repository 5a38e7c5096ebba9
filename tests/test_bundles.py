"""Record bundles: what `load_bundle` refuses (every file problem a BundleError saying what and where,
array headers checked before allocation, format and version checked) and how `save_bundle` writes
(beside the target, renamed into place, never through a symlink, no overwrite without asking)."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format
from typer.testing import CliRunner

from anekit.bundles import BundleError, check_replay, load_bundle, record, save_bundle
from anekit.cli import app
from anekit.errors import AnekitError
from anekit.mil import ct, dumps, mb, types

WEIGHT = (np.random.default_rng(0).standard_normal((16, 16, 1, 1)) / 4).astype(np.float16)
X = np.random.default_rng(1).standard_normal((1, 16, 1, 8)).astype(np.float16)


def _program():
    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 16, 1, 8), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.relu(x=mb.conv(x=x, weight=mb.const(val=WEIGHT, name="w")), name="y")

    return prog


BUNDLE = record(dumps(_program()), {"x": X}, backend="reference")


@pytest.fixture
def saved(tmp_path) -> Path:
    return save_bundle(BUNDLE, tmp_path / "b")


def edit_meta(root: Path, **changes) -> None:
    meta = json.loads((root / "meta.json").read_text())
    for key, value in changes.items():
        if value is ...:
            del meta[key]
        else:
            meta[key] = value
    (root / "meta.json").write_text(json.dumps(meta))


def forged_npy(shape, descr="|u1", data=b"\0" * 64) -> bytes:
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def test_a_saved_bundle_loads_and_replays_with_the_oracle_values(saved):
    b = load_bundle(saved)
    expected = np.maximum(WEIGHT[:, :, 0, 0].astype(np.float64) @ X[0, :, 0, :].astype(np.float64), 0)
    np.testing.assert_allclose(b.outputs["y"][0, :, 0, :].astype(np.float64), expected, atol=2e-2, rtol=2e-2)
    assert check_replay(b) == []


# -- format and version ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": "other-bundle"}, "format 'other-bundle' is not an anekit bundle"),
        ({"format": ...}, "has no 'format' field"),
        ({"version": 2}, "bundle version 2 is newer than this anekit reads.*upgrade anekit"),
        ({"version": 0}, "unknown bundle version 0"),
        ({"version": "1"}, "'version' is '1', not an integer"),
        ({"version": True}, "'version' is True, not an integer"),
        ({"version": ...}, "'version' is None, not an integer"),
    ],
)
def test_unknown_format_or_version_is_refused_saying_what_is_supported(saved, changes, message):
    edit_meta(saved, **changes)
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(saved)
    assert "this anekit reads format 'anekit-bundle', version 1" in str(info.value)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"options": []}, "'options' must be a JSON object"),
        ({"options": {"numerics": "fast"}}, "options.numerics is 'fast'; expected one of ane, exact"),
        (
            {"tolerance": {"rtol": "big", "atol": 0.01}},
            r"tolerance.rtol is 'big'; expected a number in \[0, 1.0\]",
        ),
        ({"tolerance": {"rtol": 0.01, "atol": -1}}, "tolerance.atol is -1"),
        ({"tolerance": {"rtol": float("nan"), "atol": 0.01}}, "tolerance.rtol is nan"),
        ({"tolerance": None}, "'tolerance' must be a JSON object, not null"),
        ({"machine": "m4"}, "'machine' must be a JSON object"),
        ({"inputs": {"x": {"shape": [1, -16], "dtype": "fp16"}}}, "inputs.x must be"),
        ({"outputs": ["y"]}, "'outputs' must be a JSON object of name -> spec"),
    ],
)
def test_metadata_fields_a_replay_uses_are_checked(saved, changes, message):
    edit_meta(saved, **changes)
    with pytest.raises(BundleError, match=message):
        load_bundle(saved)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"[]", "holds a JSON list, not an object"),
        (b"\xff\xfe", "is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "is not valid JSON"),  # RecursionError inside json
        (b" " * (2 << 20), r"more than the 1048576 bytes"),
    ],
    ids=["list", "utf16", "deep", "huge"],
)
def test_damaged_meta_json_is_a_bundle_error(saved, content, message):
    (saved / "meta.json").write_bytes(content)
    with pytest.raises(BundleError, match=message):
        load_bundle(saved)


# -- array files -----------------------------------------------------------------------------------
def test_an_npz_header_claiming_2_to_the_40_elements_is_not_allocated(saved):
    with zipfile.ZipFile(saved / "inputs.npz", "w") as z:
        z.writestr("x.npy", forged_npy((1 << 40,)))
    tracemalloc.start()
    try:
        with pytest.raises(
            BundleError, match=r"inputs.npz, member 'x.npy': the header claims shape \(1099511627776,\)"
        ):
            load_bundle(saved)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


@pytest.mark.parametrize(
    "damage, message",
    [
        ("empty", "outputs.npz: the file is empty"),
        ("truncated", "outputs.npz: not a readable .npz"),
        ("directory", "outputs.npz: is a directory"),
        ("pickle", "only numeric arrays"),
        ("renamed", r"outputs.npz holds outputs \['z'\] but meta.json records \['y'\]"),
        ("reshaped", r"output 'y' in outputs.npz has shape \[16, 8\] but meta.json records \[1, 16, 1, 8\]"),
        ("no-archive-members", r"holds outputs \[\] but meta.json records \['y'\]"),
    ],
)
def test_every_array_file_problem_is_a_clear_bundle_error(saved, damage, message):
    path = saved / "outputs.npz"
    good = path.read_bytes()
    path.unlink()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(good[: len(good) - 30])
    elif damage == "directory":
        path.mkdir()
    elif damage == "pickle":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("y.npy", forged_npy((2,), "|O", b"\0" * 16))
    elif damage == "renamed":
        np.savez(path, z=BUNDLE.outputs["y"])
    elif damage == "reshaped":
        np.savez(path, y=BUNDLE.outputs["y"].reshape(16, 8))
    elif damage == "no-archive-members":
        zipfile.ZipFile(path, "w").close()
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(saved)
    assert str(saved) in str(info.value)


def test_the_replay_command_reports_an_empty_npz_instead_of_aborting(saved):
    (saved / "inputs.npz").write_bytes(b"")
    result = CliRunner().invoke(app, ["replay", str(saved)])
    assert result.exit_code == 1
    assert "inputs.npz: the file is empty" in result.output and "Traceback" not in result.output


# -- files of the bundle directory -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["meta.json", "inputs.npz", "model.mil", "weights/w.bin"])
def test_a_symlink_leaving_the_bundle_is_refused(saved, tmp_path, name):
    outside = tmp_path / "outside"
    outside.write_bytes((saved / name).read_bytes())  # a valid file: only where it lives is wrong
    (saved / name).unlink()
    (saved / name).symlink_to(outside)
    with pytest.raises(BundleError, match="outside the directory"):
        load_bundle(saved)


@pytest.mark.parametrize("name", ["meta.json", "model.mil", "weights/w.bin"])
def test_a_directory_or_fifo_in_place_of_a_bundle_file_is_refused(saved, name):
    (saved / name).unlink()
    (saved / name).mkdir()
    with pytest.raises(BundleError, match="is a directory"):
        load_bundle(saved)
    if hasattr(os, "mkfifo"):
        (saved / name).rmdir()
        os.mkfifo(saved / name)
        with pytest.raises(BundleError, match="not a regular file"):
            load_bundle(saved)


def test_missing_files_and_a_missing_bundle_are_named(saved, tmp_path):
    (saved / "weights" / "w.bin").unlink()
    with pytest.raises(BundleError, match="its program cannot be read: weight file .*w.bin.* does not exist"):
        load_bundle(saved)
    (saved / "inputs.npz").unlink()
    with pytest.raises(BundleError, match="missing inputs.npz"):
        load_bundle(saved)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="is not a directory"):
        load_bundle(tmp_path / "file")


# -- writing ---------------------------------------------------------------------------------------
def test_save_refuses_a_non_empty_directory_unless_overwrite(saved):
    before = (saved / "meta.json").read_bytes()
    with pytest.raises(BundleError, match="already exists and is not empty; pass overwrite=True"):
        save_bundle(BUNDLE, saved)
    assert (saved / "meta.json").read_bytes() == before
    (saved / "weights" / "stale.bin").write_bytes(b"old")
    save_bundle(BUNDLE, saved, overwrite=True)
    assert not (saved / "weights" / "stale.bin").exists()
    assert check_replay(load_bundle(saved)) == []


@pytest.mark.parametrize("name", ["meta.json", "inputs.npz", "model.mil"])
def test_save_never_writes_through_a_pre_placed_symlink(saved, tmp_path, name):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (saved / name).unlink()
    (saved / name).symlink_to(victim)
    save_bundle(BUNDLE, saved, overwrite=True)
    assert victim.read_bytes() == b"precious" and not (saved / name).is_symlink()
    load_bundle(saved)


def test_save_refuses_a_symlinked_target_and_foreign_files(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    with pytest.raises(BundleError, match="is a symbolic link"):
        save_bundle(BUNDLE, tmp_path / "link", overwrite=True)
    (real / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="holds notes.txt, which anekit did not write there"):
        save_bundle(BUNDLE, real, overwrite=True)
    assert (real / "notes.txt").read_text() == "mine"


def test_save_refuses_object_arrays_instead_of_pickling_them(tmp_path):
    from dataclasses import replace

    bad = replace(BUNDLE, inputs={"x": np.array([object()], dtype=object)})
    with pytest.raises(BundleError, match="input 'x' is a object array; a bundle stores numeric arrays only"):
        save_bundle(bad, tmp_path / "b")
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []


def test_errors_are_anekit_errors():
    assert issubclass(BundleError, AnekitError)


def test_a_failed_save_leaves_no_partial_bundle(tmp_path, monkeypatch):
    import anekit.bundles as bundles_module

    def full_disk(root, rel, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundles_module, "write_new_file", full_disk)
    with pytest.raises(
        BundleError, match="cannot write bundle directory .*: No space left on device; nothing"
    ):
        save_bundle(BUNDLE, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []
