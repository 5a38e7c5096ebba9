"""A model directory is read only inside itself and written without following links or losing data.

Reading: `anekit.mil.model.load` (and so `anekit.compile(dir)`) opens model.mil and exactly the weight
files the text names, each only if it resolves inside the directory and is a regular file. Writing:
`MilModel.save` builds the directory beside its target and renames it into place; no pre-placed
symlink is followed, a non-empty directory is replaced only with overwrite=True.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import anekit
from anekit.errors import AnekitError
from anekit.mil import ct, dumps, mb, types
from anekit.mil.blob import write_blob
from anekit.mil.model import MilModel, WeightPathError, load, referenced_weights

W = (np.arange(32 * 32).reshape(32, 32, 1, 1) % 7 - 3).astype(np.float16)


def _conv_model() -> MilModel:
    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 32, 1, 4), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.conv(x=x, weight=mb.const(val=W, name="w"), name="y")

    return dumps(prog)


MODEL = _conv_model()  # built once: coremltools numbers generated names per build


def conv_model() -> MilModel:
    return MilModel(MODEL.text, dict(MODEL.weights))


@pytest.fixture
def model_dir(tmp_path):
    return conv_model().save(tmp_path / "model")


def secret_blob(tmp_path):
    """A file outside the model directory holding a valid blob of other weights (a 'secret')."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(write_blob(np.full((32, 32, 1, 1), 1000, np.float16)))
    return secret


# -- reading -------------------------------------------------------------------------------------
def test_a_weight_symlink_leaving_the_directory_is_refused_not_followed(model_dir, tmp_path):
    weight = model_dir / "weights" / "w.bin"
    weight.unlink()
    weight.symlink_to(secret_blob(tmp_path))
    with pytest.raises(
        WeightPathError, match=r"weight file '@model_path/weights/w.bin'.*outside the directory"
    ):
        load(model_dir)
    # before: the secret's bytes came out in the kernel's output
    with pytest.raises(WeightPathError, match="outside the directory"):
        anekit.compile(model_dir, backend="reference")


def test_a_symlinked_weights_directory_leaving_the_model_is_refused(model_dir, tmp_path):
    outside = tmp_path / "elsewhere"
    (model_dir / "weights").rename(outside)
    (model_dir / "weights").symlink_to(outside, target_is_directory=True)
    with pytest.raises(WeightPathError, match="outside the directory"):
        load(model_dir)


def test_a_symlink_staying_inside_the_directory_is_followed(model_dir):
    (model_dir / "weights" / "w.bin").rename(model_dir / "real.bin")
    (model_dir / "weights" / "w.bin").symlink_to("../real.bin")
    x = np.ones((1, 32, 1, 4), np.float16)
    y = anekit.compile(model_dir, backend="reference")(x=x)["y"]
    expected = W[:, :, 0, 0].astype(np.float64) @ x[0, :, 0, :].astype(np.float64)
    np.testing.assert_allclose(y[0, :, 0, :].astype(np.float64), expected, rtol=1e-3)


def test_a_model_mil_symlink_leaving_the_directory_is_refused(model_dir, tmp_path):
    (tmp_path / "other.mil").write_text((model_dir / "model.mil").read_text())
    (model_dir / "model.mil").unlink()
    (model_dir / "model.mil").symlink_to(tmp_path / "other.mil")
    with pytest.raises(WeightPathError, match="MIL text .*outside the directory"):
        load(model_dir)


def test_only_the_weight_files_the_text_references_are_read(model_dir, tmp_path):
    weights = model_dir / "weights"
    (weights / "unrelated.bin").write_bytes(b"not read")
    (weights / "escaping.bin").symlink_to(secret_blob(tmp_path))  # unreferenced: neither read nor refused
    if hasattr(os, "mkfifo"):
        os.mkfifo(weights / "pipe.bin")
    model = load(model_dir)
    assert list(model.weights) == ["@model_path/weights/w.bin"]
    assert model.weights["@model_path/weights/w.bin"] == (weights / "w.bin").read_bytes()


