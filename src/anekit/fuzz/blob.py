"""Fuzz target `blob`: weight blob files, written and read the way anekit writes and reads them.

Three kinds of case:

- "read": a valid file of one to three tensors made by `BlobWriter`, then zero to four mutations of
  the bytes (header count and version, reserved fields, a metadata record's sentinel, dtype code,
  sizeInBytes, data offset and padding bits, byte flips, truncation, appended bytes) and of the
  declarations it is read with (dtype, shape, offset). Each declared tensor is read with `read_blob`
  and the file is enumerated with `list_blobs`. A successful read must give the declared shape and
  dtype, and, when nothing was mutated, the values written.
- "text": the same files read through `anekit.mil.loads`, as BLOBFILE constants of a MIL text.
- "write": arrays of any NumPy type and shape (0-d, empty, overflowing, NaN, object, strings) given
  to `BlobWriter.add` with a declared dtype (or none, or an unknown one); what is accepted must read
  back equal to NumPy's own conversion of the array.

Acceptable outcomes: success or an AnekitError (BlobError, MilParseError). BlobWarnings are expected
for some mutations and ignored.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..mil.blob import BlobWarning, BlobWriter, list_blobs, read_blob
from ..mil.dtypes import BY_BLOB_CODE
from ..mil.dtypes import dtype as dtype_of

#: Blob dtypes NumPy can hold (bf16 has a code but no NumPy type, mil-text.md §2.2).
DTYPES = [d.name for d in BY_BLOB_CODE.values() if d.numpy is not None]
SUB_BYTE = {d.name for d in BY_BLOB_CODE.values() if d.bits < 8}
#: Interesting unsigned 64-bit values for size and offset fields.
BIG = [
    0,
    1,
    63,
    64,
    65,
    127,
    128,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**40,
    2**62,
    2**63 - 1,
    2**63,
    2**64 - 1,
]


@dataclass
class Tensor:
    dtype: str
    shape: tuple[int, ...]
    values: np.ndarray  # as written (the reader's NumPy type)


@dataclass
class Case:
    kind: str  # "read", "text" or "write"
    data: bytes = b""
    reads: list[tuple[int, str, tuple]] = field(default_factory=list)  # (offset, dtype, shape)
    written: list[Tensor] = field(default_factory=list)
    mutations: list[str] = field(default_factory=list)
    array: np.ndarray | None = None  # "write"
    target: object = None  # "write": dtype argument


# --- making cases -----------------------------------------------------------------------------------
def _values(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    d = dtype_of(name)
    if d.is_float:
        return (rng.standard_normal(shape) * 4).astype(d.numpy)
    if name in SUB_BYTE:
        lo, hi = (-(1 << (d.bits - 1)), (1 << (d.bits - 1)) - 1) if name == "int4" else (0, (1 << d.bits) - 1)
    else:
        info = np.iinfo(d.numpy)
        lo, hi = int(info.min), int(info.max)
    return rng.integers(lo, hi, size=shape, endpoint=True).astype(d.numpy)


def _shape(rng: np.random.Generator) -> tuple[int, ...]:
    rank = int(rng.integers(0, 4))
    return tuple(
        int(rng.integers(0, 6)) if rng.random() < 0.1 else int(rng.integers(1, 6)) for _ in range(rank)
    )


def _valid_file(rng: np.random.Generator) -> tuple[bytes, list[tuple[int, str, tuple]], list[Tensor]]:
    writer = BlobWriter()
    reads, written = [], []
    for _ in range(int(rng.integers(1, 4))):
        name = str(rng.choice(DTYPES))
        shape = _shape(rng)
        values = _values(rng, name, shape)
        offset = writer.add(values, name)
        reads.append((offset, name, shape))
        written.append(Tensor(name, shape, values))
    return writer.to_bytes(), reads, written


def _u64(rng: np.random.Generator) -> int:
    # indexing, not rng.choice: a list mixing ints beyond int64 becomes float64 (2**64 - 1 -> 2**64)
    return BIG[int(rng.integers(len(BIG)))] if rng.random() < 0.7 else int(rng.integers(0, 2**63 - 1))


def _header_count(
    rng: np.random.Generator, data: bytearray, reads: list, meta: int, mutations: list[str]
) -> bool:
    if len(data) < 8:
        return False
    value = int(rng.choice([0, 1, 2, 3, 4, 2**31, 2**32 - 1]))
    struct.pack_into("<I", data, 0, value)
    mutations.append(f"header count = {value}")
    return True


def _header_version(
    rng: np.random.Generator, data: bytearray, reads: list, meta: int, mutations: list[str]
) -> bool:
    if len(data) < 8:
        return False
    value = int(rng.choice([0, 1, 3, 0xDEADBEEF, 2**32 - 1]))
    struct.pack_into("<I", data, 4, value)
    mutations.append(f"header version = {value}")
    return True


def _header_reserved(
    rng: np.random.Generator, data: bytearray, reads: list, meta: int, mutations: list[str]
) -> bool:
    if len(data) < 64:
        return False
    at = int(rng.integers(8, 64))
    data[at] = int(rng.integers(1, 256))
    mutations.append(f"header reserved byte {at} set")
    return True


def _sentinel(
    rng: np.random.Generator, data: bytearray, reads: list, meta: int, mutations: list[str]
) -> bool:
    if len(data) < meta + 8:
        return False
    value = int(rng.choice([0, 0xDEADBEEE, 0xEFBEADDE]))
    struct.pack_into("<I", data, meta, value)
    mutations.append(f"sentinel at {meta} = {value:#x}")
    return True


def _dtype_code(
    rng: np.random.Generator, data: bytearray, reads: list, meta: int, mutations: list[str]
) -> bool:
    if len(data) < meta + 8:
        return False
    value = (
        int(rng.choice([0, 5, 16, 17, 255, 2**31, 2**32 - 1]))
        if rng.random() < 0.4
        else int(rng.integers(1, 16))
    )
    struct.pack_into("<I", data, meta + 4, value)
    mutations.append(f"dtype code at {meta + 4} = {value}")
    return True


def _size_in_bytes(
    rng: np.random.Generator, data: bytearray, reads: list, meta: int, mutations: list[str]
) -> bool:
    if len(data) < meta + 16:
        return False
    value = _u64(rng)
    struct.pack_into("<Q", data, meta + 8, value)
    mutations.append(f"sizeInBytes at {meta + 8} = {value}")
    return True


def _data_offset(
    rng: np.random.Generator, data: bytearray, reads: list, meta: int, mutations: list[str]
) -> bool:
    if len(data) < meta + 24:
        return False
    value = _u64(rng)
    struct.pack_into("<Q", data, meta + 16, value)
    mutations.append(f"data offset at {meta + 16} = {value}")
    return True


def _padding_bits(
    rng: np.random.Generator, data: bytearray, reads: list, meta: int, mutations: list[str]
) -> bool:
    if len(data) < meta + 32:
        return False
    value = [0, 1, 4, 7, 8, 9, 63, 2**63][int(rng.integers(8))]
    struct.pack_into("<Q", data, meta + 24, value)
    mutations.append(f"padding bits at {meta + 24} = {value}")
    return True


def _meta_reserved(
    rng: np.random.Generator, data: bytearray, reads: list, meta: int, mutations: list[str]
) -> bool:
    if len(data) < meta + 64:
        return False
    at = int(rng.integers(meta + 32, meta + 64))
    data[at] = int(rng.integers(1, 256))
    mutations.append(f"metadata reserved byte {at} set")
    return True


def _bit_flips(
    rng: np.random.Generator, data: bytearray, reads: list, meta: int, mutations: list[str]
) -> bool:
    if not data:
        return False
    for _ in range(int(rng.integers(1, 5))):
        at = int(rng.integers(0, len(data)))
        data[at] ^= 1 << int(rng.integers(0, 8))
    mutations.append("bit flips")
    return True


def _truncate(
    rng: np.random.Generator, data: bytearray, reads: list, meta: int, mutations: list[str]
) -> bool:
    cut = int(rng.integers(0, len(data) + 1))
    del data[cut:]
    mutations.append(f"truncated to {cut} bytes")
    return True


def _append(rng: np.random.Generator, data: bytearray, reads: list, meta: int, mutations: list[str]) -> bool:
    extra = int(rng.integers(1, 200))
    data += bytes(rng.integers(0, 256, extra, dtype=np.uint8))  # in place: data is a bytearray
    mutations.append(f"{extra} bytes appended")
    return True


def _redeclare(
    rng: np.random.Generator, data: bytearray, reads: list, meta: int, mutations: list[str]
) -> bool:
    if not reads:
        return False
    i = int(rng.integers(0, len(reads)))
    offset, name, shape = reads[i]
    how = int(rng.integers(0, 3))
    if how == 0:
        name = str(rng.choice(DTYPES + ["bf16", "fp64", "int64", "bool", "string", "nope"]))
    elif how == 1:
        dims = [0, 1, 2, 3, 7, -1, 2**20, 2**31, 2**40, 2**62]
        shape = tuple(dims[int(rng.integers(len(dims)))] for _ in range(int(rng.integers(0, 5))))
    else:
        choices = [-1, 0, 1, 63, 65, 100, len(data), len(data) + 64, 2**63, 2**64]
        offset = choices[int(rng.integers(len(choices)))]
    reads[i] = (offset, name, shape)
    mutations.append(f"read {i} declared as offset {offset}, {name}, shape {shape}")
    return True


#: Mutation `choice` -> handler; a handler returns False (drawing nothing) when it cannot apply, and
#: choice 13, like any mutation that cannot apply, keeps only the storage header.
_MUTATIONS = [
    _header_count,
    _header_version,
    _header_reserved,
    _sentinel,
    _dtype_code,
    _size_in_bytes,
    _data_offset,
    _padding_bits,
    _meta_reserved,
    _bit_flips,
    _truncate,
    _append,
    _redeclare,
]


def _mutate(rng: np.random.Generator, data: bytearray, reads: list, mutations: list[str]) -> bytearray:
    offsets = [r[0] for r in reads if 0 <= r[0] < len(data)]  # declarations may have been mutated
    meta = int(rng.choice(offsets)) if offsets else 64
    choice = int(rng.integers(0, 14))
    if choice >= len(_MUTATIONS) or not _MUTATIONS[choice](rng, data, reads, meta, mutations):
        data[:] = data[:64]
        mutations.append("only the storage header")
    return data


def _write_case(rng: np.random.Generator) -> Case:
    """An array for `BlobWriter.add`: odd dtypes, 0-d, empty, out-of-range values."""
    kind = str(
        rng.choice(
            ["float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "uint64", "bool"]
        )
    )
    shape = _shape(rng)
    base = rng.standard_normal(shape) * float(rng.choice([1, 100, 1e4, 1e6, 1e40, 1e300]))
    if kind.startswith(("int", "uint")):
        info = np.iinfo(kind)
        array = rng.integers(info.min, info.max, size=shape, dtype=kind, endpoint=True)
    elif kind == "bool":
        array = rng.random(shape) < 0.5
    else:
        with np.errstate(over="ignore"):
            array = base.astype(kind)
        if array.size and rng.random() < 0.2:
            array.flat[int(rng.integers(0, array.size))] = rng.choice([np.nan, np.inf, -np.inf])
    special = rng.random()
    if special < 0.03:
        array = np.array(["a", "b"])
    elif special < 0.05:
        array = np.array([1, None], dtype=object)
    elif special < 0.07:
        array = np.array([1 + 2j])
    targets: list[object] = [None, *DTYPES, "bf16", "fp64", "nope", 3]
    target = targets[int(rng.integers(0, len(targets)))]
    return Case(
        "write", array=array, target=target, mutations=[f"write {array.dtype}{array.shape} as {target!r}"]
    )


def make_case(rng: np.random.Generator) -> Case:
    r = rng.random()
    if r < 0.25:
        return _write_case(rng)
    data, reads, written = _valid_file(rng)
    mutations: list[str] = []
    buf = bytearray(data)
    for _ in range(int(rng.choice([0, 1, 1, 2, 3, 4]))):
        buf = _mutate(rng, buf, reads, mutations)
    return Case("text" if r < 0.4 else "read", bytes(buf), reads, written, mutations)


# --- running them -----------------------------------------------------------------------------------
def _check_read(got: np.ndarray, name: str, shape: tuple) -> None:
    want = dtype_of(name).numpy
    if got.shape != tuple(shape) or got.dtype != want:
        raise AssertionError(f"read_blob returned {got.dtype}{got.shape} for a declared {name}{tuple(shape)}")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def _run_read(case: Case) -> None:
    for i, (offset, name, shape) in enumerate(case.reads):
        got = read_blob(case.data, offset, name, shape, name="w.bin")
        _check_read(got, name, shape)
        if not case.mutations and not _same(got, case.written[i].values):
            raise AssertionError(f"tensor {i} read back differently from what was written")
    list_blobs(case.data, name="w.bin")


_TEXT_HEAD = "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1]> x) {\n"
_TEXT_TAIL = '        tensor<fp16, [1]> y = identity(x = x)[name = string("y")];\n    } -> (y);\n}\n'


def _mil_text(case: Case) -> str:
    lines = []
    for i, (offset, name, shape) in enumerate(case.reads):
        t = f"tensor<{name}, [{', '.join(str(d) for d in shape)}]>"
        blob = f'BLOBFILE(path = string("@model_path/weights/w.bin"), offset = uint64({offset}))'
        lines.append(f'        {t} c{i} = const()[name = string("c{i}"), val = {t}({blob})];\n')
    return _TEXT_HEAD + "".join(lines) + _TEXT_TAIL


def _run_text(case: Case) -> None:
    from ..mil import loads

    loads(_mil_text(case), {"@model_path/weights/w.bin": case.data}, filename="<fuzz blob>")


def _run_write(case: Case) -> None:
    writer = BlobWriter()
    offset = writer.add(case.array, case.target, name="fuzz")
    name = (
        case.target
        if isinstance(case.target, str)
        else next(
            d.name
            for d in BY_BLOB_CODE.values()
            if d.numpy is not None and d.numpy == case.array.dtype and d.bits >= 8
        )
    )
    got = read_blob(writer.to_bytes(), offset, name, case.array.shape, name="w.bin")
    _check_read(got, name, case.array.shape)
    # oracle: NumPy's own conversion of the values the writer accepted
    with np.errstate(over="ignore", invalid="ignore"):
        expected = case.array.astype(dtype_of(name).numpy)
    if not _same(got, expected) and not (
        np.isnan(got).any() and np.array_equal(got, expected, equal_nan=True)
    ):
        raise AssertionError(f"{case.array.dtype} written as {name} read back differently")


def run_case(case: Case) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BlobWarning)
        if case.kind == "write":
            _run_write(case)
        elif case.kind == "text":
            _run_text(case)
        else:
            _run_read(case)


def describe(case: Case) -> str:
    if case.kind == "write":
        return f"write: {case.mutations[0]}: {np.array2string(np.asarray(case.array).ravel()[:8])}"
    head = case.data[:192].hex()
    return (
        f"{case.kind}: {len(case.data)} bytes, reads {case.reads}, mutations {case.mutations or 'none'}; "
        f"first bytes {head}"
    )
