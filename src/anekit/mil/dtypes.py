"""Element types: their text spelling, NumPy storage, coremltools builtin and blob code.

One table so the printer, the parser, the blob codec and the reference backend agree. Names are
the strings coremltools uses (`types/type_mapping.py`), blob codes are `BlobDataType`
(mil-text.md §1.4, §2.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._coreml import types


@dataclass(frozen=True)
class DType:
    name: str  #: text spelling, e.g. "fp16"
    numpy: np.dtype | None  #: storage dtype (sub-byte types are unpacked into int8/uint8)
    bits: int  #: bits per element in a blob (sub-byte types are packed)
    blob_code: int | None  #: `BlobDataType` code, None if it cannot live in a blob file

    @property
    def builtin(self):
        return types.string_to_builtin(self.name)

    @property
    def is_float(self) -> bool:
        return self.name in ("fp16", "fp32", "fp64", "bf16")

    @property
    def is_int(self) -> bool:
        return "int" in self.name


_TABLE = [
    DType("fp16", np.dtype(np.float16), 16, 1),
    DType("fp32", np.dtype(np.float32), 32, 2),
    DType("uint8", np.dtype(np.uint8), 8, 3),
    DType("int8", np.dtype(np.int8), 8, 4),
    DType("bf16", None, 16, 5),
    DType("int16", np.dtype(np.int16), 16, 6),
    DType("uint16", np.dtype(np.uint16), 16, 7),
    DType("int4", np.dtype(np.int8), 4, 8),
    DType("uint1", np.dtype(np.uint8), 1, 9),
    DType("uint2", np.dtype(np.uint8), 2, 10),
    DType("uint4", np.dtype(np.uint8), 4, 11),
    DType("uint3", np.dtype(np.uint8), 3, 12),
    DType("uint6", np.dtype(np.uint8), 6, 13),
    DType("int32", np.dtype(np.int32), 32, 14),
    DType("uint32", np.dtype(np.uint32), 32, 15),
    DType("fp64", np.dtype(np.float64), 64, None),
    DType("int64", np.dtype(np.int64), 64, None),
    DType("uint64", np.dtype(np.uint64), 64, None),
    DType("bool", np.dtype(np.bool_), 8, None),
    DType("string", None, 0, None),
]

BY_NAME: dict[str, DType] = {d.name: d for d in _TABLE}
BY_BLOB_CODE: dict[int, DType] = {d.blob_code: d for d in _TABLE if d.blob_code is not None}


def dtype(name: str) -> DType:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown MIL dtype {name!r}; known: {', '.join(BY_NAME)}") from None


def of_builtin(builtin) -> DType:
    """The DType of a coremltools builtin scalar type (types.fp16, ...)."""
    return dtype(types.builtin_to_string(builtin))


def of_numpy(arr: np.ndarray) -> DType:
    """The natural DType of a NumPy array (float16 -> fp16, ...)."""
    for d in _TABLE:
        if d.numpy is not None and d.bits == d.numpy.itemsize * 8 and d.numpy == arr.dtype:
            return d
    raise ValueError(f"NumPy dtype {arr.dtype} has no MIL element type")