def test_compile_of_a_directory_reads_only_what_the_text_references(model_dir, monkeypatch):
    import anekit.safe_dir

    opened = []
    real_read = anekit.safe_dir.read_inside

    def spy(root, rel, *args, **kwargs):
        opened.append(rel)
        return real_read(root, rel, *args, **kwargs)

    monkeypatch.setattr("anekit.mil.model.read_inside", spy)
    (model_dir / "weights" / "big_unrelated.bin").write_bytes(bytes(1 << 20))
    (model_dir / "notes.txt").write_text("x")
    kernel = anekit.compile(model_dir, backend="reference")
    assert sorted(opened) == ["model.mil", "weights/w.bin"]
    assert kernel(x=np.zeros((1, 32, 1, 4), np.float16))["y"].shape == (1, 32, 1, 4)


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "dangling", "loop"])
def test_a_referenced_weight_that_is_not_a_regular_file_is_a_clear_error(model_dir, kind):
    weight = model_dir / "weights" / "w.bin"
    weight.unlink()
    expected = {
        "missing": "does not exist",
        "directory": "is a directory",
        "fifo": "not a regular file",
        "dangling": "does not exist",
        "loop": "cannot be opened",
    }[kind]
    if kind == "directory":
        weight.mkdir()
    elif kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no fifos here")
        os.mkfifo(weight)  # a reader of a fifo blocks until a writer comes: must not hang
    elif kind == "dangling":
        weight.symlink_to("nothing.bin")
    elif kind == "loop":
        weight.symlink_to("w.bin")
    done = []

    def attempt():
        with pytest.raises(WeightPathError, match=expected) as info:
            load(model_dir)
        done.append(str(info.value))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert done, f"load() blocked or raised something else on a {kind} weight file"
    assert "@model_path/weights/w.bin" in done[0]


