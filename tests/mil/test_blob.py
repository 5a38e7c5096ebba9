"""The weight blob codec (`anekit.mil.blob`) against the format in mil-text.md §2.

Expected bytes are built by hand here with `struct`, never with the code under test, so a
writer bug cannot hide behind a reader with the same bug.
"""

from __future__ import annotations

import struct
import sys
import tracemalloc
import warnings
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from anekit.mil.blob import (
    BlobError,
    BlobInfo,
    BlobWarning,
    BlobWriter,
    list_blobs,
    read_blob,
    write_blob,
)

LITTLE = sys.byteorder == "little"

WHOLE_BYTE = ["fp16", "fp32", "int8", "uint8", "int16", "uint16", "int32", "uint32"]
SUB_BYTE = {"int4": 4, "uint1": 1, "uint2": 2, "uint3": 3, "uint4": 4, "uint6": 6}
NUMPY = {
    "fp16": np.float16,
    "fp32": np.float32,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int4": np.int8,
    "uint1": np.uint8,
    "uint2": np.uint8,
    "uint3": np.uint8,
    "uint4": np.uint8,
    "uint6": np.uint8,
}
CODES = {  # mil-text.md §2.2, written out again on purpose
    "fp16": 1, "fp32": 2, "uint8": 3, "int8": 4, "int16": 6, "uint16": 7, "int4": 8, "uint1": 9,
    "uint2": 10, "uint4": 11, "uint3": 12, "uint6": 13, "int32": 14, "uint32": 15,
}  # fmt: skip


def header(count: int, version: int = 2) -> bytes:
    return struct.pack("<II", count, version) + bytes(56)


def metadata(code: int, size: int, data_offset: int, padding_bits: int = 0) -> bytes:
    return struct.pack("<IIQQQ", 0xDEADBEEF, code, size, data_offset, padding_bits) + bytes(32)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (so NaNs and -0.0 compare exactly)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# The worked example of mil-text.md §2.3: an fp16 [2, 3] tensor, then an fp32 [4] tensor.
EX_A = np.array([[1.0, -2.0, 0.5], [65504.0, -0.0, 3.25]], dtype=np.float16)
EX_B = np.array([1.5, -1e30, 7.0, 0.125], dtype=np.float32)


def example_bytes() -> bytes:
    """The worked example file, by hand: header, meta@0x40, data@0x80, meta@0xC0, data@0x100."""
    data_a = struct.pack("<6e", *EX_A.ravel().tolist())
    data_b = struct.pack("<4f", *EX_B.tolist())
    out = header(2)  # 0x000
    out += metadata(1, 12, 128)  # 0x040
    out += data_a + bytes(52)  # 0x080: 12 data bytes, 52 zero bytes of padding
    out += metadata(2, 16, 256)  # 0x0C0
    out += data_b  # 0x100
    assert len(out) == 0x110
    return out


# --------------------------------------------------------------------------------------------
# Layout


def test_worked_example_is_byte_exact():
    w = BlobWriter()
    assert w.count == 0
    assert w.add(EX_A) == 64
    assert w.add(EX_B) == 192
    assert w.count == 2
    got = w.to_bytes()
    want = example_bytes()
    assert got == want
    # spot checks of the dump in mil-text.md §2.3
    assert got[0x000:0x008] == bytes([2, 0, 0, 0, 2, 0, 0, 0])
    assert got[0x040:0x048] == bytes([0xEF, 0xBE, 0xAD, 0xDE, 1, 0, 0, 0])
    assert got[0x048] == 0x0C and got[0x050] == 0x80
    assert got[0x0C0:0x0C8] == bytes([0xEF, 0xBE, 0xAD, 0xDE, 2, 0, 0, 0])
    assert got[0x0C8] == 0x10 and got[0x0D0:0x0D2] == bytes([0x00, 0x01])
    assert got[0x08C:0x0C0] == bytes(52)


def test_worked_example_reads_back():
    data = example_bytes()
    assert same(read_blob(data, 64, "fp16", (2, 3)), EX_A)
    assert same(read_blob(data, 192, "fp32", (4,)), EX_B)
    assert list_blobs(data) == [BlobInfo(64, "fp16", 12, 128, 0), BlobInfo(192, "fp32", 16, 256, 0)]


