"""Print a coremltools `Program` as `model.mil` text plus weight blob files (mil-text.md §1, §6).

Defaults follow what is known to compile on the engine: `program(1.3)`, maderix's `buildInfo`
line, `func main<ios18>`, shorthand scalars, hexadecimal floats, inputs and attributes sorted
alphabetically, every statement on one line with `[name = ...]`, one weight file per tensor with
fully correct blob headers (ane-private-api.md §2.2: M1 rejects some single-file layouts).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np

from .._coreml import OPSET_ALIASES, OPSETS, ct, opset_name
from .blob import BlobWriter
from .literals import (
    RESERVED,
    TensorType,
    format_generic,
    format_string,
    format_type,
    format_value,
    type_of_sym,
)
from .model import MilModel

#: What maderix sends on every program (ane-private-api.md §3.1); one third party calls it required.
DEFAULT_BUILD_INFO = {
    "coremlc-component-MIL": "3510.2.1",
    "coremlc-version": "3505.4.1",
    "coremltools-component-milinternal": "",
    "coremltools-version": "9.0",
}
#: Dtypes coremltools moves into a blob file once a constant has `blob_threshold` elements (§1.9).
_BLOB_DTYPES = {"fp16", "fp32", "int8", "uint8"}
_BLOB_DTYPES_IOS18 = _BLOB_DTYPES | {"int16", "uint16", "int32", "uint32"}
_SUB_BYTE = {"int4", "uint1", "uint2", "uint3", "uint4", "uint6"}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Longest name printed: the parser reads names of up to 1024 characters (parser.MAX_TOKEN_CHARS).
_MAX_NAME = 1000
#: Longest per-tensor weight file stem: with ".bin", within NAME_MAX (255 bytes; parser's
#: MAX_PATH_COMPONENT_BYTES).
_MAX_FILE_STEM = 200
_INDENT_FUNC, _INDENT_STMT = " " * 4, " " * 8  # maderix's layout; coremlc's 12/8 is also accepted


@dataclass
class TextInfo:
    """What `loads` read from a text header, kept on the Program so `dumps` reproduces it."""

    version: str = "1.3"
    build_info: dict[str, str] | None = None
    #: function name -> [(attribute name, type, value)], e.g. FlexibleShapeInformation
    function_attrs: dict[str, list] = field(default_factory=dict)


TEXT_INFO_ATTR = "_anekit_text_info"


def _sanitize(name: str, limit: int = _MAX_NAME) -> str:
    if len(name) <= limit and _IDENT.match(name) and name not in RESERVED:
        return name
    out = re.sub(r"[^A-Za-z0-9_]", "_", name) or "_"
    if out[0].isdigit():
        out = "_" + out
    if out in RESERVED:
        out += "_workaround"  # coremltools' own suffix for reserved words (mil-text.md §1.2)
    if len(out) > limit:  # shortened, kept distinct by a digest of the whole name
        digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        out = f"{out[: limit - 13]}_{digest}"
    return out


def _checked_options(
    version: str, scalars: str | None, weight_files: str, opset: str | None
) -> tuple[str, str | None]:
    """`dumps`' (scalars, opset) with their defaults and aliases resolved; bad values are ValueErrors."""
    if scalars is None:
        scalars = "canonical" if version.startswith("1.0") or version == "1" else "shorthand"
    if scalars not in ("shorthand", "canonical"):
        raise ValueError(f"scalars must be 'shorthand' or 'canonical', not {scalars!r}")
    if weight_files not in ("per-tensor", "single"):
        raise ValueError(f"weight_files must be 'per-tensor' or 'single', not {weight_files!r}")
    if opset is not None:
        opset = OPSET_ALIASES.get(opset, opset)
        if opset not in OPSETS:
            raise ValueError(f"opset must be one of {', '.join(OPSETS)}, not {opset!r}")
    return scalars, opset


def _build_info_line(build_info: dict[str, str], canonical: bool) -> str:
    """The `[buildInfo = ...]` line after `program(...)`."""
    t = "dict<tensor<string, []>, tensor<string, []>>" if canonical else "dict<string, string>"
    items = ", ".join("{" + format_string(k) + ", " + format_string(v) + "}" for k, v in build_info.items())
    return f"[buildInfo = {t}({{{items}}})]"


