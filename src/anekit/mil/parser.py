"""Parse `model.mil` text into a coremltools `Program` (grammar: mil-text.md §1.3).

Accepts what anekit prints, what hand-written generators (maderix) write and what Core ML's own
compiler writes into `.mlmodelc/model.mil`: any program version, ios15-ios18 functions, several
functions, tuple bindings, dict/tuple/list attributes, shorthand and canonical scalars, hex and
decimal floats, `inf`/`-inf`/`nan`, string escapes, flat or nested tensor literals, statements
without `[name = ...]`, and both encodings of `constexpr_*` ops (mil-text.md §1.6, §6).

Every op is built through coremltools' Builder, so its type inference checks the program; the
types the text declares must agree with what the op computes. Errors carry line and column.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._coreml import OPSET_ALIASES, OPSETS, Function, Program, mb, types
from ..errors import AnekitError
from .blob import BlobError, read_blob
from .dtypes import dtype as dtype_of
from .literals import (
    DTYPE_NAMES,
    DictType,
    ListType,
    StateType,
    TensorType,
    TextType,
    TupleType,
    format_type,
    type_of_sym,
)
from .model import WeightPathError, weight_relpath
from .printer import TEXT_INFO_ATTR, TextInfo


class MilParseError(AnekitError, ValueError):
    """MIL text that cannot be read; says where (file:line:col), what was expected, and shows the line."""

    def __init__(self, message: str, line: int, col: int, source_line: str = "", filename: str = "<mil>"):
        self.message, self.line, self.col, self.filename = message, line, col, filename
        text = f"{filename}:{line}:{col}: {message}"
        if source_line:
            text += f"\n    {source_line.rstrip()}\n    {' ' * (col - 1)}^"
        super().__init__(text)


# --- lexer -------------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[()\[\]{}<>,=;?])
  | (?P<hex>[-+]?0[xX][0-9a-fA-F]*(?:\.[0-9a-fA-F]*)?[pP][-+]?\d+)
  | (?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<arrow>->)
  | (?P<special>-(?:inf|nan)\b)
  | (?P<bad>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}
_TYPE_WORDS = DTYPE_NAMES | {"tensor", "list", "tuple", "dict", "state"}


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens = [(m.lastgroup, m.group(), m.start()) for m in _TOKEN.finditer(text) if m.lastgroup != "ws"]
    # several end markers, so looking ahead never runs off the list
    tokens.extend([("eof", "", len(text))] * 4)
    return tokens


# --- syntax tree -------------------------------------------------------------------------------
@dataclass
class _Ref:
    name: str
    pos: int


@dataclass
class _Literal:
    type: TextType
    value: object  # numpy array / scalar, str, dict, tuple, list, or _Blob
    pos: int


@dataclass
class _Blob:
    path: str
    offset: int


@dataclass
class _TupleBinding:
    items: list
    pos: int


@dataclass
class _Raw:
    """An untyped bracketed value inside a literal: '[' ']', '{' '}' or '(' ')'."""

    kind: str
    items: list
    pos: int


# --- parser ------------------------------------------------------------------------------------
class _Parser:
    def __init__(self, text: str, weights, filename: str):
        self.text = text
        self.filename = filename
        self.tokens = _tokenize(text)
        self.i = 0
        self.weights = weights
        self._weight_cache: dict[str, bytes] = {}
        self._line_starts: list[int] | None = None
        self._idents: set[str] | None = None

    # -- token helpers -------------------------------------------------------------------------
    def error(self, message: str, pos: int | None = None) -> MilParseError:
        if pos is None:
            pos = self.tokens[self.i][2]
        if self._line_starts is None:
            self._line_starts = [0] + [m.end() for m in re.finditer("\n", self.text)]
        import bisect

        line = bisect.bisect_right(self._line_starts, pos)
        start = self._line_starts[line - 1]
        end = self.text.find("\n", start)
        src = self.text[start : end if end >= 0 else len(self.text)]
        return MilParseError(message, line, pos - start + 1, src, self.filename)

    def peek(self, k: int = 0) -> tuple[str, str, int]:
        return self.tokens[self.i + k]

    def next(self) -> tuple[str, str, int]:
        tok = self.tokens[self.i]
        if tok[0] == "bad":
            raise self.error(f"unexpected character {tok[1]!r}", tok[2])
        if tok[0] != "eof":
            self.i += 1
        return tok

    def describe(self, tok) -> str:
        if tok[0] == "bad":
            return f"unexpected character {tok[1]!r}"
        return "end of input" if tok[0] == "eof" else repr(tok[1])

    def expect(self, text: str, what: str | None = None) -> tuple[str, str, int]:
        tok = self.tokens[self.i]
        if tok[1] != text or tok[0] == "str":
            raise self.error(f"expected {what or repr(text)}, found {self.describe(tok)}", tok[2])
        self.i += 1
        return tok

    def accept(self, text: str) -> bool:
        tok = self.tokens[self.i]
        if tok[1] == text and tok[0] != "str":
            self.i += 1
            return True
        return False

    def ident(self, what: str = "an identifier") -> tuple[str, int]:
        tok = self.peek()
        if tok[0] != "ident":
            raise self.error(f"expected {what}, found {self.describe(tok)}", tok[2])
        self.next()
        return tok[1], tok[2]

    def integer(self, what: str) -> int:
        tok = self.peek()
        if tok[0] != "num" or not re.fullmatch(r"[-+]?\d+", tok[1]):
            raise self.error(f"expected {what} (an integer), found {self.describe(tok)}", tok[2])
        self.next()
        return int(tok[1])

    # -- grammar -------------------------------------------------------------------------------
    def program(self) -> Program:
        self.expect("program", "'program' at the start of the MIL text")
        self.expect("(")
        tok = self.peek()
        if tok[0] != "num":
            raise self.error(f"expected a program version such as 1.3, found {self.describe(tok)}", tok[2])
        version = self.next()[1]
        self.expect(")")
        info = TextInfo(version=version, build_info=None)
        if self.peek()[1] == "[":
            for name, lit in self.attr_list():
                if name == "buildInfo":
                    if not isinstance(lit, _Literal) or not isinstance(lit.value, dict):
                        raise self.error("buildInfo must be a dict<string, string> literal", lit.pos)
                    info.build_info = {str(k): str(v) for k, v in lit.value.items()}
        self.expect("{", "'{' opening the program body")
        prog = Program()
        while self.peek()[1] == "func":
            name, func, attrs = self.function()
            if name in prog.functions:
                raise self.error(f"function {name!r} defined twice")
            # coremltools insists that all functions share one opset (a protobuf Program has one
            # spec version); the text gives each function its own tag, so mixed tags are kept as written.
            prog.functions[name] = func
            if attrs:
                info.function_attrs[name] = attrs
        self.expect("}", "'func' or '}' closing the program")
        if self.peek()[0] != "eof":
            raise self.error(f"unexpected {self.describe(self.peek())} after the program's closing '}}'")
        if not prog.functions:
            raise self.error("the program defines no function")
        if "main" not in prog.functions:
            prog.default_function_name = next(iter(prog.functions))
        setattr(prog, TEXT_INFO_ATTR, info)
        return prog

    def function(self):
        self.expect("func")
        name, _ = self.ident("a function name")
        self.expect("<")
        opset, opos = self.ident("an opset such as ios18")
        opset = OPSET_ALIASES.get(opset, opset)
        if opset not in OPSETS:
            raise self.error(f"unknown opset {opset!r}; expected one of {', '.join(OPSETS)}", opos)
        self.expect(">")
        self.expect("(")
        params: list[tuple[TextType, str, int]] = []
        if self.peek()[1] != ")":
            while True:
                t = self.type()
                pname, ppos = self.ident("a parameter name")
                params.append((t, pname, ppos))
                if not self.accept(","):
                    break
        self.expect(")", "',' or ')' in the parameter list")
        attrs = []
        if self.peek()[1] == "[":
            for aname, lit in self.attr_list():
                if not isinstance(lit, _Literal):
                    raise self.error(f"function attribute {aname!r} must be a literal", lit.pos)
                attrs.append((aname, lit.type, lit.value))
        inputs = OrderedDict()
        for t, pname, ppos in params:
            if pname in inputs:
                raise self.error(f"parameter {pname!r} declared twice", ppos)
            inputs[pname] = self.placeholder(t, ppos)
        self.expect("{", "'{' opening the function body")
        with Function(inputs, opset_version=OPSETS[opset]) as func:
            symbols = dict(func.inputs)
            while self.peek()[1] != "}":
                self.statement(symbols)
            self.expect("}")
            self.expect("->", "'->' before the function outputs")
            self.expect("(")
            outs = []
            if self.peek()[1] != ")":
                while True:
                    oname, opos = self.ident("an output variable")
                    if oname not in symbols:
                        raise self.error(f"output {oname!r} is not defined in function {name!r}", opos)
                    outs.append(symbols[oname])
                    if not self.accept(","):
                        break
            self.expect(")", "',' or ')' in the output list")
            self.expect(";", "';' after the function outputs")
            func.set_outputs(outs)
        return name, func, attrs

    def placeholder(self, t: TextType, pos: int):
        from coremltools.converters.mil.mil import get_new_symbol

        if isinstance(t, StateType):
            shape = [d if d is not None else get_new_symbol() for d in t.wrapped.shape]
            return mb.state_tensor_placeholder(shape=shape, dtype=self.builtin(t.wrapped.dtype, pos))
        if not isinstance(t, TensorType):
            raise self.error(f"a function parameter of type {format_type(t)} is not supported", pos)
        if t.is_scalar:  # coremltools' placeholders have rank >= 1
            raise self.error(
                f"a rank-0 function parameter ({format_type(t)}) is not supported; "
                f"use tensor<{t.dtype}, [1]>",
                pos,
            )
        shape = [d if d is not None else get_new_symbol() for d in t.shape]
        return mb.placeholder(shape=shape, dtype=self.builtin(t.dtype, pos))

    def builtin(self, name: str, pos: int):
        try:
            return types.string_to_builtin(name)
        except Exception:
            raise self.error(f"dtype {name!r} is not supported here", pos) from None

    def statement(self, symbols: dict) -> None:
        start = self.peek()[2]
        decls: list[tuple[TextType, str, int]] = []
        if not (self.peek()[0] == "ident" and self.peek()[1] not in _TYPE_WORDS and self.peek(1)[1] == "("):
            while True:
                t = self.type()
                vname, vpos = self.ident("a variable name")
                decls.append((t, vname, vpos))
                if not self.accept(","):
                    break
            self.expect("=", "'=' or ',' after the declared outputs")
        op_type, op_pos = self.ident("an op name")
        self.expect("(", f"'(' after op name {op_type!r}")
        args: dict[str, object] = {}
        if self.peek()[1] != ")":
            while True:
                aname, apos = self.ident("an argument name")
                self.expect("=", f"'=' after argument {aname!r}")
                if aname in args:
                    raise self.error(f"argument {aname!r} given twice", apos)
                args[aname] = self.binding()
                if not self.accept(","):
                    break
        self.expect(")", "',' or ')' in the argument list")
        attrs = self.attr_list() if self.peek()[1] == "[" else []
        self.expect(";", "';' at the end of the statement")
        self.build(op_type, op_pos, start, decls, args, attrs, symbols)

    def _static_tensor_type(self) -> TensorType | None:
        """Fast path for the commonest type, `tensor<dtype, [int, ...]>`: None if the tokens after
        `tensor` are anything else, and the general path (with its errors) takes over."""
        toks, i = self.tokens, self.i
        if (
            toks[i][1] != "<"
            or toks[i + 1][1] not in DTYPE_NAMES
            or toks[i + 2][1] != ","
            or toks[i + 3][1] != "["
        ):
            return None
        dt, j, dims = toks[i + 1][1], i + 4, []
        if toks[j][1] != "]":
            while True:
                kind, text, _ = toks[j]
                if kind != "num" or not text.isdigit():
                    return None
                dims.append(int(text))
                sep = toks[j + 1][1]
                j += 2
                if sep == "]":
                    break
                if sep != ",":
                    return None
        else:
            j += 1
        if toks[j][1] != ">":
            return None
        self.i = j + 1
        return TensorType(dt, tuple(dims))

    def attr_list(self) -> list[tuple[str, object]]:
        self.expect("[")
        out = []
        if self.peek()[1] != "]":
            while True:
                name, _ = self.ident("an attribute name")
                self.expect("=", f"'=' after attribute {name!r}")
                toks, i = self.tokens, self.i
                if (
                    toks[i][1] == "string"
                    and toks[i + 1][1] == "("
                    and toks[i + 2][0] == "str"
                    and toks[i + 3][1] == ")"
                ):
                    # the `name = string("...")` every statement carries: read it directly
                    text = toks[i + 2][1]
                    value = _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), text[1:-1])
                    out.append((name, _Literal(TensorType("string", ()), value, toks[i][2])))
                    self.i = i + 4
                else:
                    out.append((name, self.binding()))
                if not self.accept(","):
                    break
        self.expect("]", "',' or ']' in the attribute list")
        return out

    def binding(self):
        kind, text, pos = self.peek()
        if kind == "punct" and text == "(":
            self.next()
            items = [self.binding()]
            while self.accept(","):
                items.append(self.binding())
            self.expect(")", "',' or ')' in a tuple binding")
            return _TupleBinding(items, pos)
        if kind == "ident":
            if text in ("true", "false"):  # bare bool, seen in hand-written MIL (mil-text.md §1.5)
                self.next()
                return _Literal(TensorType("bool", ()), np.bool_(text == "true"), pos)
            if text in _TYPE_WORDS and self.peek(1)[1] in ("(", "<"):
                return self.typed_value()
            self.next()
            return _Ref(text, pos)
        raise self.error(
            f"expected a variable, a typed literal or a tuple, found {self.describe(self.peek())}", pos
        )

    def type(self) -> TextType:
        word, pos = self.ident("a type")
        if word in DTYPE_NAMES:
            return TensorType(word, ())
        if word == "tensor":
            fast = self._static_tensor_type()
            if fast is not None:
                return fast
            self.expect("<")
            dt, dpos = self.ident("a dtype")
            if dt not in DTYPE_NAMES:
                raise self.error(f"unknown dtype {dt!r}", dpos)
            self.expect(",")
            self.expect("[")
            dims: list[int | None] = []
            if self.peek()[1] != "]":
                while True:
                    if self.accept("?"):
                        dims.append(None)
                    else:
                        d = self.integer("a dimension")
                        if d < 0:
                            raise self.error("a dimension cannot be negative")
                        dims.append(d)
                    if not self.accept(","):
                        break
            self.expect("]", "',' or ']' in the shape")
            self.expect(">")
            return TensorType(dt, tuple(dims))
        if word == "list":
            self.expect("<")
            elem = self.type()
            self.expect(",")
            length = None if self.accept("?") else self.integer("a list length")
            self.expect(">")
            return ListType(elem, length)
        if word == "tuple":
            self.expect("<")
            elems = []
            if self.peek()[1] != ">":
                while True:
                    elems.append(self.type())
                    if not self.accept(","):
                        break
            self.expect(">")
            return TupleType(tuple(elems))
        if word == "dict":
            self.expect("<")
            k = self.type()
            self.expect(",")
            v = self.type()
            self.expect(">")
            return DictType(k, v)
        if word == "state":
            self.expect("<")
            inner = self.type()
            self.expect(">")
            if not isinstance(inner, TensorType):
                raise self.error("state<> must wrap a tensor type", pos)
            return StateType(inner)
        raise self.error(f"expected a type, found {word!r}", pos)

    def typed_value(self) -> _Literal:
        pos = self.peek()[2]
        t = self.type()
        self.expect("(", f"'(' after type {format_type(t)}")
        if self.peek()[1] == ")":
            raw = _Raw("(", [], pos)
        else:
            raw = self.value()
        self.expect(")", f"')' closing the {format_type(t)} literal")
        return _Literal(t, self.convert(t, raw, pos), pos)

    def value(self):
        kind, text, pos = self.peek()
        if kind in ("num", "hex", "special"):
            self.next()
            return _number(text)
        if kind == "str":
            self.next()
            return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), text[1:-1])
        if kind == "ident":
            if text in ("true", "false"):
                self.next()
                return text == "true"
            if text in ("inf", "nan"):
                self.next()
                return float(text)
            if text == "BLOBFILE":
                return self.blobfile()
            if text in _TYPE_WORDS:
                return self.typed_value()
        if kind == "punct" and text in "[{(":
            close = {"[": "]", "{": "}", "(": ")"}[text]
            self.next()
            items = []
            if self.peek()[1] != close:
                while True:
                    items.append(self.value())
                    if not self.accept(","):
                        break
            self.expect(close, f"',' or {close!r}")
            return _Raw(text, items, pos)
        raise self.error(f"expected a value, found {self.describe(self.peek())}", pos)

    def blobfile(self) -> _Blob:
        _, pos = self.ident()
        self.expect("(", "'(' after BLOBFILE")
        fields = {}
        for _ in range(2):
            fname, fpos = self.ident("'path' or 'offset'")
            if fname not in ("path", "offset") or fname in fields:
                raise self.error(f"BLOBFILE takes path and offset, not {fname!r}", fpos)
            self.expect("=")
            fields[fname] = self.typed_value()
            if fname == "path":
                self.expect(",", "',' between BLOBFILE fields")
            elif "path" not in fields:
                self.expect(",", "',' between BLOBFILE fields")
        self.expect(")", "')' closing BLOBFILE")
        path, offset = fields["path"].value, fields["offset"].value
        if not isinstance(path, str):
            raise self.error("BLOBFILE path must be a string", fields["path"].pos)
        if isinstance(offset, str) or np.ndim(offset) != 0:
            raise self.error("BLOBFILE offset must be an integer", fields["offset"].pos)
        return _Blob(path, int(offset))

    # -- literal conversion --------------------------------------------------------------------
    def convert(self, t: TextType, raw, pos: int):
        if isinstance(t, TensorType):
            if isinstance(raw, _Blob):
                return self.load_blob(t, raw, pos)
            return self.tensor_value(t, raw, pos)
        if isinstance(t, DictType):
            if not isinstance(raw, _Raw) or raw.kind != "{":
                raise self.error(f"a {format_type(t)} literal is written {{{{key, value}}, ...}}", pos)
            out = {}
            for item in raw.items:
                if not isinstance(item, _Raw) or item.kind != "{" or len(item.items) != 2:
                    raise self.error("each dict entry is written {key, value}", getattr(item, "pos", pos))
                out[self.convert(t.key, item.items[0], pos)] = self.convert(t.value, item.items[1], pos)
            return out
        if isinstance(t, TupleType):
            if not isinstance(raw, _Raw) or raw.kind != "(" or len(raw.items) != len(t.elems):
                raise self.error(f"a {format_type(t)} literal needs {len(t.elems)} elements in ( )", pos)
            return tuple(self.convert(et, v, pos) for et, v in zip(t.elems, raw.items))
        if isinstance(t, ListType):
            if not isinstance(raw, _Raw) or raw.kind != "[":
                raise self.error(f"a {format_type(t)} literal is written [ ... ]", pos)
            return [self.convert(t.elem, v, pos) for v in raw.items]
        raise self.error(f"literals of type {format_type(t)} are not supported", pos)

    def tensor_value(self, t: TensorType, raw, pos: int):
        if isinstance(raw, _Literal):  # a typed element inside a bare list
            raw = raw.value
        if t.dtype == "string":
            if t.is_scalar and isinstance(raw, str):
                return raw
            raise self.error("only scalar string literals are supported", pos)
        if t.is_scalar and isinstance(raw, (int, float)):  # the common case: one number
            return self.numeric_array(t.dtype, [raw], pos)[0]
        leaves: list = []
        _flatten(raw, leaves)
        if any(isinstance(x, (_Blob, str)) for x in leaves):
            raise self.error(f"a {format_type(t)} literal holds only numbers or booleans", pos)
        if t.is_scalar:
            if len(leaves) != 1 or isinstance(raw, _Raw):
                raise self.error(f"a {format_type(t)} literal holds exactly one value", pos)
        elif any(d is None for d in t.shape):
            # Flexible dims (`?`) occur in attributes such as FlexibleShapeInformation: keep as nested lists.
            return _nested(raw)
        n = math.prod(t.shape)
        if len(leaves) != n:
            raise self.error(f"{format_type(t)} needs {n} element(s), the literal has {len(leaves)}", pos)
        arr = self.numeric_array(t.dtype, leaves, pos)
        return arr[0] if t.is_scalar else arr.reshape(t.shape)

    def numeric_array(self, dt: str, leaves: list, pos: int) -> np.ndarray:
        d = dtype_of(dt)
        if d.numpy is None:
            raise self.error(f"literals of dtype {dt} are not supported", pos)
        if dt == "bool":
            if not all(isinstance(x, bool) or x in (0, 1) for x in leaves):
                raise self.error("a bool literal holds true/false", pos)
            return np.array(leaves, dtype=np.bool_)
        if d.is_int:
            bad = [x for x in leaves if isinstance(x, float) and not x.is_integer()]
            if bad:
                raise self.error(f"{dt} literal holds a non-integer value {bad[0]!r}", pos)
            ints = [int(x) for x in leaves]
            lo, hi = _int_range(dt)
            out = [x for x in ints if not lo <= x <= hi]
            if out:
                raise self.error(f"value {out[0]} is out of range for {dt}", pos)
            return np.array(ints, dtype=d.numpy)
        return np.array([float(x) for x in leaves], dtype=np.float64).astype(d.numpy)

    def load_blob(self, t: TensorType, blob: _Blob, pos: int) -> np.ndarray:
        try:
            rel = weight_relpath(blob.path)
        except WeightPathError as e:
            raise self.error(str(e), pos) from None
        if any(d is None for d in t.shape):
            raise self.error("a BLOBFILE constant needs a static shape", pos)
        data = self.weight_bytes(blob.path, rel, pos)
        try:
            return read_blob(data, blob.offset, t.dtype, t.shape, name=blob.path)
        except BlobError as e:
            raise self.error(f"bad weight blob: {e}", pos) from None

    def weight_bytes(self, path: str, rel: str, pos: int) -> bytes:
        if path in self._weight_cache:
            return self._weight_cache[path]
        w = self.weights
        if w is None:
            raise self.error(f"the text refers to weight file {path!r} but no weights were given", pos)
        if isinstance(w, dict):
            data = w.get(path)
            if data is None:
                data = w.get("@model_path/" + rel)
            if data is None:
                have = ", ".join(sorted(w)) or "none"
                raise self.error(f"weight file {path!r} not among the given weights ({have})", pos)
        else:
            f = Path(w) / rel
            if not f.is_file():
                raise self.error(f"weight file {path!r} not found at {f}", pos)
            data = f.read_bytes()
        self._weight_cache[path] = data
        return data

    # -- building ops --------------------------------------------------------------------------
    def build(self, op_type, op_pos, start, decls, args, attrs, symbols) -> None:
        op_name = None
        for aname, value in attrs:
            if aname == "name":
                if not isinstance(value, _Literal) or not isinstance(value.value, str):
                    raise self.error("the name attribute must be a string", value.pos)
                op_name = value.value
            elif aname == "val" and op_type == "const":
                args["val"] = value
            elif aname in args:
                raise self.error(f"{aname!r} given both as input and attribute", value.pos)
            else:  # constexpr attribute form: parameters live in [...] (mil-text.md §1.6)
                args[aname] = value
        if op_name is None:
            op_name = decls[0][1] if decls else f"{op_type}_{start}"
        for _, vname, vpos in decls:
            if vname in symbols:
                raise self.error(f"variable {vname!r} is already defined", vpos)
        if op_type == "const":
            lit = args.get("val")
            if not isinstance(lit, _Literal) or set(args) != {"val"}:
                raise self.error("const takes exactly one attribute val = <literal>", op_pos)
            if isinstance(lit.value, (dict, tuple, list)):
                raise self.error(f"const of type {format_type(lit.type)} is not supported", lit.pos)
            value = lit.value
            if len(decls) != 1:
                raise self.error("const has exactly one output", op_pos)
            self.check_type(decls[0], lit.type, lit.pos, "the literal is")
            outputs = (self.call(op_pos, "const", {"val": value}, op_name),)
        else:
            if not hasattr(mb, op_type):
                raise self.error(f"unknown op {op_type!r}", op_pos)
            kwargs = {name: self.resolve(b, symbols, f"{op_name}_{name}") for name, b in args.items()}
            result = self.call(op_pos, op_type, kwargs, op_name)
            outputs = tuple(result) if isinstance(result, (tuple, list)) else (result,)
        if decls and len(outputs) != len(decls):
            raise self.error(f"{op_type} produces {len(outputs)} output(s), {len(decls)} declared", start)
        for decl, var in zip(decls, outputs):
            self.check_type(decl, type_of_sym(var.sym_type), decl[2], f"{op_type} computes")
            var.set_name(decl[1])
            symbols[decl[1]] = var

    def call(self, pos: int, op_type: str, kwargs: dict, name: str):
        try:
            return getattr(mb, op_type)(name=name, **kwargs)
        except Exception as e:  # coremltools validation: wrong inputs, types, shapes
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise self.error(f"{op_type}: {msg}", pos) from None

    def resolve(self, b, symbols, name: str):
        """A binding as a Var; inline literals become consts named after the op and argument, so
        the same text always yields the same names (coremltools' own counters are per process)."""
        if isinstance(b, _Ref):
            if b.name not in symbols:
                raise self.error(f"undefined variable {b.name!r}", b.pos)
            return symbols[b.name]
        if isinstance(b, _Literal):
            if isinstance(b.value, (dict, tuple, list)):
                raise self.error(f"an input of type {format_type(b.type)} is not supported", b.pos)
            const_name = self.fresh_name(name, symbols)
            var = self.call(b.pos, "const", {"val": b.value}, const_name)
            symbols[const_name] = var
            return var
        if isinstance(b, _TupleBinding):
            return tuple(self.resolve(item, symbols, f"{name}_{i}") for i, item in enumerate(b.items))
        raise self.error("unsupported binding", getattr(b, "pos", None))

    def fresh_name(self, base: str, symbols) -> str:
        if self._idents is None:  # every identifier in the text, so a generated name never collides
            self._idents = {t[1] for t in self.tokens if t[0] == "ident"}
        name, n = base, 0
        while name in symbols or name in self._idents:
            n += 1
            name = f"{base}_{n}"
        return name

    def check_type(self, decl, actual: TextType, pos: int, what: str) -> None:
        declared = decl[0]
        if _compatible(declared, actual):
            return
        raise self.error(
            f"{decl[1]!r} is declared {format_type(declared)} but {what} {format_type(actual)}", pos
        )


@functools.cache
def _int_range(dt: str) -> tuple[int, int]:
    """The values an integer dtype holds (sub-byte types by their bit width)."""
    d = dtype_of(dt)
    info = np.iinfo(d.numpy)
    lo, hi = (
        (-(1 << (d.bits - 1)), (1 << (d.bits - 1)) - 1) if dt.startswith("int") else (0, (1 << d.bits) - 1)
    )
    return max(lo, int(info.min)), min(hi, int(info.max))


def _compatible(a: TextType, b: TextType) -> bool:
    if isinstance(a, TensorType) and isinstance(b, TensorType):
        if a.dtype != b.dtype or len(a.shape) != len(b.shape):
            return False
        return all(x is None or y is None or x == y for x, y in zip(a.shape, b.shape))
    return type(a) is type(b)


def _number(text: str):
    if "x" in text or "X" in text:
        return float.fromhex(text)
    if text in ("-inf", "-nan"):
        return float(text)
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    return float(text)


def _flatten(raw, out: list) -> None:
    if isinstance(raw, _Raw):
        if raw.kind != "[":
            out.append(_Blob("", 0))  # marks a malformed element; caller reports it
            return
        for item in raw.items:
            _flatten(item, out)
    elif isinstance(raw, _Literal):
        _flatten(raw.value, out)
    elif isinstance(raw, np.ndarray):
        out.extend(raw.ravel().tolist())
    else:
        out.append(raw)


def _nested(raw):
    if isinstance(raw, _Raw):
        return [_nested(x) for x in raw.items]
    return raw


def loads(
    text: str, weights: dict[str, bytes] | str | os.PathLike | None = None, *, filename: str = "<mil>"
) -> Program:
    """Parse MIL text into a coremltools Program.

    weights: the weight files the text's BLOBFILE constants refer to, as a dict keyed by their
    `@model_path/weights/...` path (like `MilModel.weights`) or a model directory holding `weights/`.
    """
    return _Parser(text, weights, filename).program()


def load_program(path: str | os.PathLike) -> Program:
    """Parse a model directory (or its `model.mil`) into a Program."""
    p = Path(path)
    root, text_file = (p, p / "model.mil") if p.is_dir() else (p.parent, p)
    return loads(text_file.read_text(encoding="utf-8"), root, filename=str(text_file))