def test_malformed_and_escaping_paths_in_the_text_are_refused(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    (tmp_path / "evil.bin").write_bytes(b"x" * 128)
    for path in ("@model_path/../evil.bin", "/etc/passwd", "@model_path/weights/../../evil.bin"):
        (root / "model.mil").write_text(f'x = BLOBFILE(path = string("{path}"), offset = uint64(64))')
        with pytest.raises(WeightPathError):
            load(root)


def test_model_mil_that_is_not_utf8_is_a_located_parse_error(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    (root / "model.mil").write_bytes(b"program(1.3)\n{ \xff }\n")
    with pytest.raises(AnekitError, match=r"model.mil:2:3: the file is not UTF-8 text"):
        load(root)


def test_a_missing_model_mil_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightPathError, match="MIL text .*model.mil does not exist"):
        load(tmp_path / "empty")


def test_referenced_weights_reads_the_text_as_the_lexer_does():
    text = (
        '// x = BLOBFILE(path = string("@model_path/weights/commented.bin"), offset = uint64(64))\n'
        'a = const()[name = string("BLOBFILE(path = string(\\"@model_path/weights/in_string.bin\\")")];\n'
        'b = tensor<fp16, [2]>(BLOBFILE(offset = uint64(64), path = string("@model_path/weights/b.bin")));\n'
        'c = tensor<fp16, [2]>(BLOBFILE(path = string("@model_path/weights/a\\"q.bin"), offset = uint64(128)));\n'
        'd = tensor<fp16, [2]>(BLOBFILE(path = string("@model_path/weights/b.bin"), offset = uint64(192)));\n'
    )
    assert referenced_weights(text) == ["@model_path/weights/b.bin", '@model_path/weights/a"q.bin']


# -- writing -------------------------------------------------------------------------------------
def test_save_writes_a_fresh_directory_with_ordinary_permissions(tmp_path):
    model = conv_model()
    root = model.save(tmp_path / "a" / "b")
    assert sorted(p.name for p in root.iterdir()) == ["model.mil", "weights"]
    assert load(root) == model
    mask = os.umask(0)
    os.umask(mask)
    assert (root.stat().st_mode & 0o777) == 0o777 & ~mask
    assert [p.name for p in tmp_path.joinpath("a").iterdir()] == ["b"]  # no staging directory left


def test_save_into_an_empty_directory_needs_no_overwrite(tmp_path):
    (tmp_path / "m").mkdir()
    conv_model().save(tmp_path / "m")
    assert (tmp_path / "m" / "model.mil").is_file()


def test_save_refuses_a_non_empty_directory_unless_overwrite(model_dir):
    (model_dir / "weights" / "stale.bin").write_bytes(b"old")
    before = (model_dir / "model.mil").read_text()
    other = MilModel("program(1.3)\n{\n}\n")
    with pytest.raises(WeightPathError, match="already exists and is not empty; pass overwrite=True"):
        other.save(model_dir)
    assert (model_dir / "model.mil").read_text() == before and (model_dir / "weights" / "stale.bin").exists()
    other.save(model_dir, overwrite=True)
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.mil"]  # replaced, stale files gone
    assert (model_dir / "model.mil").read_text() == other.text


def test_overwrite_refuses_a_directory_holding_files_anekit_did_not_write(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(WeightPathError, match="holds thesis.tex, which anekit did not write there"):
        conv_model().save(home, overwrite=True)
    assert (home / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("where", ["model.mil", "weights", "weights/w.bin"])
def test_pre_placed_symlinks_are_never_written_through(model_dir, tmp_path, where):
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    victim = victim_dir / "w.bin" if where == "weights" else victim_dir / "file"
    victim.write_bytes(b"precious")
    link = model_dir / where
    if where == "weights":
        for f in link.iterdir():
            f.unlink()
        link.rmdir()
        link.symlink_to(victim_dir, target_is_directory=True)
    else:
        link.unlink()
        link.symlink_to(victim)
    with pytest.raises(WeightPathError, match="not empty"):
        conv_model().save(model_dir)
    conv_model().save(model_dir, overwrite=True)
    assert victim.read_bytes() == b"precious" and sorted(p.name for p in victim_dir.iterdir()) == [
        victim.name
    ]
    assert not (model_dir / where).is_symlink()
    assert load(model_dir) == conv_model()


def test_a_target_that_is_a_symlink_or_a_file_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    for overwrite in (False, True):
        with pytest.raises(WeightPathError, match="is a symbolic link"):
            conv_model().save(tmp_path / "link", overwrite=overwrite)
    assert list(real.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(WeightPathError, match="exists and is not a directory"):
        conv_model().save(tmp_path / "file", overwrite=True)
    assert (tmp_path / "file").read_text() == "x"


def test_a_failed_save_leaves_the_old_directory_intact_and_no_debris(model_dir, monkeypatch):
    import anekit.mil.model as model_module

    before = {p.relative_to(model_dir): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    calls = []

    def failing_write(root, rel, data):
        calls.append(rel)
        if rel == "model.mil":
            raise OSError(28, "No space left on device")
        return real_write(root, rel, data)

    real_write = model_module.write_new_file
    monkeypatch.setattr(model_module, "write_new_file", failing_write)
    with pytest.raises(WeightPathError, match="cannot write model directory .*: No space left on device"):
        conv_model().save(model_dir, overwrite=True)
    assert calls == ["weights/w.bin", "model.mil"]
    after = {p.relative_to(model_dir): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["model"]


def test_two_spellings_of_one_weight_file_write_it_once(tmp_path):
    blob = write_blob(np.ones(4, np.float16))
    model = MilModel(
        "program(1.3)\n{\n}\n", {"@model_path/weights/w.bin": blob, "@model_path/weights/./w.bin": blob}
    )
    root = model.save(tmp_path / "m")
    assert [p.name for p in (root / "weights").iterdir()] == ["w.bin"]


def test_scanning_for_references_stays_linear_on_unclosed_blobfiles():
    import time

    text = "BLOBFILE ( " * 40_000  # 40,000 unclosed: a quadratic scan takes minutes, a linear one < 1 s
    start = time.perf_counter()
    assert referenced_weights(text) == []
    assert time.perf_counter() - start < 10
