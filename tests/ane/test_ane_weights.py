"""The weights dictionary (§1.3) and the compiler's temp directory (§1.4)."""

from __future__ import annotations

import numpy as np
import pytest

from anekit.backends.ane.weights import model_dir, populate_model_dir, remove_model_dir, weights_entries
from anekit.mil import WeightPathError, ct, dumps, mb, types


def test_entries_are_offset_zero_and_whole_files():
    w = {"@model_path/weights/wq.bin": b"\x01" * 192, "@model_path/weights/mask.bin": b"\x02\x03"}
    entries = weights_entries(w)
    assert entries == {
        "@model_path/weights/wq.bin": (0, b"\x01" * 192),
        "@model_path/weights/mask.bin": (0, b"\x02\x03"),
    }


def test_no_weights_give_an_empty_dict_not_none():
    assert weights_entries({}) == {}


@pytest.mark.parametrize(
    "path",
    ["weights/w.bin", "@model_path/../evil.bin", "@model_path//etc/passwd", "@model_path/", "/abs/w.bin"],
)
def test_paths_outside_the_model_dir_are_refused(path):
    with pytest.raises(WeightPathError):
        weights_entries({path: b"x"})


def test_weight_data_must_be_bytes():
    with pytest.raises(TypeError, match="must be bytes"):
        weights_entries({"@model_path/weights/w.bin": [1, 2, 3]})


def test_model_dir_is_temp_root_plus_hex_id(tmp_path):
    assert model_dir(tmp_path, "0a1b2c") == tmp_path / "0a1b2c"
    for bad in ("", ".", "..", "a/b", "..\\x", "a\0b"):
        with pytest.raises(ValueError, match="not a plain directory name"):
            model_dir(tmp_path, bad)


def test_populate_writes_model_mil_and_stripped_weight_paths(tmp_path):
    text = b"program(1.3)\n{...}\n"
    w = {"@model_path/weights/wq.bin": b"AB" * 40, "@model_path/weights/sub/k.bin": b"\x00\xff"}
    root = tmp_path / "abc123"
    written = populate_model_dir(root, text, w)
    assert (root / "model.mil").read_bytes() == text
    assert (root / "weights" / "wq.bin").read_bytes() == b"AB" * 40
    assert (root / "weights" / "sub" / "k.bin").read_bytes() == b"\x00\xff"
    assert sorted(p.relative_to(root).as_posix() for p in written) == [
        "model.mil",
        "weights/sub/k.bin",
        "weights/wq.bin",
    ]
    remove_model_dir(root)
    assert not root.exists()
    remove_model_dir(root)  # already gone: not an error


def test_populate_without_weights_still_makes_weights_dir(tmp_path):
    populate_model_dir(tmp_path / "h", b"t", {})
    assert (tmp_path / "h" / "weights").is_dir()
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["model.mil", "weights"]


def test_a_printed_program_populates_files_its_text_references(tmp_path):
    w = np.ones((32, 32, 1, 1), np.float16)

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 32, 1, 32), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.conv(x=x, weight=mb.const(val=w, name="w"), name="y")

    model = dumps(prog)
    populate_model_dir(tmp_path / "m", model.text.encode(), model.weights)
    for path in model.weights:
        assert f'"{path}"' in model.text  # the key is the exact BLOBFILE path of the text
        rel = path.removeprefix("@model_path/")
        assert (tmp_path / "m" / rel).read_bytes() == model.weights[path]