def test_fluidaudio_joint_decision_offsets():
    # mil-text.md §2.3: FluidAudio joint_decision weights, all fp16.
    shapes = [(640, 512), (640,), (640, 640), (640,), (1027, 640), (1027,)]
    w = BlobWriter()
    offsets = [w.add(np.zeros(s, np.float16)) for s in shapes]
    assert offsets == [64, 655488, 656832, 1476096, 1477440, 2792064]
    data = w.to_bytes()
    assert [b.offset for b in list_blobs(data)] == offsets
    # each step is 64 (metadata) + data bytes, rounded up to 64
    for (prev, nxt), shape in zip(pairwise(offsets), shapes[:-1], strict=True):
        assert nxt == -(-(prev + 64 + 2 * int(np.prod(shape))) // 64) * 64


def test_write_blob_is_a_one_tensor_file_at_offset_64():
    x = np.arange(5, dtype=np.float16)
    data = write_blob(x)
    assert data == header(1) + metadata(1, 10, 128) + x.astype("<f2").tobytes()
    assert same(read_blob(data, 64, "fp16", (5,)), x)


def test_empty_writer_is_a_bare_header():
    data = BlobWriter().to_bytes()
    assert data == header(0)
    assert list_blobs(data) == []
    with pytest.raises(BlobError, match=r"count \(byte 0\) is 0"):
        read_blob(data, 64, "fp16", (1,))


@pytest.mark.parametrize(
    ("array", "name"),
    [
        (np.zeros(3, np.float16), "fp16"),
        (np.zeros(3, np.float32), "fp32"),
        (np.zeros(3, np.int8), "int8"),
        (np.zeros(3, np.uint8), "uint8"),
        (np.zeros(3, np.int16), "int16"),
        (np.zeros(3, np.uint16), "uint16"),
        (np.zeros(3, np.int32), "int32"),
        (np.zeros(3, np.uint32), "uint32"),
        (np.zeros(3, ">f2"), "fp16"),
    ],
)
def test_natural_dtype(array, name):
    assert list_blobs(write_blob(array))[0].dtype == name


def test_big_endian_input_is_written_little_endian():
    x = np.array([1.0, 2.0], dtype=">f4")
    assert write_blob(x)[128:] == struct.pack("<2f", 1.0, 2.0)


def test_data_is_64_aligned_and_padding_is_zero():
    w = BlobWriter()
    for n in [1, 3, 63, 64, 65, 0, 7]:
        assert w.add(np.full(n, 0x55, np.uint8)) % 64 == 0
    data = w.to_bytes()
    infos = list_blobs(data)
    assert [i.size_bytes for i in infos] == [1, 3, 63, 64, 65, 0, 7]
    for info, nxt in pairwise(infos):
        assert info.data_offset == info.offset + 64
        assert data[info.data_offset + info.size_bytes : nxt.offset] == bytes(
            nxt.offset - info.data_offset - info.size_bytes
        )
    assert len(data) == infos[-1].data_offset + 7  # the file is not padded at its end (§2.3)


def test_scalar_and_empty_tensors():
    w = BlobWriter()
    a = w.add(np.float32(2.5))
    b = w.add(np.zeros((0, 4), np.float16))
    c = w.add(np.zeros((0,), np.uint8), "uint3")
    data = w.to_bytes()
    assert same(read_blob(data, a, "fp32", ()), np.array(2.5, np.float32))
    assert same(read_blob(data, b, "fp16", (0, 4)), np.zeros((0, 4), np.float16))
    assert same(read_blob(data, c, "uint3", (0,)), np.zeros((0,), np.uint8))


# --------------------------------------------------------------------------------------------
# Sub-byte packing (mil-text.md §2.5), against hand-written bytes


def test_int4_packing_by_hand():
    x = np.array([-8, 7, -1, 3, 0], np.int8)
    data = write_blob(x, "int4")
    # LSB-first nibbles: (-8 -> 0x8) | (7 -> 0x7) << 4 = 0x78; (-1 -> 0xF) | 3 << 4 = 0x3F; 0, 4 unused bits
    assert data == header(1) + metadata(8, 3, 128, 4) + bytes([0x78, 0x3F, 0x00])
    assert same(read_blob(data, 64, "int4", (5,)), x)


def test_uint3_packing_spans_bytes():
    x = np.array([1, 2, 3, 4, 5, 6, 7], np.uint8)
    data = write_blob(x, "uint3")
    # bit stream, element i at bits 3i..3i+2, LSB first:
    #   byte 0 = 1 | 2 << 3 | (3 & 0b11) << 6                    = 0xD1
    #   byte 1 = 3 >> 2 | 4 << 1 | 5 << 4 | (6 & 1) << 7        = 0x58
    #   byte 2 = 6 >> 1 | 7 << 2                                 = 0x1F   (21 bits used, 3 padding)
    assert data == header(1) + metadata(12, 3, 128, 3) + bytes([0xD1, 0x58, 0x1F])
    assert same(read_blob(data, 64, "uint3", (7,)), x)


def test_uint6_and_uint1_packing_by_hand():
    x6 = np.array([0b101010, 0b111111, 0b000001], np.uint8)
    # 0b101010 | (0b111111 & 0b11) << 6 = 0xEA; 0b1111 | 1 << 4 = 0x1F; 0, 6 unused bits
    assert write_blob(x6, "uint6")[64:] == metadata(13, 3, 128, 6) + bytes([0xEA, 0x1F, 0x00])
    x1 = np.array([1, 0, 0, 1, 1, 1, 0, 1, 1], np.uint8)
    assert write_blob(x1, "uint1")[64:] == metadata(9, 2, 128, 7) + bytes([0b10111001, 0b1])


def test_sub_byte_unused_bits_are_ignored_when_reading():
    data = bytearray(write_blob(np.array([1, 2, 3], np.uint8), "uint2"))
    data[128] |= 0b11000000  # the 2 padding bits of the only byte
    assert same(read_blob(bytes(data), 64, "uint2", (3,)), np.array([1, 2, 3], np.uint8))


# --------------------------------------------------------------------------------------------
# Round trips (hypothesis)


def _values(name: str) -> st.SearchStrategy:
    if name == "fp16":
        return st.floats(width=16)
    if name == "fp32":
        return st.floats(width=32)
    if name in SUB_BYTE:
        bits = SUB_BYTE[name]
        if name.startswith("int"):
            return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        return st.integers(0, (1 << bits) - 1)
    info = np.iinfo(NUMPY[name])
    return st.integers(int(info.min), int(info.max))


@st.composite
def tensors(draw) -> tuple[str, np.ndarray]:
    name = draw(st.sampled_from(WHOLE_BYTE + list(SUB_BYTE)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9))
    arr = draw(hnp.arrays(NUMPY[name], shape, elements=_values(name)))
    return name, arr


_NAMES = st.sampled_from(WHOLE_BYTE + list(SUB_BYTE))
_QUICK_SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)
_SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def quick_tensors(draw) -> tuple[str, np.ndarray]:
    """Like `tensors`, with the values from a seeded generator: the fuzz is about the headers, and
    drawing each element through hypothesis would dominate its run time."""
    name = draw(_NAMES)
    shape = draw(_QUICK_SHAPES)
    rng = np.random.default_rng(draw(_SEEDS))
    dt = np.dtype(NUMPY[name])
    if name in SUB_BYTE:
        bits = SUB_BYTE[name]
        lo = -(1 << (bits - 1)) if name.startswith("int") else 0
        return name, rng.integers(lo, lo + (1 << bits), shape).astype(dt)
    raw = rng.integers(0, 256, (*shape, dt.itemsize), dtype=np.uint8)  # any bit pattern, NaNs too
    return name, raw.view(dt).reshape(shape)


