"""Types and literal values as the `model.mil` text spells them (mil-text.md §1.4, §1.5).

Shared by the printer and the parser. Two spellings exist for rank-0 values: the `program(1.3)`
shorthand (`fp16`, `int32(1)`) and the canonical `program(1.0)` form (`tensor<fp16, []>`,
`tensor<int32, []>(1)`), mil-text.md §1.8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._coreml import types
from .dtypes import dtype as dtype_of

#: Names that may not be variables: every dtype plus the type keywords (mil-text.md §1.2, [S10]).
RESERVED = frozenset(
    "any bool program func tensor list dict tuple true false string bf16 fp16 fp32 fp64 int4 int8 int16 "
    "int32 int64 uint1 uint2 uint3 uint4 uint6 uint8 uint16 uint32 uint64 state BLOBFILE".split()
)
DTYPE_NAMES = frozenset(
    "bool string fp16 fp32 fp64 bf16 int4 int8 int16 int32 int64 uint1 uint2 uint3 uint4 uint6 uint8 "
    "uint16 uint32 uint64".split()
)


# --- types -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorType:
    """`tensor<dtype, [dims]>`; a dim is an int or None for `?`. Rank 0 is a scalar."""

    dtype: str
    shape: tuple[int | None, ...]

    @property
    def is_scalar(self) -> bool:
        return len(self.shape) == 0


@dataclass(frozen=True)
class ListType:
    elem: object
    length: int | None


@dataclass(frozen=True)
class TupleType:
    elems: tuple


@dataclass(frozen=True)
class DictType:
    key: object
    value: object


@dataclass(frozen=True)
class StateType:
    wrapped: TensorType


TextType = TensorType | ListType | TupleType | DictType | StateType


def format_type(t: TextType, canonical: bool = False) -> str:
    """Spell a type; `canonical` writes rank-0 tensors as `tensor<T, []>` (program(1.0) style)."""
    if isinstance(t, TensorType):
        if t.is_scalar and not canonical:
            return t.dtype
        dims = ", ".join("?" if d is None else str(d) for d in t.shape)
        return f"tensor<{t.dtype}, [{dims}]>"
    if isinstance(t, ListType):
        n = "?" if t.length is None else str(t.length)
        return f"list<{format_type(t.elem, canonical)}, {n}>"
    if isinstance(t, TupleType):
        return "tuple<" + ", ".join(format_type(e, canonical) for e in t.elems) + ">"
    if isinstance(t, DictType):
        return f"dict<{format_type(t.key, canonical)}, {format_type(t.value, canonical)}>"
    if isinstance(t, StateType):
        return f"state<{format_type(t.wrapped, canonical)}>"
    raise TypeError(f"not a MIL text type: {t!r}")


def _dim(d) -> int | None:
    return int(d) if isinstance(d, (int, np.integer)) else None


def type_of_sym(sym_type) -> TextType:
    """The text type of a coremltools type (symbolic dims become `?`)."""
    if types.is_tensor(sym_type):
        shape = tuple(_dim(d) for d in sym_type.get_shape())
        return TensorType(types.builtin_to_string(sym_type.get_primitive()), shape)
    if types.is_state(sym_type):
        return StateType(type_of_sym(sym_type.wrapped_type()))
    if types.is_list(sym_type):
        elem, length = sym_type.T[0], sym_type.T[1]
        return ListType(type_of_sym(elem), _dim(length))
    if types.is_tuple(sym_type):
        return TupleType(tuple(type_of_sym(e) for e in sym_type.T))
    if types.is_dict(sym_type):
        return DictType(type_of_sym(sym_type.T[0]), type_of_sym(sym_type.T[1]))
    return TensorType(types.builtin_to_string(sym_type), ())


# --- values ------------------------------------------------------------------------------------
def format_float(v: float) -> str:
    """C99 hexadecimal as Apple's compiler prints it: `0x1p-3`, `-0x1.ffcp+15`, `0x0p+0` (§1.5)."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "-0x0p+0" if math.copysign(1.0, v) < 0 else "0x0p+0"
    mantissa, exponent = float(v).hex().split("p")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}p{exponent}"


def format_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _format_scalar(value, dt: str) -> str:
    if dt == "string":
        return format_string(str(value))
    if dt == "bool":
        return "true" if bool(value) else "false"
    if dt.startswith("fp") or dt == "bf16":
        return format_float(float(value))
    return str(int(value))


def _format_elements(arr: np.ndarray, dt: str) -> str:
    if arr.ndim == 0:
        return _format_scalar(arr.item() if dt != "string" else arr, dt)
    if arr.ndim == 1:
        return "[" + ", ".join(_format_scalar(x, dt) for x in arr.tolist()) + "]"
    return "[" + ", ".join(_format_elements(sub, dt) for sub in arr) + "]"


def format_value(t: TensorType, value, canonical: bool = False) -> str:
    """A typed literal: `fp16(0x1p-3)`, `tensor<int32, [2]>([1, 2])`, `string("valid")`.

    Float values are rounded to the declared dtype first, as the compiler does (§1.5).
    """
    dt = t.dtype
    if t.is_scalar:
        if dt == "string":
            body = format_string(str(value))
        else:
            body = _format_scalar(_as_array(value, dt).item(), dt)
        return f"{format_type(t, canonical)}({body})"
    arr = _as_array(value, dt).reshape([d if d is not None else -1 for d in t.shape])
    return f"{format_type(t, canonical)}({_format_elements(arr, dt)})"


def _as_array(value, dt: str) -> np.ndarray:
    if dt == "string":
        return np.asarray(value, dtype=object)
    d = dtype_of(dt)
    if d.numpy is None:
        raise ValueError(f"cannot write a {dt} literal")
    return np.asarray(value).astype(d.numpy)


def format_generic(t: TextType, value, canonical: bool = False) -> str:
    """A literal of any type, for attributes such as `buildInfo` and `FlexibleShapeInformation`.

    Dict values are `{{k, v}, ...}`, tuples `(a, b)`, lists `[a, b]`; nested elements are written
    bare, without their type (§1.5).
    """
    return f"{format_type(t, canonical)}({_bare(t, value, canonical)})"


def _bare(t: TextType, value, canonical: bool) -> str:
    if isinstance(t, TensorType):
        if t.dtype == "string" and t.is_scalar:
            return format_string(str(value))
        return _format_elements(_as_array(value, t.dtype), t.dtype)
    if isinstance(t, DictType):
        items = ", ".join(
            "{" + _bare(t.key, k, canonical) + ", " + _bare(t.value, v, canonical) + "}"
            for k, v in value.items()
        )
        return "{" + items + "}"
    if isinstance(t, TupleType):
        return "(" + ", ".join(_bare(et, v, canonical) for et, v in zip(t.elems, value)) + ")"
    if isinstance(t, ListType):
        return "[" + ", ".join(_bare(t.elem, v, canonical) for v in value) + "]"
    raise TypeError(f"cannot write a literal of type {format_type(t)}")
