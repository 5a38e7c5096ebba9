"""Reading `.npy` and `.npz` files from users and bundles without trusting them.

`numpy.load` allocates whatever an array header claims before it reads a byte of data, so a 100-byte
file whose header says `shape (1099511627776,)` asks for a terabyte; a truncated zip, an empty file or a
pickle turn into a variety of exceptions. Here the header of every array (of the file, or of each zip
member of an `.npz`) is parsed first with `numpy.lib.format.read_magic` / `read_array_header_*` and
checked against the bytes actually present and against a size limit; only then is memory allocated.
Every problem is an `ArrayFileError` naming the file (and member), what is wrong and what to do.

Accepted: numeric arrays (bool, signed/unsigned integers, floats, complex) of any shape, C or Fortran
order, either byte order (returned in native byte order). Refused: object arrays and pickles, strings,
structured and other non-numeric dtypes, `.npy` format 3.0 (written only for structured dtypes with
non-Latin-1 field names, numpy.lib.format docs), trailing bytes after the data.
"""

from __future__ import annotations

import io
import lzma
import math
import os
import struct
import zipfile
import zlib
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from .engine_limits import HOST_TENSOR_BYTES
from .errors import AnekitError
from .safe_dir import not_regular

__all__ = ["ArrayFileError", "MAX_ARRAY_BYTES", "read_npy", "read_npz"]

#: Largest array (and, for an .npz, the largest total) read by default: 4 GiB. A kernel's inputs and
#: outputs are activations, far below this; a header claiming more is almost certainly damaged.
#: The same host-memory limit as the reference backend's tensors (anekit.engine_limits).
MAX_ARRAY_BYTES = HOST_TENSOR_BYTES
#: Dtype kinds accepted: bool, signed and unsigned integers, floats, complex (numpy `dtype.kind`).
NUMERIC_KINDS = "biufc"
#: numpy.lib.format's own default limit on the header text (a header is ~128 bytes in practice).
MAX_HEADER_SIZE = 10_000
_READ_CHUNK = 1 << 24

_SAVE_HINT = "write it again with numpy.save / numpy.savez"
# What the zip reader and the decompressors raise on damaged data (zipfile, zlib, lzma, bz2 docs):
# the zip format is parsed by the standard library, so its failure modes are caught here and reported.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,  # an unsupported compression method
    RuntimeError,  # an encrypted member
    struct.error,
    OverflowError,
    KeyError,
)
# numpy's header parser runs ast.literal_eval on the header text and, for headers it cannot parse,
# tokenize (to fix Python 2 headers): a damaged header can raise ValueError, SyntaxError,
# tokenize.TokenError, RecursionError, ... Whatever it raises, the header is damaged.
_HEADER_ERRORS = (Exception,)


class ArrayFileError(AnekitError, ValueError):
    """An .npy/.npz file is missing, unreadable, damaged, too large or holds something other than
    numeric arrays. The message names the file (and the member of an .npz) and what to do."""