_TENSOR_LISTS = st.lists(quick_tensors(), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(st.lists(tensors(), min_size=1, max_size=5))
def test_round_trip_several_tensors(items):
    w = BlobWriter()
    offsets = [w.add(arr, name) for name, arr in items]
    data = w.to_bytes()
    assert struct.unpack_from("<II", data) == (len(items), 2)
    infos = list_blobs(data, name="w.bin")
    assert [i.offset for i in infos] == offsets
    for (name, arr), info in zip(items, infos, strict=True):
        assert info.dtype == name
        assert struct.unpack_from("<I", data, info.offset + 4)[0] == CODES[name]
        bits = SUB_BYTE.get(name, np.dtype(NUMPY[name]).itemsize * 8)
        assert info.size_bytes == -(-arr.size * bits // 8)
        assert info.padding_bits == info.size_bytes * 8 - arr.size * bits
        got = read_blob(data, info.offset, name, arr.shape, name="w.bin")
        assert same(got, arr)
        assert got.flags.writeable and got.flags.c_contiguous and got.flags.owndata


@pytest.mark.parametrize("name", WHOLE_BYTE + list(SUB_BYTE))
def test_round_trip_every_dtype_full_range(name):
    if name in SUB_BYTE:
        bits = SUB_BYTE[name]
        lo = -(1 << (bits - 1)) if name.startswith("int") else 0
        arr = np.arange(lo, lo + (1 << bits), dtype=NUMPY[name])
        arr = np.concatenate([arr, arr[::-1], arr[1::3]]).reshape(1, -1)
    elif name.startswith("fp"):
        bits = "<u2" if name == "fp16" else "<u4"
        pattern = np.random.default_rng(0).integers(0, 2**16 if name == "fp16" else 2**32, 1000)
        arr = pattern.astype(bits).view(NUMPY[name]).reshape(10, 100)  # every kind of bit pattern
    else:
        info = np.iinfo(NUMPY[name])
        arr = np.array([info.min, -1 if info.min else 0, 0, 1, info.max], NUMPY[name])
    data = write_blob(arr, name)
    assert struct.unpack_from("<II", data, 64) == (0xDEADBEEF, CODES[name])
    assert same(read_blob(data, 64, name, arr.shape), arr)
    # the raw bytes of whole-byte types are the little-endian array
    if name not in SUB_BYTE:
        assert data[128:] == arr.astype(np.dtype(NUMPY[name]).newbyteorder("<")).tobytes()


def test_reader_accepts_bytearray_and_memoryview():
    data = example_bytes()
    for buf in (bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        assert same(read_blob(buf, 192, "fp32", [4]), EX_B)
        assert len(list_blobs(buf)) == 2


def test_result_does_not_alias_the_file():
    data = bytearray(example_bytes())
    got = read_blob(data, 64, "fp16", (2, 3))
    got[0, 0] = 9
    assert same(read_blob(data, 64, "fp16", (2, 3)), EX_A)
    assert not np.shares_memory(got, np.frombuffer(data, np.uint8))


def test_large_read_copies_once():
    n = 8 * 1024 * 1024  # 16 MB of fp16
    data = write_blob(np.ones(n, np.float16))
    tracemalloc.start()
    try:
        got = read_blob(data, 64, "fp16", (n // 1024, 1024))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.shape == (8192, 1024) and got[-1, -1] == 1
    assert peak < 1.25 * 2 * n  # the result, and not a second copy


# --------------------------------------------------------------------------------------------
# Writer errors


@pytest.mark.parametrize(
    ("array", "name", "match"),
    [
        (np.array([-9], np.int8), "int4", r"-9 at index \[0\] is out of range for int4 \(\[-8, 7\]\)"),
        (np.array([8], np.int8), "int4", "out of range for int4"),
        (np.array([0, 8], np.uint8), "uint3", r"8 at index \[1\] is out of range for uint3 \(\[0, 7\]\)"),
        (np.array([2], np.uint8), "uint1", "out of range for uint1"),
        (np.array([64], np.uint8), "uint6", "out of range for uint6"),
        (np.array([-1], np.int8), "uint4", "out of range for uint4"),
        (np.array([[0, 300]], np.int16), "int8", r"300 at index \[0, 1\] is out of range for int8"),
        (np.array([-1], np.int32), "uint32", "out of range for uint32"),
        (np.array([2**40]), "int32", "out of range for int32"),
        (np.array([70000.0]), "fp16", "out of range for fp16 .max 65504"),
        (np.array([70000]), "fp16", "out of range for fp16"),
        (np.array([1.0]), "int8", "integer values are needed"),
        (np.array([1.0], np.float32), "uint4", "integer values are needed"),
        (np.array(["a"]), "fp16", "cannot store"),
        (np.array([1.0]), None, "float64 array has no blob dtype"),
        (np.array([1]), None, "int64 array has no blob dtype"),
        (np.array([True]), None, "bool array has no blob dtype"),
        (np.array([1.0], np.float32), "bf16", "NumPy has no bf16"),
        (np.array([1.0], np.float32), "fp64", "blob file stores only"),
        (np.array([1.0], np.float32), "float16", "unknown MIL dtype"),
    ],
)
def test_writer_rejects(array, name, match):
    w = BlobWriter()
    with pytest.raises(BlobError, match=match):
        w.add(array, name)
    assert w.count == 0 and w.to_bytes() == header(0)


def test_writer_converts_when_values_fit():
    data = write_blob(np.array([1.5, np.inf, np.nan, 65504.0]), "fp16")
    got = read_blob(data, 64, "fp16", (4,))
    assert got[0] == 1.5 and np.isposinf(got[1]) and np.isnan(got[2]) and got[3] == 65504
    assert same(
        read_blob(write_blob(np.array([-8, 7]), "int4"), 64, "int4", (2,)), np.array([-8, 7], np.int8)
    )
    assert same(
        read_blob(write_blob(np.array([True, False]), "uint1"), 64, "uint1", (2,)), np.array([1, 0], np.uint8)
    )


def test_writer_copies_its_input():
    x = np.zeros(4, np.float32)
    w = BlobWriter()
    w.add(x)
    x[:] = 1
    assert same(read_blob(w.to_bytes(), 64, "fp32", (4,)), np.zeros(4, np.float32))


def test_bf16_cannot_be_read():
    data = header(1) + metadata(5, 4, 128) + bytes(4)
    assert list_blobs(data)[0].dtype == "bf16"  # listing needs no NumPy type
    with pytest.raises(BlobError, match="NumPy has no bf16"):
        read_blob(data, 64, "bf16", (2,))


# --------------------------------------------------------------------------------------------
# Malformed files: each field corrupted in turn

NAME = "weights/w.bin"


def _patch(data: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


# (label, byte, struct format, value, which blob to read, message fragments)
CORRUPTIONS = [
    ("count zero", 0, "<I", 0, 64, ["count (byte 0) is 0", "at least 1"]),
    ("version 1", 4, "<I", 1, 64, ["version (byte 4) is 1, expected 2", "blob_v1"]),
    ("version 0", 4, "<I", 0, 192, ["version (byte 4) is 0, expected 2"]),
    ("version huge", 4, "<I", 0xFFFFFFFF, 64, ["version (byte 4) is 4294967295"]),
    ("sentinel A", 64, "<I", 0xDEADBEEE, 64, ["sentinel (byte 64) is 0xDEADBEEE, expected 0xDEADBEEF"]),
    ("sentinel B", 192, "<I", 0, 192, ["sentinel (byte 192) is 0x00000000"]),
    ("dtype unknown", 68, "<I", 99, 64, ["mil_dtype (byte 68) is 99", "1 fp16"]),
    ("dtype fp8", 196, "<I", 16, 192, ["mil_dtype (byte 196) is 16"]),
    ("dtype other", 68, "<I", 2, 64, ["mil_dtype (byte 68) is 2 (fp32), expected 1 (fp16)"]),
    ("dtype int", 196, "<I", 14, 192, ["mil_dtype (byte 196) is 14 (int32), expected 2 (fp32)"]),
    ("size smaller", 72, "<Q", 10, 64, ["sizeInBytes (byte 72) is 10, expected 12 for 6 fp16"]),
    ("size larger", 72, "<Q", 14, 64, ["sizeInBytes (byte 72) is 14, expected 12"]),
    ("size odd", 72, "<Q", 13, 64, ["sizeInBytes (byte 72) is 13, expected a multiple of 2"]),
    (
        "size huge",
        200,
        "<Q",
        2**63,
        192,
        ["runs past the end of the file", "sizeInBytes 9223372036854775808"],
    ),
    ("size maderix byte 10", 200, "<Q", 0x080000, 192, ["runs past the end of the file (272 bytes)"]),
    ("size past end", 200, "<Q", 20, 192, ["runs past the end of the file (272 bytes)"]),
    ("data offset zero", 80, "<Q", 0, 64, ["data offset (byte 80) is 0, expected 128", "always", "maderix"]),
    ("data offset later", 80, "<Q", 192, 64, ["data offset (byte 80) is 192, expected 128", "always puts"]),
    ("data offset high bit", 208, "<Q", 256 | 2**40, 192, ["data offset (byte 208)", "expected 256"]),
    ("data offset earlier", 208, "<Q", 128, 192, ["data offset (byte 208) is 128, expected 256"]),
]


@pytest.mark.parametrize(
    ("at", "fmt", "value", "offset", "fragments"),
    [c[1:] for c in CORRUPTIONS],
    ids=[c[0] for c in CORRUPTIONS],
)
def test_corrupted_field_is_an_error(at, fmt, value, offset, fragments):
    # a changed dtype or size can still describe a well-formed file; only the MIL declaration
    # passed to read_blob reveals it
    listing_fails = not any(
        f.startswith(("mil_dtype (byte 68) is 2", "mil_dtype (byte 196) is 14", "sizeInBytes (byte 72) is 1"))
        for f in fragments
    )
    data = _patch(example_bytes(), at, fmt, value)
    shape, dt = ((2, 3), "fp16") if offset == 64 else ((4,), "fp32")
    with pytest.raises(BlobError) as exc:
        read_blob(data, offset, dt, shape, name=NAME)
    msg = str(exc.value)
    assert msg.startswith(NAME + ": ")
    for fragment in fragments:
        assert fragment in msg
    if listing_fails:
        with pytest.raises(BlobError, match=NAME):
            list_blobs(data, name=NAME)


def test_count_mismatch_names_both_numbers():
    for count in (1, 3, 7):
        data = _patch(example_bytes(), 0, "<I", count)
        read_blob(data, 192, "fp32", (4,))  # a single read does not need the count
        with pytest.raises(BlobError, match=rf"count \(byte 0\) is {count}, expected 2, the number of blobs"):
            list_blobs(data, name=NAME)


@pytest.mark.parametrize(
    ("name", "n", "padding", "match"),
    [
        ("uint3", 7, 0, r"padding_size_in_bits \(byte 88\) is 0"),  # shape says 3, file says 0
        ("uint3", 7, 8, r"padding_size_in_bits \(byte 88\) is 8, expected a value below 8"),
        ("uint3", 7, 2, r"is 2, expected a value below 8 leaving a multiple of 3"),
        ("int4", 5, 0, r"padding_size_in_bits \(byte 88\) is 0, expected 4 for 5 int4"),
        ("uint1", 9, 2**63, r"padding_size_in_bits \(byte 88\) is 9223372036854775808"),
    ],
)
def test_sub_byte_padding_bits_are_checked(name, n, padding, match):
    data = _patch(write_blob(np.ones(n, np.uint8), name), 88, "<Q", padding)
    with pytest.raises(BlobError, match=match):
        read_blob(data, 64, name, (n,))


def test_sub_byte_size_is_ceil_of_bits():
    data = write_blob(np.ones(7, np.uint8), "uint3")
    with pytest.raises(BlobError, match=r"sizeInBytes \(byte 72\) is 3, expected 4 for 10 uint3"):
        read_blob(data, 64, "uint3", (10,))
    # 8 uint3 elements also fill exactly 3 bytes, but with 0 padding bits, not 3
    with pytest.raises(BlobError, match=r"padding_size_in_bits \(byte 88\) is 3, expected 0 for 8 uint3"):
        read_blob(data, 64, "uint3", (8,))


@pytest.mark.parametrize("at", [8, 16, 56, 96, 104, 120, 224, 248])
def test_nonzero_reserved_fields_warn_but_read(at):
    data = _patch(example_bytes(), at, "<Q", 0x0123456789ABCDEF)
    for meta, dt, shape, want in [(64, "fp16", (2, 3), EX_A), (192, "fp32", (4,), EX_B)]:
        if at < 64 or meta <= at < meta + 64:  # the storage header, or this blob's metadata
            with pytest.warns(BlobWarning, match=rf"reserved bytes {at - at % 64 + (8 if at < 64 else 32)}"):
                assert same(read_blob(data, meta, dt, shape), want)
        else:
            assert same(read_blob(data, meta, dt, shape), want)
    with pytest.warns(BlobWarning):
        assert list_blobs(data) == list_blobs(example_bytes())


def test_padding_bits_of_whole_byte_type_warn_as_reserved():
    # byte 24 of the metadata was reserved (uninitialised) before sub-byte types existed
    data = _patch(example_bytes(), 88, "<Q", 77)
    with pytest.warns(BlobWarning, match=r"padding_size_in_bits \(byte 88\) is 77 for fp16, expected 0"):
        assert same(read_blob(data, 64, "fp16", (2, 3)), EX_A)


def test_clean_file_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_blob(example_bytes(), 64, "fp16", (2, 3))
        list_blobs(example_bytes())


@pytest.mark.parametrize(
    ("offset", "match"),
    [
        (-1, "blob offset -1 is negative"),
        (-64, "negative"),
        (0, "blob offset 0 points into the 64-byte storage header"),
        (32, "points into the 64-byte storage header"),
        (272, r"blob offset 272 is beyond the end of the file \(272 bytes\)"),
        (10**12, "beyond the end"),
        (256, r"needs bytes 256..319 but the file is 272 bytes"),
        (128, r"sentinel \(byte 128\) is 0xC0003C00"),  # the fp16 data 1.0, -2.0
        (1.5, "is not an integer"),
        ("64", "is not an integer"),
    ],
)
def test_bad_offsets(offset, match):
    with pytest.raises(BlobError, match=match):
        read_blob(example_bytes(), offset, "fp16", (2, 3), name=NAME)


def test_misaligned_offset_warns():
    # metadata followed by its data at an unaligned place (maderix packs blobs at 64 + i*(64+size), §2.6)
    data = header(1) + bytes(8) + metadata(1, 4, 136) + struct.pack("<2e", 1.0, 2.0)
    with pytest.warns(BlobWarning, match="not a multiple of 64"):
        assert same(read_blob(data, 72, "fp16", (2,)), np.array([1, 2], np.float16))


@pytest.mark.parametrize(
    ("shape", "match"),
    [((2, -3), "negative dimension"), ((2, None), "tuple of integers"), ((2.0, 3), "tuple of integers")],
)
def test_bad_shapes(shape, match):
    with pytest.raises(BlobError, match=match):
        read_blob(example_bytes(), 64, "fp16", shape)


@pytest.mark.parametrize(
    ("dtype", "match"), [("half", "unknown MIL dtype"), ("bool", "stores only"), ("bf16", "NumPy")]
)
def test_bad_declared_dtypes(dtype, match):
    with pytest.raises(BlobError, match=match):
        read_blob(example_bytes(), 64, dtype, (2, 3))


def test_missing_storage_header_is_named():
    # maderix's ane_bridge_build_weight_blob_int8 writes metadata at byte 0 (mil-text.md §2.6)
    data = metadata(4, 4, 64) + bytes(4)
    with pytest.raises(BlobError, match="no storage header"):
        read_blob(data, 64, "int8", (4,))


def test_maderix_per_tensor_file_reads():
    # mil-text.md §2.6: count 1, version 2, sentinel, dtype 1, u32 size at 72, u32 128 at 80
    x = np.arange(8, dtype=np.float16)
    blob = bytearray(128 + 16)
    blob[0], blob[4] = 1, 2
    blob[64:68] = bytes([0xEF, 0xBE, 0xAD, 0xDE])
    blob[68] = 1
    struct.pack_into("<I", blob, 72, 16)
    struct.pack_into("<I", blob, 80, 128)
    blob[128:] = x.astype("<f2").tobytes()
    assert same(read_blob(bytes(blob), 64, "fp16", (8,)), x)


def test_trailing_garbage_is_an_error():
    data = example_bytes()
    assert len(list_blobs(data + bytes(48))) == 2  # zeros up to alignment: nothing to read
    with pytest.raises(BlobError, match=r"needs bytes 320..383 but the file is 330"):
        list_blobs(data + bytes(58), name=NAME)
    with pytest.raises(BlobError, match=r"sentinel \(byte 320\) is 0x00000000"):
        list_blobs(data + bytes(48 + 64), name=NAME)


# --------------------------------------------------------------------------------------------
# Truncation


# inside each field, and on either side of the end of every header, metadata and data region
TRUNCATIONS = [0, 1, 4, 7, 8, 63, 64, 65, 100, 127, 128, 129, 139, 140, 141]
TRUNCATIONS += [191, 192, 193, 200, 216, 255, 256, 257, 271]


@pytest.mark.parametrize("length", TRUNCATIONS)
def test_truncated_file(length):
    data = example_bytes()[:length]
    for offset, dt, shape, end, want in [(64, "fp16", (2, 3), 140, EX_A), (192, "fp32", (4,), 272, EX_B)]:
        if length >= end:
            assert same(read_blob(data, offset, dt, shape, name=NAME), want)
        else:
            with pytest.raises(BlobError, match=NAME) as exc:
                read_blob(data, offset, dt, shape, name=NAME)
            if length < 64:
                assert f"file is {length} bytes, shorter than the 64-byte storage header" in str(exc.value)
            elif length > offset + 64:
                assert "runs past the end of the file" in str(exc.value)
    with pytest.raises(BlobError, match=NAME):
        list_blobs(data, name=NAME)


# --------------------------------------------------------------------------------------------
# Every single-bit flip of the worked example, classified by the field it hits


def _field(pos: int) -> str:
    if pos < 64:
        return {0: "count", 1: "version"}.get(pos // 4, "reserved")
    for meta in (64, 192):
        if meta <= pos < meta + 64:
            rel = pos - meta
            if rel < 24:
                return ["sentinel", "dtype", "size", "size", "offset", "offset"][rel // 4]
            return "reserved"  # padding_size_in_bits of a whole-byte type, then reserved
    if 128 <= pos < 140 or 256 <= pos < 272:
        return "data"
    return "gap"


def test_every_single_bit_flip():
    clean = example_bytes()
    blobs = [(64, "fp16", (2, 3), EX_A, 128, 12), (192, "fp32", (4,), EX_B, 256, 16)]
    for pos in range(len(clean)):
        field = _field(pos)
        for bit in range(8):
            data = bytearray(clean)
            data[pos] ^= 1 << bit
            data = bytes(data)
            for meta, dt, shape, want, start, size in blobs:
                ours = meta <= pos < meta + 64 or start <= pos < start + size
                must_fail = field in ("version",) or (
                    ours and field in ("sentinel", "dtype", "size", "offset")
                )
                must_fail |= field == "count" and struct.unpack_from("<I", data)[0] == 0
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", BlobWarning)
                    if must_fail:
                        with pytest.raises(BlobError):
                            read_blob(data, meta, dt, shape)
                        continue
                    got = read_blob(data, meta, dt, shape)
                if field == "data" and ours:
                    assert got.tobytes() == data[start : start + size]
                    assert not same(got, want)
                else:
                    assert same(got, want), (pos, bit, field)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BlobWarning)
                if field in ("count", "version", "sentinel", "offset"):
                    with pytest.raises(BlobError):
                        list_blobs(data)
                elif field in ("dtype", "size"):
                    # without the MIL declaration some of these still describe a valid file (fp16 ->
                    # uint8, 12 -> 14 bytes); then the listing must show the changed field
                    try:
                        infos = list_blobs(data)
                    except BlobError:
                        continue
                    assert infos != list_blobs(clean)
                else:
                    assert list_blobs(data) == list_blobs(clean)


# --------------------------------------------------------------------------------------------
# Fuzz: random flips and truncations of random valid files


# Strategies built once: constructing them per example would cost more than the reads.
_RECORD = st.integers(0, 7)  # which record: 0 the storage header, k > 0 the metadata of a blob
_NEAR_MISS = st.sampled_from([-128, -64, -8, -4, -3, -2, -1, 1, 2, 3, 4, 8, 64, 128])
_EDIT = st.one_of(
    st.tuples(st.just("add"), _NEAR_MISS),
    st.tuples(st.just("set"), st.one_of(st.just(0), st.integers(0, 2**64 - 1))),  # zero or anything
)
_FIELD_EDITS = st.lists(st.tuples(_RECORD, st.integers(0, 4), _EDIT), max_size=2)
_FLIPS = st.lists(
    st.tuples(st.integers(0, 3), _RECORD, st.integers(0, 2**20), st.integers(1, 255)), max_size=3
)
# truncation: none, anywhere, or within a few bytes of a record or data boundary
_CUTS = st.one_of(
    st.none(),
    st.tuples(st.just("any"), st.integers(0, 2**20)),
    st.tuples(st.just("near"), st.integers(0, 2**10), st.integers(-3, 3)),
)
# (byte within the record, struct format) of every field a reader must check
_HEADER_FIELDS = [(0, "<I"), (4, "<I")]
_META_FIELDS = [(0, "<I"), (4, "<I"), (8, "<Q"), (16, "<Q"), (24, "<Q")]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_flips_and_truncations(data):
    items = data.draw(_TENSOR_LISTS, label="tensors")
    w = BlobWriter()
    offsets = [w.add(arr, name) for name, arr in items]
    clean = w.to_bytes()
    infos = list_blobs(clean)
    records = [0, *offsets]  # the storage header, then each metadata record
    mutated = bytearray(clean)
    # set one header or metadata field to a plausible wrong value
    for record, field, (how, value) in data.draw(_FIELD_EDITS, label="field edits"):
        base = records[0 if record == 0 else 1 + record % len(offsets)]
        fields = _HEADER_FIELDS if base == 0 else _META_FIELDS
        rel, fmt = fields[field % len(fields)]
        top = 2**32 - 1 if fmt == "<I" else 2**64 - 1
        old = struct.unpack_from(fmt, mutated, base + rel)[0]
        new = old + value if how == "add" else value & top
        struct.pack_into(fmt, mutated, base + rel, min(max(new, 0), top))
    # flip bits, mostly in the headers where the interesting damage is
    for where, record, pos, mask in data.draw(_FLIPS, label="flips"):
        if where == 0:
            pos = offsets[record % len(offsets)] + pos % 64
        elif where == 1:
            pos %= 64
        else:
            pos %= len(clean)
        mutated[pos] ^= mask
    cut = data.draw(_CUTS, label="truncation")
    if cut is not None:
        if cut[0] == "any":
            at = cut[1] % (len(clean) + 1)
        else:
            edges = [64] + [e for i in infos for e in (i.offset, i.data_offset, i.data_offset + i.size_bytes)]
            at = min(max(edges[cut[1] % len(edges)] + cut[2], 0), len(clean))
        del mutated[at:]
    mutated = bytes(mutated)
    assume(mutated != clean)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlobWarning)
        try:
            listed = list_blobs(mutated, name=NAME)
        except BlobError as e:
            assert NAME in str(e)
        else:
            assert len(listed) == struct.unpack_from("<I", mutated)[0]
        for (name, arr), info in zip(items, infos, strict=True):
            try:
                got = read_blob(mutated, info.offset, name, arr.shape, name=NAME)
            except BlobError as e:
                assert NAME in str(e)
                continue
            # It returned, so the version, the metadata and the data's bounds must be intact...
            assert mutated[4:8] == clean[4:8] and mutated[0:4] != bytes(4)
            end = info.data_offset + info.size_bytes
            assert len(mutated) >= end
            checked = info.offset + (32 if name in SUB_BYTE else 24)  # after: reserved, only warned about
            assert mutated[info.offset : checked] == clean[info.offset : checked]
            assert got.dtype == arr.dtype and got.shape == arr.shape
            assert got.flags.writeable and got.flags.owndata
            # ...and the result is the original unless the data bytes themselves were changed.
            region = mutated[info.data_offset : end]
            if region == clean[info.data_offset : end]:
                assert same(got, arr)
            elif name not in SUB_BYTE and LITTLE:
                assert got.tobytes() == region
