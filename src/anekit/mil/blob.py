"""Weight blob files (`weights/*.bin`): Core ML's "MIL Blob Storage" format, version 2.

A MIL constant too large to print inline lives in a blob file and is referenced from the text as
`BLOBFILE(path = ..., offset = uint64(N))`, where N is the byte offset of the blob's 64-byte
*metadata*, not of its data (mil-text.md §1.9, §2). This module writes such files exactly the
way coremltools' `StorageWriter` does (mil-text.md §2.3), so the ANE compiler sees the same bytes
it sees from Core ML, and reads them strictly: every header field and every bound is checked,
because a hand-written blob with a wrong field otherwise turns into silently wrong weights
(mil-text.md §2.6 lists such files in the wild).

Layout, all integers little-endian (mil-text.md §2.1):

    0         storage header   {u32 count, u32 version = 2, 7 x u64 reserved}
    64        metadata #0      {u32 0xDEADBEEF, u32 dtype code, u64 sizeInBytes, u64 data offset,
                                u64 padding_size_in_bits, 4 x u64 reserved}
    128       data #0, then zeros up to the next multiple of 64
    M1        metadata #1 ...

Element types come from the shared table in `anekit.mil.dtypes` (codes: mil-text.md §2.2).
"""

from __future__ import annotations

import math
import operator
import struct
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import AnekitError
from .dtypes import BY_BLOB_CODE, DType
from .dtypes import dtype as _lookup_dtype

__all__ = [
    "BlobError",
    "BlobWarning",
    "BlobInfo",
    "BlobWriter",
    "write_blob",
    "read_blob",
    "list_blobs",
]

# mil-text.md §2.1: both headers are 64 bytes, every metadata record starts 64-aligned.
ALIGNMENT = 64
HEADER_SIZE = 64
METADATA_SIZE = 64
VERSION = 2
SENTINEL = 0xDEADBEEF

_HEADER = struct.Struct("<II")  # count, version; then 7 x u64 reserved (bytes 8..63)
_HEADER_RESERVED = struct.Struct("<7Q")
_METADATA = struct.Struct("<IIQQQ")  # sentinel, dtype, sizeInBytes, offset, padding_size_in_bits
_METADATA_RESERVED = struct.Struct("<4Q")  # bytes 32..63

# Bits per element below which elements are packed several to a byte (mil-text.md §2.5).
_BYTE_BITS = 8


class BlobError(AnekitError, ValueError):
    """A blob file (or a tensor to be written to one) is malformed.

    The message names the field, its byte offset in the file, what was expected and what was
    found, and the file name when the caller gave one.
    """


class BlobWarning(UserWarning):
    """A blob file is readable but not exactly what a current writer produces (for example
    nonzero reserved fields, which writers before iOS18 left uninitialised, mil-text.md §2.1)."""


@dataclass(frozen=True)
class BlobInfo:
    """One blob of a file, as described by its metadata record."""

    offset: int  #: metadata offset: the value MIL's `BLOBFILE(..., offset = uint64(N))` refers to
    dtype: str  #: MIL dtype name, e.g. "fp16"
    size_bytes: int  #: `sizeInBytes`: packed data length, without the alignment padding after it
    data_offset: int  #: absolute file offset of the data (always `offset + 64`)
    padding_bits: int  #: unused high bits of the last data byte (sub-byte types; 0 for the others)


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _where(name: str) -> str:
    return name if name else "blob file"


def _fail(name: str, field: str, byte: int, found: str, expected: str, hint: str = "") -> BlobError:
    msg = f"{_where(name)}: {field} (byte {byte}) is {found}, expected {expected}"
    return BlobError(f"{msg}; {hint}" if hint else msg)


def _is_sub_byte(dt: DType) -> bool:
    return dt.bits < _BYTE_BITS


