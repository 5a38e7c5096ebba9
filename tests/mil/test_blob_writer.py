"""The blob writer refuses what it cannot store exactly, naming the tensor: overflow of finite values,
integers out of range, 0-d arrays included (an IndexError escaped for those before), ragged input,
bad dtype arguments; a refused tensor leaves the writer as it was. Expected bytes by `struct`."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest

from anekit.errors import AnekitError
from anekit.mil.blob import BlobError, BlobWriter, read_blob, write_blob


def test_blob_error_is_an_anekit_error():
    assert issubclass(BlobError, AnekitError)


@pytest.mark.parametrize(
    "value, dtype, shown",
    [
        (np.array(70000.0), "fp16", "70000.0"),  # 0-d: IndexError before
        (np.array(70000.0, np.float32), "fp16", "70000.0"),
        (np.float64(-1e6), "fp16", "-1000000.0"),
        (np.array(1e300), "fp32", "1e+300"),
        (np.array([1.0, 2.0, 65520.0]), "fp16", "65520.0"),  # rounds to inf in fp16
        (np.array([[0, 1 << 40]]), "fp16", "1099511627776"),  # an integer that does not fit fp16
    ],
)
def test_float_overflow_of_finite_values_names_the_tensor(value, dtype, shown):
    with pytest.raises(
        BlobError, match=rf"tensor 'w': value {re.escape(shown)} at index \[.*\] is out of range for {dtype}"
    ):
        write_blob(value, dtype, name="w")
    with pytest.raises(BlobError, match=r"tensor #0 of the blob file: value"):
        write_blob(value, dtype)


def test_the_index_of_the_first_overflowing_value_is_reported():
    a = np.zeros((2, 3))
    a[1, 2] = 1e5
    with pytest.raises(BlobError, match=r"value 100000.0 at index \[1, 2\]"):
        write_blob(a, "fp16", name="w")


@pytest.mark.parametrize(
    "value, dtype, bounds",
    [
        (np.array(300), "uint8", r"\[0, 255\]"),
        (np.array(-129), "int8", r"\[-128, 127\]"),
        (np.array([1 << 31]), "int32", r"\[-2147483648, 2147483647\]"),
        (np.array([-1]), "uint32", r"\[0, 4294967295\]"),
        (np.array([np.iinfo(np.uint64).max], np.uint64), "int32", r"\[-2147483648"),
        (np.array(8, np.int8), "int4", r"\[-8, 7\]"),  # 0-d sub-byte
        (np.array([0, 64], np.uint8), "uint6", r"\[0, 63\]"),
    ],
)
def test_integers_out_of_range_name_the_tensor(value, dtype, bounds):
    with pytest.raises(
        BlobError, match=rf"tensor 'q': value -?\d+ at index \[.*\] is out of range for {dtype} \({bounds}"
    ):
        write_blob(value, dtype, name="q")


def test_explicit_infinities_and_nans_are_stored_not_refused():
    data = write_blob(np.array([np.inf, -np.inf, np.nan]), "fp16", name="w")
    assert struct.unpack_from("<3e", data, 128)[:2] == (float("inf"), float("-inf"))
    assert np.isnan(struct.unpack_from("<3e", data, 128)[2])


def test_a_0d_array_is_stored_as_one_element():
    data = write_blob(np.array(-2.5, np.float32), name="s")
    assert struct.unpack_from("<IIQQQ", data, 64) == (0xDEADBEEF, 2, 4, 128, 0)
    assert struct.unpack_from("<f", data, 128) == (-2.5,)
    assert read_blob(data, 64, "fp32", ()).shape == ()
    with pytest.raises(BlobError, match="sizeInBytes"):
        read_blob(data, 64, "fp32", (2,))  # the reader still checks the declaration


@pytest.mark.parametrize(
    "value, dtype, message",
    [
        ([[1.0, 2.0], [3.0]], "fp16", "is not a rectangular numeric array"),
        (np.array([1.0]), 16, "dtype must be a MIL dtype name"),
        (np.array([1.0]), "float16", "tensor 'x': "),
        (np.array([1.0]), "bf16", "tensor 'x': cannot write dtype 'bf16'"),
        (np.array([1.5]), "int8", "tensor 'x': cannot store a float64 array as int8"),
        (np.array(["a"]), "fp16", "tensor 'x': cannot store a <U1 array as fp16"),
        (np.array([True]), None, "tensor 'x': a bool array has no blob dtype of its own"),
    ],
)
def test_bad_arguments_are_blob_errors_naming_the_tensor(value, dtype, message):
    with pytest.raises(BlobError, match=message):
        BlobWriter().add(value, dtype, name="x")


def test_a_refused_tensor_leaves_the_writer_unchanged():
    w = BlobWriter()
    w.add(np.ones(3, np.float16))
    before = w.to_bytes()
    with pytest.raises(BlobError, match="tensor #1 of the blob file"):
        w.add(np.array([1e9]), "fp16")
    assert w.count == 1 and w.to_bytes() == before
    offset = w.add(np.full(2, 7, np.int8), name="after")
    assert offset == 192 and struct.unpack_from("<2b", w.to_bytes(), 256) == (7, 7)