def dumps(
    program,
    *,
    version: str | None = None,
    opset: str | None = None,
    build_info: dict[str, str] | None | bool = True,
    scalars: str | None = None,
    weight_files: str = "per-tensor",
    blob_threshold: int = 10,
) -> MilModel:
    """Render `program` as MIL text and its weight files.

    version: "1.3" (default, or the version the program was parsed from) or "1.0".
    opset: print every function under this opset tag (e.g. "ios16" for M1/M2) instead of its own.
    build_info: True for the default (or parsed) dict, a dict of your own, or False/None to omit.
    scalars: "shorthand" (`int32(1)`) or "canonical" (`tensor<int32, []>(1)`); defaults to
        shorthand for program(1.3) and canonical for program(1.0) (mil-text.md §1.8, PR #6 for M1/M2).
    weight_files: "per-tensor" (`weights/<const>.bin`) or "single" (`weights/weight.bin`).
    blob_threshold: constants with at least this many elements go to blob files.
    """
    info: TextInfo | None = getattr(program, TEXT_INFO_ATTR, None)
    version = version or (info.version if info else "1.3")
    scalars, opset = _checked_options(version, scalars, weight_files, opset)
    if build_info is True:
        build_info = info.build_info if info else DEFAULT_BUILD_INFO
    printer = _Printer(scalars == "canonical", weight_files, blob_threshold)
    lines = [f"program({version})"]
    if build_info:
        lines.append(_build_info_line(build_info, printer.canonical))
    lines.append("{")
    for name, func in program.functions.items():
        attrs = info.function_attrs.get(name, []) if info else []
        lines.extend(printer.function(name, func, opset, attrs))
    lines.append("}")
    return MilModel("\n".join(lines) + "\n", printer.weights())


class _Printer:
    def __init__(self, canonical: bool, weight_files: str, blob_threshold: int):
        self.canonical = canonical
        self.weight_files = weight_files
        self.blob_threshold = blob_threshold
        self._files: dict[str, BlobWriter] = {}
        self._names: dict[int, str] = {}
        self._retype: dict[int, str] = {}
        self._taken: set[str] = set()

    # -- names and literals ------------------------------------------------------------------
    def name(self, var) -> str:
        key = id(var)
        if key not in self._names:
            base = _sanitize(var.name)
            name, n = base, 0
            while name in self._taken:
                n += 1
                name = f"{base}_{n}"
            self._taken.add(name)
            self._names[key] = name
        return self._names[key]

    def string(self, s: str) -> str:
        return format_value(TensorType("string", ()), s, self.canonical)

    def weights(self) -> dict[str, bytes]:
        return {path: w.to_bytes() for path, w in self._files.items()}

    def var_type(self, var):
        t = type_of_sym(var.sym_type)
        if id(var) in self._retype:
            return TensorType(self._retype[id(var)], t.shape)
        return t

    def literal(self, var, ios18: bool, file_stem: str | None = None) -> str:
        """A const var's value: inline, or a BLOBFILE reference into a weight file.

        file_stem: the per-tensor file's name (default: the variable's name). A const printed inline
        as an op's argument is named after that op and argument, `<op>_<arg>`, the name `loads` gives
        the const it reads back, so that loads + dumps is a fixed point.
        """
        t = self.var_type(var)
        value = var.val
        if not isinstance(t, TensorType):
            return format_generic(t, value, self.canonical)
        blob_dtypes = _BLOB_DTYPES_IOS18 if ios18 else _BLOB_DTYPES
        size = int(np.prod(t.shape)) if t.shape else 1
        to_blob = t.dtype in _SUB_BYTE or (
            t.dtype in blob_dtypes and not t.is_scalar and size >= self.blob_threshold
        )
        if not to_blob:
            return format_value(t, value, self.canonical)
        if self.weight_files == "single":
            path = "@model_path/weights/weight.bin"
        else:
            path = f"@model_path/weights/{_sanitize(file_stem or self.name(var), _MAX_FILE_STEM)}.bin"
        writer = self._files.setdefault(path, BlobWriter())
        offset = writer.add(np.asarray(value).reshape(t.shape), t.dtype)
        off = format_value(TensorType("uint64", ()), offset, self.canonical)
        return f"{format_type(t, self.canonical)}(BLOBFILE(path = {self.string(path)}, offset = {off}))"

    # -- structure ---------------------------------------------------------------------------
    def function(self, name: str, func, opset: str | None, attrs: list) -> list[str]:
        self._taken = set()  # variable names are scoped to their function
        tag = opset or opset_name(func.opset_version)
        ios18 = OPSETS[tag] >= ct.target.iOS18
        params = ", ".join(
            f"{format_type(type_of_sym(v.sym_type), self.canonical)} {self.name(v)}"
            for v in func.inputs.values()
        )
        head = f"{_INDENT_FUNC}func {_sanitize(name)}<{tag}>({params})"
        if attrs:
            head += (
                " [" + ", ".join(f"{k} = {format_generic(t, v, self.canonical)}" for k, t, v in attrs) + "]"
            )
        lines = [head + " {"]
        inlined = _inlined_consts(func)
        self._retype = _norm_epsilons(func)
        for op in func.operations:
            if op.op_type == "const" and id(op.outputs[0]) in inlined:
                continue
            lines.append(_INDENT_STMT + self.statement(op, inlined, ios18))
        outs = ", ".join(self.name(v) for v in func.outputs)
        lines.append(f"{_INDENT_FUNC}}} -> ({outs});")
        return lines

    def statement(self, op, inlined: set[int], ios18: bool) -> str:
        if op.blocks:
            raise NotImplementedError(
                f"op {op.name!r} ({op.op_type}) has nested blocks; control flow has no known text form "
                "(mil-text.md §1.3) and does not run on the ANE"
            )
        outs = ", ".join(
            f"{format_type(self.var_type(v), self.canonical)} {self.name(v)}" for v in op.outputs
        )
        name_attr = ("name", self.string(op.name))
        if op.op_type == "const":
            attrs = [name_attr, ("val", self.literal(op.outputs[0], ios18))]
            return f"{outs} = const()[{_join(attrs)}];"
        bindings = []
        for arg, value in op.inputs.items():
            stem = f"{op.name}_{arg}"  # the name `loads` gives an inline literal (parser.resolve)
            if isinstance(value, (tuple, list)):
                items = ", ".join(self.binding(v, inlined, ios18, f"{stem}_{i}") for i, v in enumerate(value))
                bindings.append((arg, f"({items})"))
            else:
                bindings.append((arg, self.binding(value, inlined, ios18, stem)))
        bindings.sort()
        if op.op_type.startswith("constexpr_") and op.opset_version < ct.target.iOS18:
            # iOS16/17 constexpr ops carry every parameter as an attribute (mil-text.md §1.6).
            return f"{outs} = {op.op_type}()[{_join(sorted(bindings + [name_attr]))}];"
        return f"{outs} = {op.op_type}({_join(bindings)})[{_join([name_attr])}];"

    def binding(self, var, inlined: set[int], ios18: bool, stem: str) -> str:
        if id(var) in inlined:
            return self.literal(var, ios18, stem)
        return self.name(var)