def _blob_dtype(name: str, action: str) -> DType:
    """The table entry for `name`, or a BlobError if no blob can hold that type (or NumPy can't)."""
    try:
        dt = _lookup_dtype(name)
    except ValueError as e:
        raise BlobError(str(e)) from None
    if dt.blob_code is None:
        storable = ", ".join(d.name for d in BY_BLOB_CODE.values())
        raise BlobError(
            f"cannot {action} dtype {name!r}: a blob file stores only {storable} (mil-text.md §2.2)"
        )
    if dt.numpy is None:
        # bf16 has a blob code (5) but no NumPy dtype to read it into or write it from.
        raise BlobError(
            f"cannot {action} dtype {name!r}: NumPy has no {name} type, so anekit cannot represent it; "
            "store the tensor as fp16 or fp32 instead"
        )
    return dt


def _storage_dtype(dt: DType) -> np.dtype:
    """The little-endian on-disk NumPy dtype of a whole-byte type (mil-text.md §2.1)."""
    return dt.numpy.newbyteorder("<")


def _packed_size(n: int, bits: int) -> tuple[int, int]:
    """(sizeInBytes, padding_size_in_bits) of `n` elements of `bits` bits (mil-text.md §2.5)."""
    total_bits = n * bits
    size = -(-total_bits // 8)
    return size, size * 8 - total_bits


def _sub_byte_range(dt: DType) -> tuple[int, int]:
    if dt.numpy.kind == "i":  # int4: two's complement in `bits` bits
        return -(1 << (dt.bits - 1)), (1 << (dt.bits - 1)) - 1
    return 0, (1 << dt.bits) - 1


# --------------------------------------------------------------------------------------------
# Encoding tensors


def _first(bad: np.ndarray) -> tuple[int, ...]:
    """The index of the first True of `bad`, as a tuple (`()` for a 0-d array)."""
    return tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(bad)[0]), bad.shape))


def _check_range(arr: np.ndarray, lo: int | float, hi: int | float, dt: DType, tensor: str) -> None:
    if arr.size == 0:
        return
    bad = (arr < lo) | (arr > hi)
    if bad.any():
        index = _first(bad)
        raise BlobError(
            f"{tensor}: value {arr[index].item()!r} at index {list(index)} is out of range for {dt.name} "
            f"([{lo}, {hi}]); clip or rescale it, or store it as a wider type"
        )


def _encode(array: np.ndarray, dt: DType, tensor: str) -> tuple[bytes, int]:
    """Data bytes and padding bits of `array` stored as `dt`, after checking the values fit."""
    kind = array.dtype.kind
    if dt.is_float:
        if kind not in "fiu":
            raise BlobError(f"{tensor}: cannot store a {array.dtype} array as {dt.name}")
        with np.errstate(over="ignore", invalid="ignore"):
            # np.asarray keeps a 0-d array 0-d (ascontiguousarray makes it 1-d, and the overflow
            # index then did not fit the input: an IndexError instead of this BlobError).
            out = np.asarray(array, dtype=_storage_dtype(dt), order="C")
        if out.size:
            # A finite value that becomes inf did not fit (fp16 max is 65504); an explicit inf stays.
            overflow = np.isinf(out) & np.isfinite(array)
            if overflow.any():
                index = _first(overflow)
                hint = "scale it down" + (" or store it as fp32" if dt.bits < 32 else "")
                raise BlobError(
                    f"{tensor}: value {array[index].item()!r} at index {list(index)} is out of range for "
                    f"{dt.name} (max {int(np.finfo(dt.numpy).max)}); {hint}"
                )
        return out.tobytes(), 0

    if kind not in "iub":
        raise BlobError(
            f"{tensor}: cannot store a {array.dtype} array as {dt.name}: integer values are needed"
        )
    if not _is_sub_byte(dt):
        info = np.iinfo(dt.numpy)
        _check_range(array, info.min, info.max, dt, tensor)
        return np.ascontiguousarray(array, dtype=_storage_dtype(dt)).tobytes(), 0

    # mil-text.md §2.5: element i occupies bits [i*bits, (i+1)*bits) of the byte stream, the first
    # element in the least significant bits of byte 0; int4 is two's complement.
    lo, hi = _sub_byte_range(dt)
    _check_range(array, lo, hi, dt, tensor)
    flat = (np.asarray(array, dtype=np.int16).reshape(-1) & ((1 << dt.bits) - 1)).astype(np.uint8)
    planes = np.unpackbits(flat[:, None], axis=1, count=dt.bits, bitorder="little")
    data = np.packbits(planes.reshape(-1), bitorder="little").tobytes()  # zero-fills the last byte
    size, padding = _packed_size(flat.size, dt.bits)
    assert len(data) == size
    return data, padding


