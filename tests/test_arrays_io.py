"""`anekit.arrays_io`: .npy/.npz files are checked before anything is allocated; every problem is an
ArrayFileError naming the file, never a numpy/zipfile exception or a huge allocation."""

from __future__ import annotations

import io
import os
import tracemalloc
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npy_format

from anekit.arrays_io import ArrayFileError, read_npy, read_npz
from anekit.errors import AnekitError


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def forged_npy(shape, descr="<f4", data=b"") -> bytes:
    """An .npy header claiming `shape` of `descr`, followed by `data` (numpy would allocate the shape)."""
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def test_error_class_is_an_anekit_error_and_a_value_error():
    assert issubclass(ArrayFileError, AnekitError) and issubclass(ArrayFileError, ValueError)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float16).reshape(3, 4),
        np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
        np.array(3.5, dtype=np.float64),  # 0-d
        np.zeros((0, 5), dtype=np.uint8),
        np.array([True, False]),
        np.array([1 + 2j], dtype=np.complex64),
        np.arange(6, dtype=">f4").reshape(2, 3),  # big-endian: returned in native order, same values
    ],
    ids=["fp16", "fortran", "0-d", "empty", "bool", "complex", "big-endian"],
)
def test_round_trips_every_numeric_array(tmp_path, array):
    np.save(tmp_path / "a.npy", array)
    got = read_npy(tmp_path / "a.npy")
    assert got.shape == array.shape and got.dtype == array.dtype.newbyteorder("=")
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, array)
    np.savez(tmp_path / "a.npz", first=array, second=np.ones(3, np.float32))
    both = read_npz(tmp_path / "a.npz")
    assert list(both) == ["first", "second"]
    np.testing.assert_array_equal(both["first"], array)
    np.savez_compressed(tmp_path / "c.npz", first=array)
    np.testing.assert_array_equal(read_npz(tmp_path / "c.npz")["first"], array)


def test_a_header_claiming_2_to_the_40_elements_is_refused_before_allocation(tmp_path):
    (tmp_path / "huge.npy").write_bytes(forged_npy((1 << 40,), "|u1", b"\0" * 64))
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("x.npy", forged_npy((1 << 40,), "|u1", b"\0" * 64))
    tracemalloc.start()
    try:
        with pytest.raises(ArrayFileError, match=r"huge.npy: the header claims shape \(1099511627776,\)"):
            read_npy(tmp_path / "huge.npy")
        with pytest.raises(ArrayFileError, match=r"huge.npz, member 'x.npy': the header claims"):
            read_npz(tmp_path / "huge.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing near the claimed size was allocated


def test_a_header_within_the_limit_but_larger_than_the_member_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.npz", "w") as z:
        z.writestr("x.npy", forged_npy((1000, 1000), "<f4", b"\0" * 400))
    with pytest.raises(
        ArrayFileError, match=r"4000000 bytes of data\) but 400 bytes follow it: the file is truncated"
    ):
        read_npz(tmp_path / "a.npz")


def test_the_size_limit_is_a_parameter_and_counts_the_whole_npz(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros(100, np.float32), y=np.zeros(100, np.float32))
    assert set(read_npz(tmp_path / "a.npz", max_bytes=800)) == {"x", "y"}
    with pytest.raises(
        ArrayFileError,
        match=r"member 'y.npy'.*400 bytes, more than the 799-byte limit for the whole archive \(400 bytes used",
    ):
        read_npz(tmp_path / "a.npz", max_bytes=799)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not an .npy array"),
        (b"\x80\x04K\x01.", "not an .npy array"),  # a pickle
        (b"\x93NUMPY\x03\x00" + b"\0" * 60, "format version 3.0 is not supported"),
        (b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4',", "damaged .npy header"),
        (forged_npy((3,), "|O", b"\0" * 24), "only numeric arrays"),
        (forged_npy((2,), "<U3", b"\0" * 24), "only numeric arrays"),
        (forged_npy((2,), [("a", "<f4")], b"\0" * 8), "only numeric arrays"),
        (forged_npy((4,), "<f4", b"\0" * 15), "truncated"),
        (forged_npy((4,), "<f4", b"\0" * 17), "followed by 1 extra bytes"),
        (forged_npy((-4,), "<f4"), "negative dimension"),
        (forged_npy((1 << 63, 0), "<f4"), "too large for any array"),
    ],
    ids=[
        "empty",
        "pickle",
        "v3",
        "cut-header",
        "object",
        "unicode",
        "structured",
        "short",
        "long",
        "neg",
        "intp",
    ],
)
def test_damaged_npy_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.npy"
    path.write_bytes(content)
    with pytest.raises(ArrayFileError, match=message) as info:
        read_npy(path)
    assert str(path) in str(info.value)
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as z:
        z.writestr("x.npy", content)
    with pytest.raises(ArrayFileError, match=message) as info:
        read_npz(tmp_path / "bad.npz")
    assert "member 'x.npy'" in str(info.value)


def test_damaged_npz_archives_are_clear_errors(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.arange(100, dtype=np.float32))
    data = good.read_bytes()
    cases = {
        "empty.npz": (b"", "the file is empty"),
        "truncated.npz": (data[: len(data) // 2], "not a readable .npz"),
        "garbage.npz": (b"PK\x03\x04" + b"\xff" * 40, "not a readable .npz"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ArrayFileError, match=message):
            read_npz(tmp_path / name)
    # a flipped data byte: the zip CRC catches it while the member is read
    flipped = bytearray(data)
    flipped[data.index(b"\x93NUMPY") + 200] ^= 0xFF
    (tmp_path / "crc.npz").write_bytes(bytes(flipped))
    with pytest.raises(ArrayFileError, match="member 'x.npy': cannot be read.*CRC"):
        read_npz(tmp_path / "crc.npz")
    with zipfile.ZipFile(tmp_path / "other.npz", "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(ArrayFileError, match="'notes.txt': is not an .npy array"):
        read_npz(tmp_path / "other.npz")
    with zipfile.ZipFile(tmp_path / "empty-archive.npz", "w"):
        pass
    assert read_npz(tmp_path / "empty-archive.npz") == {}  # a valid archive with no arrays


def test_duplicate_member_names_are_refused(tmp_path):
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        z.writestr("x.npy", npy_bytes(np.zeros(2)))
        z.writestr("x.npy", npy_bytes(np.ones(2)))
    with pytest.raises(ArrayFileError, match="two arrays named 'x'"):
        read_npz(tmp_path / "d.npz")


def test_missing_files_directories_and_fifos_are_refused_without_blocking(tmp_path):
    with pytest.raises(ArrayFileError, match="no such file"):
        read_npy(tmp_path / "nothing.npy")
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ArrayFileError, match="is a directory"):
        read_npz(tmp_path / "dir.npz")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.npy")  # opening a fifo for reading blocks until a writer comes
        with pytest.raises(ArrayFileError, match="not a regular file"):
            read_npy(tmp_path / "fifo.npy")