def _join(pairs) -> str:
    return ", ".join(f"{k} = {v}" for k, v in pairs)


#: Normalizations whose epsilon must share the dtype of gamma/beta (or x without them).
_NORMS = ("layer_norm", "batch_norm", "instance_norm", "l2_norm")


def _norm_epsilons(func) -> dict[int, str]:
    """Norm epsilons to print in their op's float dtype.

    coremltools' builder fills a missing epsilon with an fp32 const even for fp16 ops, a program its
    own validation (and, reportedly, the ANE compiler: mil-text.md §3.10, PR #40) rejects once
    written out; such a const is printed in the op's dtype instead (1e-5 is ~1.0014e-5 in fp16).
    """
    retype: dict[int, str] = {}
    for op in func.operations:
        eps = op.inputs.get("epsilon") if op.op_type in _NORMS else None
        if eps is None or eps.op is None or eps.op.op_type != "const":
            continue
        ref = op.inputs.get("gamma") or op.inputs.get("beta") or op.inputs["x"]
        want, have = type_of_sym(ref.sym_type), type_of_sym(eps.sym_type)
        if want.dtype != have.dtype and all(c.op_type in _NORMS for c in eps.child_ops):
            retype[id(eps)] = want.dtype
    return retype


def _inlined_consts(func) -> set[int]:
    """Consts consumed only by constexpr ops: written inline as their parameters (§1.6)."""
    outputs = {id(v) for v in func.outputs}
    inlined = set()
    for op in func.operations:
        if op.op_type != "const":
            continue
        var = op.outputs[0]
        users = var.child_ops
        if users and id(var) not in outputs and all(u.op_type.startswith("constexpr_") for u in users):
            inlined.add(id(var))
    return inlined