def _decode_sub_byte(raw: np.ndarray, shape: tuple[int, ...], n: int, dt: DType) -> np.ndarray:
    """Unpack `n` LSB-first `dt.bits`-bit elements (mil-text.md §2.5) into a new int8/uint8 array."""
    planes = np.unpackbits(raw, count=n * dt.bits, bitorder="little").reshape(n, dt.bits)
    values = np.packbits(planes, axis=1, bitorder="little").reshape(shape)  # high bits padded with 0
    out = np.empty(shape, dtype=dt.numpy)  # the result owns its memory, like every other result
    if dt.numpy.kind == "i":
        # two's complement in `bits` bits: flip the sign bit, then subtract its weight
        sign = np.uint8(1 << (dt.bits - 1))
        np.subtract((values ^ sign).view(np.int8), np.int8(sign), out=out)
    else:
        np.copyto(out, values)
    return out


# --------------------------------------------------------------------------------------------
# Writing


class BlobWriter:
    """Builds one blob file in memory, tensor by tensor, as coremltools' `StorageWriter` does.

    mil-text.md §2.3: each blob's metadata starts at the current end of file rounded up to 64,
    its data follows at metadata + 64, gaps are zeros, reserved fields are zero, and the header
    count is the number of blobs added.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._end = HEADER_SIZE
        self._count = 0

    def add(self, array: np.ndarray, dtype: str | None = None, *, name: str = "") -> int:
        """Append one tensor (row-major); returns the metadata offset to use as BLOBFILE offset.

        dtype defaults to the array's natural MIL dtype (float16->fp16, float32->fp32, int8, uint8,
        int16, uint16, int32, uint32); sub-byte dtypes (int4, uint1, uint2, uint3, uint4, uint6) take
        int8/uint8 arrays and pack them LSB-first; values out of range for the dtype are a BlobError.
        Other NumPy types are converted when every value fits (float64 -> fp16 checks overflow;
        integers are range-checked); floats are never silently truncated to integers. A 0-d array
        is stored as one element. `name` (the tensor's name) goes into errors; without it the
        tensor is named by its position in the file.
        """
        tensor = f"tensor {name!r}" if name else f"tensor #{self._count} of the blob file"
        try:
            array = np.asarray(array)
        except (ValueError, TypeError) as e:
            raise BlobError(f"{tensor}: is not a rectangular numeric array ({e})") from None
        if dtype is None:
            native = array.dtype.newbyteorder("=")
            natural = next(
                (
                    d
                    for d in BY_BLOB_CODE.values()
                    if d.numpy is not None and d.numpy == native and not _is_sub_byte(d)
                ),
                None,
            )
            if natural is None:
                raise BlobError(
                    f"{tensor}: a {array.dtype} array has no blob dtype of its own; pass dtype= "
                    "(e.g. 'fp16') or cast it to float16/float32/(u)int8/16/32"
                )
            dtype = natural.name
        if not isinstance(dtype, str):
            raise BlobError(f"{tensor}: dtype must be a MIL dtype name such as 'fp16', not {dtype!r}")
        try:
            dt = _blob_dtype(dtype, "write")
        except BlobError as e:
            raise BlobError(f"{tensor}: {e}") from None
        data, padding = _encode(array, dt, tensor)

        meta_off = _align(self._end)
        if meta_off > self._end:
            self._parts.append(bytes(meta_off - self._end))
        data_off = meta_off + METADATA_SIZE
        meta = _METADATA.pack(SENTINEL, dt.blob_code, len(data), data_off, padding)
        self._parts.append(meta + bytes(METADATA_SIZE - len(meta)))
        self._parts.append(data)
        self._end = data_off + len(data)
        self._count += 1
        return meta_off

    @property
    def count(self) -> int:
        """Number of tensors added so far (the header's `count`)."""
        return self._count

    def to_bytes(self) -> bytes:
        """The complete file: header, then each metadata record and its data."""
        header = _HEADER.pack(self._count, VERSION)
        return b"".join([header, bytes(HEADER_SIZE - len(header)), *self._parts])


def write_blob(array: np.ndarray, dtype: str | None = None, *, name: str = "") -> bytes:
    """A file holding one tensor; its BLOBFILE offset is 64 (the maderix per-tensor files, §2.6)."""
    writer = BlobWriter()
    writer.add(array, dtype, name=name)
    return writer.to_bytes()


# --------------------------------------------------------------------------------------------
# Reading


def _buffer(data: bytes) -> memoryview:
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _check_header(view: memoryview, name: str) -> int:
    """Validate the 64-byte storage header (mil-text.md §2.1); returns `count`."""
    if len(view) < HEADER_SIZE:
        raise BlobError(
            f"{_where(name)}: file is {len(view)} bytes, shorter than the {HEADER_SIZE}-byte storage header"
        )
    count, version = _HEADER.unpack_from(view, 0)
    if version != VERSION:
        hint = "version 1 is the old Espresso blob_v1 format (mil-text.md §2.1)"
        if _METADATA.unpack_from(view, 0)[0] == SENTINEL:
            hint = (
                "the file starts with a blob metadata sentinel, so it has no storage header "
                "(as maderix's ane_bridge_build_weight_blob_int8 writes, mil-text.md §2.6)"
            )
        raise _fail(name, "storage header version", 4, str(version), str(VERSION), hint)
    reserved = _HEADER_RESERVED.unpack_from(view, 8)
    if any(reserved):
        warnings.warn(
            f"{_where(name)}: storage header reserved bytes 8..63 are not zero; ignored "
            "(the format reserves them as 0, mil-text.md §2.1)",
            BlobWarning,
            stacklevel=3,
        )
    return count


def _check_record_bounds(view: memoryview, offset: int, name: str, where: str) -> None:
    """The metadata record at `offset` lies after the storage header and inside the file."""
    if offset < HEADER_SIZE:
        raise BlobError(
            f"{_where(name)}: blob offset {offset} points into the {HEADER_SIZE}-byte storage header; "
            f"the first blob's metadata is at offset {HEADER_SIZE} (mil-text.md §1.9)"
        )
    if offset + METADATA_SIZE > len(view):
        raise BlobError(
            f"{_where(name)}: {where} needs bytes {offset}..{offset + METADATA_SIZE - 1} but the file is "
            f"{len(view)} bytes"
        )


def _check_padding_and_size(dt: DType, size: int, padding: int, offset: int, name: str, where: str) -> None:
    """padding_size_in_bits and sizeInBytes fit the record's dtype (mil-text.md §2.5)."""
    if _is_sub_byte(dt):
        # mil-text.md §2.5: the unused high bits of the last byte; fewer than 8, and the used bits
        # must hold a whole number of elements.
        used = size * 8 - padding
        if padding >= 8 or used < 0 or used % dt.bits:
            raise _fail(
                name,
                f"{where}: padding_size_in_bits",
                offset + 24,
                str(padding),
                f"a value below 8 leaving a multiple of {dt.bits} of the {size * 8} data bits ({dt.name})",
            )
    else:
        if size % (dt.bits // 8):
            raise _fail(
                name,
                f"{where}: sizeInBytes",
                offset + 8,
                str(size),
                f"a multiple of {dt.bits // 8} ({dt.name} elements)",
            )
        if padding:
            # Byte 24 was a reserved field before sub-byte types existed (iOS18), and those
            # writers left reserved fields uninitialised (mil-text.md §2.1): not an error.
            warnings.warn(
                f"{_where(name)}: {where}: padding_size_in_bits (byte {offset + 24}) is {padding} for "
                f"{dt.name}, expected 0; ignored (pre-iOS18 writers left this reserved field uninitialised)",
                BlobWarning,
                stacklevel=4,  # one frame deeper than _read_metadata: still read_blob's or list_blobs' caller
            )


def _read_metadata(view: memoryview, offset: int, name: str) -> tuple[BlobInfo, DType]:
    """Validate the metadata record at `offset` and its data's bounds (mil-text.md §2.1, §2.4).

    Checks that hold whatever tensor type the MIL text declares: the record fits, the sentinel,
    a known dtype code, data right after the record, padding bits that fit the dtype, data
    inside the file. Returns the record and its table entry.
    """
    where = f"blob metadata at offset {offset}"
    _check_record_bounds(view, offset, name, where)
    sentinel, code, size, data_off, padding = _METADATA.unpack_from(view, offset)
    if sentinel != SENTINEL:
        raise _fail(
            name,
            f"{where}: sentinel",
            offset,
            f"0x{sentinel:08X}",
            f"0x{SENTINEL:08X}",
            "the offset does not point at a blob's metadata",
        )
    dt = BY_BLOB_CODE.get(code)
    if dt is None:
        known = ", ".join(f"{c} {d.name}" for c, d in BY_BLOB_CODE.items())
        raise _fail(name, f"{where}: mil_dtype", offset + 4, str(code), f"one of {known} (mil-text.md §2.2)")
    if data_off != offset + METADATA_SIZE:
        hint = "the writer always puts the data right after its 64-byte metadata (mil-text.md §2.1, §2.3)"
        if data_off == 0:
            hint += "; maderix's benchmark files leave this field 0 (mil-text.md §2.6)"
        raise _fail(
            name, f"{where}: data offset", offset + 16, str(data_off), str(offset + METADATA_SIZE), hint
        )
    _check_padding_and_size(dt, size, padding, offset, name, where)
    if data_off + size > len(view):
        raise BlobError(
            f"{_where(name)}: {where}: data (bytes {data_off}..{data_off + size - 1}, sizeInBytes {size} "
            f"at byte {offset + 8}) runs past the end of the file ({len(view)} bytes)"
        )
    if any(_METADATA_RESERVED.unpack_from(view, offset + 32)):
        warnings.warn(
            f"{_where(name)}: {where}: reserved bytes {offset + 32}..{offset + 63} are not zero; ignored "
            "(writers before iOS18 left them uninitialised, mil-text.md §2.1)",
            BlobWarning,
            stacklevel=3,
        )
    return BlobInfo(offset, dt.name, size, data_off, padding if _is_sub_byte(dt) else 0), dt


def _element_count(shape: tuple[int, ...], name: str) -> int:
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise BlobError(f"{_where(name)}: shape {shape!r} must be a tuple of integers") from None
    if any(d < 0 for d in dims):
        raise BlobError(f"{_where(name)}: shape {shape!r} has a negative dimension")
    return math.prod(dims)


def read_blob(data: bytes, offset: int, dtype: str, shape: tuple[int, ...], *, name: str = "") -> np.ndarray:
    """The tensor whose metadata is at `offset` (the BLOBFILE offset), declared `dtype` and `shape`.

    Follows mil-text.md §2.4 and checks every field against the declaration: a malformed file is a
    BlobError, never a crash or made-up zeros. Returns a fresh, writable, C-ordered array of the
    dtype's NumPy type (sub-byte types unpacked into int8 for int4, uint8 otherwise). The data is
    copied once, so large weights read at memory speed. `name` (the file's name) goes into errors.
    """
    dt = _blob_dtype(dtype, "read")
    n = _element_count(shape, name)
    try:
        offset = operator.index(offset)
    except TypeError:
        raise BlobError(f"{_where(name)}: blob offset {offset!r} is not an integer") from None
    if offset < 0:
        raise BlobError(f"{_where(name)}: blob offset {offset} is negative")
    view = _buffer(data)
    count = _check_header(view, name)
    if count == 0:
        raise _fail(name, "storage header count", 0, "0", "at least 1", "the file declares no blobs")
    if offset >= len(view):
        raise BlobError(
            f"{_where(name)}: blob offset {offset} is beyond the end of the file ({len(view)} bytes)"
        )
    info, file_dt = _read_metadata(view, offset, name)
    where = f"blob metadata at offset {offset}"
    if file_dt.blob_code != dt.blob_code:
        raise _fail(
            name,
            f"{where}: mil_dtype",
            offset + 4,
            f"{file_dt.blob_code} ({file_dt.name})",
            f"{dt.blob_code} ({dt.name}), the dtype the MIL text declares",
        )
    expected_size, expected_padding = _packed_size(n, dt.bits)
    if info.size_bytes != expected_size:
        raise _fail(
            name,
            f"{where}: sizeInBytes",
            offset + 8,
            str(info.size_bytes),
            f"{expected_size} for {n} {dt.name} elements of shape {tuple(shape)}",
        )
    if _is_sub_byte(dt) and info.padding_bits != expected_padding:
        raise _fail(
            name,
            f"{where}: padding_size_in_bits",
            offset + 24,
            str(info.padding_bits),
            f"{expected_padding} for {n} {dt.name} elements",
        )
    if offset % ALIGNMENT:
        # Readable, but no writer that follows the format puts metadata there (mil-text.md §2.1);
        # maderix's multi-blob files do (§2.6).
        warnings.warn(
            f"{_where(name)}: blob offset {offset} is not a multiple of {ALIGNMENT}; writers that "
            "follow the format align every metadata record (mil-text.md §2.1)",
            BlobWarning,
            stacklevel=2,
        )

    if _is_sub_byte(dt):
        raw = np.frombuffer(view, dtype=np.uint8, count=info.size_bytes, offset=info.data_offset)
        return _decode_sub_byte(raw, tuple(shape), n, dt)
    # One copy: a view of the file's bytes, converted (little-endian -> native) into a new array.
    raw = np.frombuffer(view, dtype=_storage_dtype(dt), count=n, offset=info.data_offset)
    return raw.reshape(shape).astype(dt.numpy, order="C", copy=True)


def list_blobs(data: bytes, *, name: str = "") -> list[BlobInfo]:
    """Every blob in the file, in order, each record validated (mil-text.md §2.4 enumeration).

    Walks from offset 64, the next metadata being at align64(data offset + sizeInBytes), up to the
    end of the file; the header count must equal the number found. A bare header (count 0, no
    blobs, as `BlobWriter().to_bytes()` gives) lists as []. Without the MIL declarations only the
    shape-free checks apply: a dtype or size changed into another valid one goes unnoticed here.
    """
    view = _buffer(data)
    count = _check_header(view, name)
    blobs: list[BlobInfo] = []
    offset = HEADER_SIZE
    while offset < len(view):
        info, _ = _read_metadata(view, offset, name)
        blobs.append(info)
        # always moves forward: _read_metadata has checked data_offset == offset + 64
        offset = _align(info.data_offset + info.size_bytes)
    if len(blobs) != count:
        raise _fail(
            name,
            "storage header count",
            0,
            str(count),
            f"{len(blobs)}, the number of blobs found in the file",
        )
    return blobs