def read_npy(path: str | os.PathLike, *, max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """The array in the `.npy` file at `path`, checked before anything is allocated.

    Raises `ArrayFileError` if the file is missing, not a regular file, damaged or truncated, holds a
    non-numeric array, or claims more than `max_bytes` bytes of data.
    """
    where = str(path)
    with _open_regular(path, "a .npy file") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            return _read_one(f, size, where, max_bytes)
        except _ReadFailed as e:
            raise ArrayFileError(f"{where}: cannot be read ({e})") from None


def read_npz(path: str | os.PathLike, *, max_bytes: int = MAX_ARRAY_BYTES) -> dict[str, np.ndarray]:
    """Every array of the `.npz` file at `path`, keyed by name (the member name without `.npy`).

    Each member's header is checked against the member's size before its data is read, and the
    total is limited to `max_bytes`. Raises `ArrayFileError` for a missing, non-regular, empty,
    truncated or damaged file, a member that is not an `.npy` array, duplicate names, or a
    non-numeric array.
    """
    where = str(path)
    with _open_regular(path, "an .npz file") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ArrayFileError(f"{where}: the file is empty, not an .npz archive; {_SAVE_HINT}")
        try:
            archive = zipfile.ZipFile(f)
        except _ZIP_ERRORS as e:
            raise ArrayFileError(
                f"{where}: not a readable .npz (zip) archive ({_describe(e)}); the file is damaged or "
                f"truncated, or is not an .npz at all; {_SAVE_HINT}"
            ) from None
        with archive:
            return _read_members(archive, where, max_bytes)


def _read_members(archive: zipfile.ZipFile, where: str, max_bytes: int) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    total = 0
    for info in archive.infolist():
        member = f"{where}, member {info.filename!r}"
        if info.is_dir() or not info.filename.endswith(".npy"):
            raise ArrayFileError(
                f"{member}: is not an .npy array (numpy.savez writes only NAME.npy members); {_SAVE_HINT}"
            )
        name = info.filename[: -len(".npy")]
        if name in arrays:
            raise ArrayFileError(f"{member}: the archive holds two arrays named {name!r}; {_SAVE_HINT}")
        try:
            with archive.open(info) as f:
                limit = f"the {max_bytes}-byte limit for the whole archive ({total} bytes used before it)"
                array = _read_one(f, info.file_size, member, max_bytes - total, limit)
        except ArrayFileError:
            raise
        except (_ReadFailed, *_ZIP_ERRORS) as e:
            detail = str(e) if isinstance(e, _ReadFailed) else _describe(e)
            raise ArrayFileError(
                f"{member}: cannot be read from the archive ({detail}); the file is damaged; {_SAVE_HINT}"
            ) from None
        total += array.nbytes
        arrays[name] = array
    return arrays


def _read_one(f: BinaryIO, size: int, where: str, max_bytes: int, limit: str = "") -> np.ndarray:
    """Parse one .npy stream of `size` bytes: header first, checked, then exactly its data."""
    f = _Counting(f)
    shape, fortran, dtype = _read_header(f, where)
    header_end = f.position
    count = _element_count(shape, where)
    nbytes = count * dtype.itemsize
    what = f"shape {shape} of {dtype}"
    if nbytes > max(max_bytes, 0):
        limit = limit or f"the {max_bytes}-byte limit"
        raise ArrayFileError(
            f"{where}: the header claims {what}, {nbytes} bytes, more than {limit}; "
            "the header is damaged, or the array is too large to read here"
        )
    available = size - header_end
    if available != nbytes:
        problem = "truncated" if available < nbytes else f"followed by {available - nbytes} extra bytes"
        raise ArrayFileError(
            f"{where}: the header claims {what} ({nbytes} bytes of data) but {available} bytes follow it: "
            f"the file is {problem} or its header is damaged; {_SAVE_HINT}"
        )
    flat = np.empty(count, dtype=dtype)
    buffer = memoryview(flat).cast("B")
    done = 0
    while done < nbytes:
        got = f.readinto(buffer[done : min(nbytes, done + _READ_CHUNK)])
        if not got:
            raise ArrayFileError(
                f"{where}: the data ends after {done} of {nbytes} bytes (the file is truncated); {_SAVE_HINT}"
            )
        done += got
    if f.read(1):
        raise ArrayFileError(f"{where}: more data follows the array than its header says; {_SAVE_HINT}")
    array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return array


def _read_header(f: BinaryIO, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = npy_format.read_magic(f)
    except _ReadFailed:
        raise
    except _HEADER_ERRORS as e:
        raise ArrayFileError(
            f"{where}: not an .npy array (it does not start with numpy's magic string: {_describe(e)}); "
            f"{_SAVE_HINT}"
        ) from None
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    if version not in readers:
        raise ArrayFileError(
            f"{where}: .npy format version {version[0]}.{version[1]} is not supported (only 1.0 and 2.0, "
            "which numpy writes for every numeric array); save it as a numeric array with numpy.save"
        )
    try:
        shape, fortran, dtype = readers[version](f, max_header_size=MAX_HEADER_SIZE)
    except _ReadFailed:
        raise
    except _HEADER_ERRORS as e:
        raise ArrayFileError(f"{where}: damaged .npy header ({_describe(e)}); {_SAVE_HINT}") from None
    if dtype.hasobject or dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype:
        raise ArrayFileError(
            f"{where}: holds a {dtype} array; only numeric arrays (bool, integers, floats, complex) are "
            "read, never objects or pickles; convert it, e.g. with arr.astype(numpy.float32), and save again"
        )
    return tuple(shape), bool(fortran), dtype


def _element_count(shape: tuple[int, ...], where: str) -> int:
    if any(d < 0 for d in shape):
        raise ArrayFileError(f"{where}: the header's shape {shape} has a negative dimension; {_SAVE_HINT}")
    count = math.prod(shape)
    # NumPy cannot index beyond intp even for an empty array (np.empty((2**63, 0)) fails).
    if any(d > np.iinfo(np.intp).max for d in shape) or count > np.iinfo(np.intp).max:
        raise ArrayFileError(f"{where}: the header's shape {shape} is too large for any array; {_SAVE_HINT}")
    return count


class _open_regular:
    """Open `path` for reading only if it is a regular file (a fifo would block, a directory fails
    later with a confusing message); O_NONBLOCK so that opening a fifo cannot hang."""

    def __init__(self, path: str | os.PathLike, what: str):
        self.path, self.what = path, what

    def __enter__(self) -> io.BufferedReader:
        path = self.path
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            raise ArrayFileError(f"{path}: no such file; give the path of {self.what}") from None
        except IsADirectoryError:
            raise ArrayFileError(f"{path}: is a directory, not {self.what}") from None
        except OSError as e:
            raise ArrayFileError(f"{path}: cannot be opened ({_describe(e)})") from None
        try:
            kind = not_regular(os.fstat(fd).st_mode)
            if kind is not None:
                raise ArrayFileError(f"{path}: is {kind}; give the path of {self.what}")
            self.file = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        return self.file

    def __exit__(self, *exc) -> None:
        self.file.close()


def _describe(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    text = text if len(text) <= 200 else text[:200] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _ReadFailed(Exception):
    """Reading the underlying file or zip member failed (I/O error, bad CRC, bad compressed data)."""

    def __init__(self, cause: BaseException):
        super().__init__(_describe(cause))


class _Counting:
    """A reader that counts the bytes read through it (ZipExtFile.tell needs a seekable archive) and
    tells failures of the stream itself apart from a damaged header (`_ReadFailed`)."""

    def __init__(self, f: BinaryIO):
        self.f, self.position = f, 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.f.read(n)
        except _ZIP_ERRORS as e:
            raise _ReadFailed(e) from None
        self.position += len(data)
        return data

    def readinto(self, buffer) -> int:
        try:
            n = self.f.readinto(buffer) or 0
        except _ZIP_ERRORS as e:
            raise _ReadFailed(e) from None
        self.position += n
        return n
