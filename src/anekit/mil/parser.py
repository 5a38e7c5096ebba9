"""Parse `model.mil` text into a coremltools `Program` (grammar: mil-text.md §1.3).

Accepts what anekit prints, what hand-written generators (maderix) write and what Core ML's own
compiler writes into `.mlmodelc/model.mil`: any program version, ios15-ios18 functions, several
functions, tuple bindings, dict/tuple/list attributes, shorthand and canonical scalars, hex and
decimal floats, `inf`/`-inf`/`nan`, string escapes, flat or nested tensor literals, statements
without `[name = ...]`, and both encodings of `constexpr_*` ops (mil-text.md §1.6, §6).

Every op is built through coremltools' Builder, so its type inference checks the program; the
types the text declares must agree with what the op computes. Errors carry line and column.

Whatever the input, the only exception is MilParseError: bad UTF-8, nesting deeper than
MAX_NESTING, numbers a dtype cannot hold, names over MAX_TOKEN_CHARS, BLOBFILE paths the file system
cannot take, tensors over MAX_TENSOR_BYTES (refused before anything is read or computed) and any
failure inside the Builder are all reported at their line and column.
"""

from __future__ import annotations

import bisect
import contextvars
import functools
import math
import operator
import os
import re
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._coreml import OPSET_ALIASES, OPSETS, Function, Program, mb, types
from ..engine_limits import WEIGHT_FILE_BYTES
from ..errors import AnekitError
from ..safe_dir import read_inside
from .blob import BlobError, read_blob
from .dtypes import BY_NAME
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
from .model import TEXT_FILE, WeightPathError, read_weight_file, weight_relpath
from .printer import TEXT_INFO_ATTR, TextInfo


class MilParseError(AnekitError, ValueError):
    """MIL text that cannot be read; says where (file:line:col), what was expected, and shows the line."""

    def __init__(self, message: str, line: int, col: int, source_line: str = "", filename: str = "<mil>"):
        self.message, self.line, self.col, self.filename = message, line, col, filename
        text = f"{filename}:{line}:{col}: {message}"
        if source_line:
            shown, caret = _excerpt(source_line.rstrip("\r\n"), col)
            text += f"\n    {shown}\n    {' ' * caret}^"
        super().__init__(text)


#: Characters of the offending line shown on each side of the caret (a 200,000-character line is cut).
_EXCERPT = 80


def _excerpt(line: str, col: int) -> tuple[str, int]:
    """The part of `line` around column `col` that is shown, with control characters, tabs and lone
    surrogates (from undecodable bytes) as one placeholder each, so the caret stays under its column
    and printing the message cannot fail; returns it and the caret's offset in it."""
    start = max(0, col - 1 - _EXCERPT)
    end = col - 1 + _EXCERPT
    shown = _UNPRINTABLE.sub("\N{REPLACEMENT CHARACTER}", line[start:end].replace("\t", " "))
    caret = col - 1 - start
    if start:
        shown, caret = "..." + shown, caret + 3
    if end < len(line):
        shown += "..."
    return shown, caret


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


# --- limits ------------------------------------------------------------------------------------
#: Deepest nesting of brackets, typed values and type parameters followed. Real texts nest at most
#: about 8 deep (a rank-5 tensor literal, rank <= 5 on the ANE: mil-text.md §5 row 12; the
#: FlexibleShapeInformation tuple<tuple<string, dict<...>>> attribute, §1.4). Each level costs a few
#: Python frames, so 64 stays far below the interpreter's recursion limit (1000).
MAX_NESTING = 64
#: Longest run of name or number characters: far above any real name (Core ML's longest are about
#: 100 characters) and above the longest exact decimal spelling of a float64 (767 significant digits),
#: below Python's 4,300-digit limit on converting a decimal string to an int.
MAX_TOKEN_CHARS = 1024
#: Largest tensor a text may declare (elements x bytes per element), checked before anything is built
#: or read: Core ML models with more than about 2 GB of weights fail to compile (mil-text.md §2.7).
MAX_TENSOR_BYTES = WEIGHT_FILE_BYTES
#: Longest BLOBFILE path and path component, in UTF-8 bytes: PATH_MAX and NAME_MAX on macOS
#: (<sys/syslimits.h>), where the compiler resolves `@model_path` (mil-text.md §1.9).
MAX_PATH_BYTES = 1024
MAX_PATH_COMPONENT_BYTES = 255

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
    re.VERBOSE | re.DOTALL | re.ASCII,  # ASCII: `\d` is 0-9 only, so int() never sees other digits
)
_ESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}
_TYPE_WORDS = DTYPE_NAMES | {"tensor", "list", "tuple", "dict", "state"}
_INT_DTYPES = frozenset(d for d in DTYPE_NAMES if "int" in d)
#: A tensor of at most this many elements is within MAX_TENSOR_BYTES whatever its dtype (<= 8 bytes each).
_MAX_ELEMENTS = MAX_TENSOR_BYTES // 8
_TOKEN_TEXT = operator.itemgetter(1)


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
    pos: int = 0  #: where its path is written


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
        self._line_starts: list[int] | None = None
        self.tokens = _tokenize(text)
        if max(map(len, map(_TOKEN_TEXT, self.tokens))) > MAX_TOKEN_CHARS:  # rare: find which
            for kind, tok, pos in self.tokens:  # (a string literal may be long)
                if len(tok) > MAX_TOKEN_CHARS and kind != "str":
                    raise self.error(
                        f"a name or number of {len(tok)} characters; the limit is {MAX_TOKEN_CHARS}", pos
                    )
        self.i = 0
        self.depth = 0  # current nesting, see MAX_NESTING
        self.weights = weights
        self._weight_cache: dict[str, bytes] = {}
        self._idents: set[str] | None = None

    # -- token helpers -------------------------------------------------------------------------
    def error(self, message: str, pos: int | None = None) -> MilParseError:
        if pos is None:
            pos = self.tokens[self.i][2]
        if self._line_starts is None:
            self._line_starts = [0] + [m.end() for m in re.finditer("\n", self.text)]
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
        if tok[0] == "eof":
            return "end of input"
        return repr(tok[1]) if len(tok[1]) <= 60 else repr(tok[1][:57]) + "..."

    def nest(self, pos: int) -> None:
        """Enter one level of nesting (a bracket, a typed value, a type parameter); see MAX_NESTING.
        The caller leaves it with `self.depth -= 1`; after an error the parser is discarded."""
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"nesting deeper than {MAX_NESTING} levels; no MIL program nests that deep", pos)

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
        fpos = self.expect("func")[2]
        name, _ = self.ident("a function name")
        self.expect("<")
        opset, opos = self.ident("an opset such as ios18")
        opset = OPSET_ALIASES.get(opset, opset)
        if opset not in OPSETS:
            raise self.error(f"unknown opset {opset!r}; expected one of {', '.join(OPSETS)}", opos)
        self.expect(">")
        params = self._params()
        attrs = self._function_attrs()
        inputs = OrderedDict()
        for t, tpos, pname, ppos in params:
            if pname in inputs:
                raise self.error(f"parameter {pname!r} declared twice", ppos)
            inputs[pname] = self.placeholder(t, tpos)
        self.expect("{", "'{' opening the function body")
        try:
            scope = Function(inputs, opset_version=OPSETS[opset])
        except Exception as e:  # coremltools refusing the inputs
            raise self.error(f"function {name!r}: {_first_line(e)}", fpos) from None
        with scope as func:
            symbols = dict(func.inputs)
            while self.peek()[1] != "}":
                self.statement(symbols)
            self.expect("}")
            self._outputs(func, name, symbols)
        return name, func, attrs

    def _params(self) -> list[tuple[TextType, int, str, int]]:
        """`( type name, ... )`: each parameter's type, its position, name and the name's position."""
        self.expect("(")
        params: list[tuple[TextType, int, str, int]] = []
        if self.peek()[1] != ")":
            while True:
                tpos = self.peek()[2]
                t = self.type()
                pname, ppos = self.ident("a parameter name")
                params.append((t, tpos, pname, ppos))
                if not self.accept(","):
                    break
        self.expect(")", "',' or ')' in the parameter list")
        return params

    def _function_attrs(self) -> list[tuple[str, TextType, object]]:
        """The optional `[name = literal, ...]` after the parameters."""
        attrs = []
        if self.peek()[1] == "[":
            for aname, lit in self.attr_list():
                if not isinstance(lit, _Literal):
                    raise self.error(f"function attribute {aname!r} must be a literal", lit.pos)
                attrs.append((aname, lit.type, lit.value))
        return attrs

    def _outputs(self, func, name: str, symbols) -> None:
        """`-> (var, ...);` after the body: set as the outputs of `func`."""
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
        opos = self.expect(")", "',' or ')' in the output list")[2]
        self.expect(";", "';' after the function outputs")
        try:
            func.set_outputs(outs)
        except Exception as e:  # coremltools refusing the outputs
            raise self.error(f"function {name!r} outputs: {_first_line(e)}", opos) from None

    def placeholder(self, t: TextType, pos: int):
        from coremltools.converters.mil.mil import get_new_symbol

        if isinstance(t, StateType):
            shape = [d if d is not None else get_new_symbol() for d in t.wrapped.shape]
            dtype = self.builtin(t.wrapped.dtype, pos)
            return self.builder_call(
                pos, "a state parameter", mb.state_tensor_placeholder, shape=shape, dtype=dtype
            )
        if not isinstance(t, TensorType):
            raise self.error(f"a function parameter of type {format_type(t)} is not supported", pos)
        if t.is_scalar:  # coremltools' placeholders have rank >= 1
            raise self.error(
                f"a rank-0 function parameter ({format_type(t)}) is not supported; "
                f"use tensor<{t.dtype}, [1]>",
                pos,
            )
        shape = [d if d is not None else get_new_symbol() for d in t.shape]
        dtype = self.builtin(t.dtype, pos)
        return self.builder_call(
            pos, f"a {format_type(t)} parameter", mb.placeholder, shape=shape, dtype=dtype
        )

    def builder_call(self, pos: int, what: str, fn, **kwargs):
        """`fn(**kwargs)` (a coremltools Builder call); whatever it raises becomes a MilParseError
        at `pos`. The size guard (see `_install_size_guard`) is on for the call."""
        token = _BUILDING.set(True)
        try:
            return fn(**kwargs)
        except MilParseError:
            raise
        except Exception as e:  # coremltools validation: wrong inputs, types, shapes; or a bug in it
            raise self.error(f"{what}: {_first_line(e)}", pos) from None
        finally:
            _BUILDING.reset(token)

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
        try:
            self.build(op_type, op_pos, start, decls, args, attrs, symbols)
        except MilParseError:
            raise
        except Exception as e:  # noqa: BLE001 - the last line of defence: never a raw exception
            raise self.error(f"{op_type}: {_first_line(e)}", op_pos) from None

    def _static_tensor_type(self, pos: int) -> TensorType | None:
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
        dims, n, j = _static_dims(toks, i + 4)
        if dims is None or toks[j][1] != ">":
            return None
        t = TensorType(toks[i + 1][1], tuple(dims))
        if n > _MAX_ELEMENTS or (n == 0 and dims and max(dims) > _MAX_ELEMENTS):
            self.check_size(t, pos)  # the exact check, which raises
        self.i = j + 1
        return t

    def check_size(self, t: TensorType, pos: int) -> None:
        """Refuse a tensor type larger than MAX_TENSOR_BYTES (a `?` counts as 1), or with a
        dimension that alone exceeds it (possible only with another dimension 0)."""
        dims = [d for d in t.shape if d is not None]
        itemsize = max(BY_NAME[t.dtype].bits, 8) // 8
        size = math.prod(dims) * itemsize
        if size > MAX_TENSOR_BYTES or any(d * itemsize > MAX_TENSOR_BYTES for d in dims):
            raise self.error(
                f"{format_type(t)} is larger than anekit accepts ({MAX_TENSOR_BYTES} bytes per tensor; "
                "Core ML fails to compile weights over about 2 GB, mil-text.md §2.7)",
                pos,
            )

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
            self.nest(pos)
            items = [self.binding()]
            while self.accept(","):
                items.append(self.binding())
            self.expect(")", "',' or ')' in a tuple binding")
            self.depth -= 1
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
            fast = self._static_tensor_type(pos)
            if fast is not None:
                return fast
            return self._tensor_type(pos)
        if word not in ("list", "tuple", "dict", "state"):
            raise self.error(f"expected a type, found {word!r}", pos)
        return self._compound_type(word, pos)

    def _tensor_type(self, pos: int) -> TensorType:
        """`tensor<...>` after `tensor`, the general path (`?` dims, and the errors)."""
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
                        raise self.error("a dimension cannot be negative", self.tokens[self.i - 1][2])
                    dims.append(d)
                if not self.accept(","):
                    break
        self.expect("]", "',' or ']' in the shape")
        self.expect(">")
        t = TensorType(dt, tuple(dims))
        self.check_size(t, pos)
        return t

    def _compound_type(self, word: str, pos: int) -> TextType:
        """`list<...>`, `tuple<...>`, `dict<...>` or `state<...>` after the word."""
        self.expect("<")
        self.nest(pos)
        if word == "list":
            elem = self.type()
            self.expect(",")
            length = None
            if not self.accept("?"):
                length = self.integer("a list length")
                if length < 0:
                    raise self.error("a list length cannot be negative", self.tokens[self.i - 1][2])
            out = ListType(elem, length)
        elif word == "tuple":
            elems = []
            if self.peek()[1] != ">":
                while True:
                    elems.append(self.type())
                    if not self.accept(","):
                        break
            out = TupleType(tuple(elems))
        elif word == "dict":
            k = self.type()
            self.expect(",")
            out = DictType(k, self.type())
        else:
            inner = self.type()
            if not isinstance(inner, TensorType):
                raise self.error("state<> must wrap a tensor type", pos)
            out = StateType(inner)
        self.expect(">")
        self.depth -= 1
        return out

    def typed_value(self) -> _Literal:
        pos = self.peek()[2]
        self.nest(pos)
        t = self.type()
        self.expect("(", f"'(' after type {format_type(t)}")
        if self.peek()[1] == ")":
            raw = _Raw("(", [], pos)
        else:
            raw = self.value()
        self.expect(")", f"')' closing the {format_type(t)} literal")
        self.depth -= 1
        return _Literal(t, self.convert(t, raw, pos), pos)

    def value(self):
        kind, text, pos = self.peek()
        if kind in ("num", "hex", "special"):
            self.next()
            return self.number(kind, text, pos)
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
            self.nest(pos)
            items = []
            if self.peek()[1] != close:
                while True:
                    items.append(self.value())
                    if not self.accept(","):
                        break
            self.expect(close, f"',' or {close!r}")
            self.depth -= 1
            return _Raw(text, items, pos)
        raise self.error(f"expected a value, found {self.describe(self.peek())}", pos)

    def number(self, kind: str, text: str, pos: int) -> int | float:
        """A number token as a Python int (decimal integers) or float. Integers are exact (any size
        up to MAX_TOKEN_CHARS digits; the declared dtype's range is checked later); a float that
        does not fit a float64 is an error, not a silent inf (write `inf` for an infinity)."""
        if kind == "hex":
            try:
                return float.fromhex(text)
            except OverflowError:
                raise self.error(f"{_clip(text)} is beyond the range of any float type", pos) from None
            except ValueError:
                raise self.error(f"{_clip(text)} is not a hexadecimal float such as 0x1.8p+3", pos) from None
        if kind == "special":
            return float(text)
        if text.lstrip("+-").isdigit():
            return int(text)
        value = float(text)
        if math.isinf(value):
            raise self.error(f"{_clip(text)} is beyond the range of any float type", pos)
        return value

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
        path, offset = fields["path"], fields["offset"]
        if not isinstance(path.value, str):
            raise self.error("BLOBFILE path must be a string", path.pos)
        t = offset.type
        if not (isinstance(t, TensorType) and t.is_scalar and t.dtype in _INT_DTYPES):
            raise self.error(
                f"BLOBFILE offset must be an integer such as uint64(64), not {format_type(t)}", offset.pos
            )
        return _Blob(path.value, int(offset.value), path.pos)

    # -- literal conversion --------------------------------------------------------------------
    def convert(self, t: TextType, raw, pos: int):
        if isinstance(t, TensorType):
            if isinstance(raw, _Blob):
                return self.load_blob(t, raw, pos)
            return self.tensor_value(t, raw, pos)
        if isinstance(t, DictType):
            return self._convert_dict(t, raw, pos)
        if isinstance(t, TupleType):
            return self._convert_tuple(t, raw, pos)
        if isinstance(t, ListType):
            return self._convert_list(t, raw, pos)
        raise self.error(f"literals of type {format_type(t)} are not supported", pos)

    def _convert_dict(self, t: DictType, raw, pos: int) -> dict:
        if not isinstance(raw, _Raw) or raw.kind != "{":
            raise self.error(f"a {format_type(t)} literal is written {{{{key, value}}, ...}}", pos)
        out = {}
        for item in raw.items:
            if not isinstance(item, _Raw) or item.kind != "{" or len(item.items) != 2:
                raise self.error("each dict entry is written {key, value}", getattr(item, "pos", pos))
            key = self.convert(t.key, item.items[0], pos)
            if isinstance(key, np.ndarray) or not isinstance(key, Hashable):
                raise self.error(f"a dict key must be a scalar, not {format_type(t.key)}", item.pos)
            out[key] = self.convert(t.value, item.items[1], pos)
        return out

    def _convert_tuple(self, t: TupleType, raw, pos: int) -> tuple:
        if not isinstance(raw, _Raw) or raw.kind != "(" or len(raw.items) != len(t.elems):
            raise self.error(f"a {format_type(t)} literal needs {len(t.elems)} elements in ( )", pos)
        return tuple(self.convert(et, v, pos) for et, v in zip(t.elems, raw.items))

    def _convert_list(self, t: ListType, raw, pos: int) -> list:
        if not isinstance(raw, _Raw) or raw.kind != "[":
            raise self.error(f"a {format_type(t)} literal is written [ ... ]", pos)
        return [self.convert(t.elem, v, pos) for v in raw.items]

    def tensor_value(self, t: TensorType, raw, pos: int):
        if isinstance(raw, _Literal):  # a typed element inside a bare list
            raw = raw.value
        if t.dtype == "string":
            if t.is_scalar and isinstance(raw, str):
                return raw
            raise self.error("only scalar string literals are supported", pos)
        if t.is_scalar and isinstance(raw, (int, float)):  # the common case: one number
            return _scalar(self.numeric_array(t.dtype, [raw], pos))
        return self._array_value(t, raw, pos)

    def _array_value(self, t: TensorType, raw, pos: int):
        """A tensor literal other than one bare number: its leaves checked against the shape."""
        leaves: list = []
        _flatten(raw, leaves)
        if not all(isinstance(x, (int, float)) for x in leaves):
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
        return _scalar(arr) if t.is_scalar else arr.reshape(t.shape)

    def numeric_array(self, dt: str, leaves: list, pos: int) -> np.ndarray:
        """The values of a literal as an array of `dt`; a value the dtype cannot hold is an error:
        integers out of range, and (as in the blob writer) finite floats that would round to inf,
        e.g. fp16(70000): fp16 holds at most 65504."""
        d = dtype_of(dt)
        if d.numpy is None:
            raise self.error(f"literals of dtype {dt} are not supported", pos)
        if dt == "bool":
            return self._bool_array(leaves, pos)
        if d.is_int:
            return self._int_array(dt, d, leaves, pos)
        return self._float_array(dt, d, leaves, pos)

    def _bool_array(self, leaves: list, pos: int) -> np.ndarray:
        if not all(isinstance(x, bool) or x in (0, 1) for x in leaves):
            raise self.error("a bool literal holds true/false", pos)
        return np.array(leaves, dtype=np.bool_)

    def _int_array(self, dt: str, d, leaves: list, pos: int) -> np.ndarray:
        bad = [x for x in leaves if isinstance(x, float) and not x.is_integer()]
        if bad:
            raise self.error(f"{dt} literal holds a non-integer value {bad[0]!r}", pos)
        ints = [int(x) for x in leaves]
        lo, hi = _int_range(dt)
        out = [x for x in ints if not lo <= x <= hi]
        if out:
            raise self.error(f"value {_clip(str(out[0]))} is out of range for {dt} ([{lo}, {hi}])", pos)
        arr = np.array(ints, dtype=d.numpy)
        return arr.view(_SUB_BYTE_NUMPY[dt]) if dt in _SUB_BYTE_NUMPY else arr

    def _float_array(self, dt: str, d, leaves: list, pos: int) -> np.ndarray:
        """Floats as `dt`; a finite value that would round to inf is an error."""
        try:
            wide = np.array([float(x) for x in leaves], dtype=np.float64)
        except OverflowError:  # an int beyond float64
            big = next(x for x in leaves if isinstance(x, int) and abs(x) > _FLOAT64_MAX)
            raise self.error(f"value {_clip(str(big))} is out of range for {dt}", pos) from None
        if d.numpy == wide.dtype:
            return wide
        with np.errstate(over="ignore"):
            arr = wide.astype(d.numpy)
        overflow = np.isinf(arr) & np.isfinite(wide)
        if overflow.any():
            value = leaves[int(np.argmax(overflow))]
            limit = float(np.finfo(d.numpy).max)
            raise self.error(
                f"value {_clip(str(value))} is out of range for {dt} (largest finite value {limit:g}); "
                "write inf for an infinity",
                pos,
            )
        return arr

    def load_blob(self, t: TensorType, blob: _Blob, pos: int) -> np.ndarray:
        self.check_path(blob)
        try:
            rel = weight_relpath(blob.path)
        except WeightPathError as e:
            raise self.error(str(e), blob.pos) from None
        if any(d is None for d in t.shape):
            raise self.error("a BLOBFILE constant needs a static shape", pos)
        data = self.weight_bytes(blob.path, rel, blob.pos)
        try:
            arr = read_blob(data, blob.offset, t.dtype, t.shape, name=blob.path)
        except BlobError as e:
            raise self.error(f"bad weight blob: {e}", pos) from None
        return arr.view(_SUB_BYTE_NUMPY[t.dtype]) if t.dtype in _SUB_BYTE_NUMPY else arr

    def check_path(self, blob: _Blob) -> None:
        """A BLOBFILE path the file system can take: no control characters (a NUL cannot be in a
        path), at most MAX_PATH_BYTES, each component at most MAX_PATH_COMPONENT_BYTES."""
        path = blob.path
        if _UNPRINTABLE.search(path):
            raise self.error(f"BLOBFILE path {_clip(path)!r} holds a control character", blob.pos)
        size = len(path.encode("utf-8", "surrogatepass"))
        longest = max((len(c.encode("utf-8", "surrogatepass")) for c in path.split("/")), default=0)
        if size > MAX_PATH_BYTES or longest > MAX_PATH_COMPONENT_BYTES:
            raise self.error(
                f"BLOBFILE path {_clip(path)!r} is too long ({size} bytes, longest component {longest}); "
                f"paths are limited to {MAX_PATH_BYTES} bytes and {MAX_PATH_COMPONENT_BYTES} per component",
                blob.pos,
            )

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
        else:  # only a regular file inside the directory, after symlinks (anekit.safe_dir)
            try:
                data = read_weight_file(w, path)
            except WeightPathError as e:
                raise self.error(str(e), pos) from None
        self._weight_cache[path] = data
        return data

    # -- building ops --------------------------------------------------------------------------
    def build(self, op_type, op_pos, start, decls, args, attrs, symbols) -> None:
        op_name = self._merge_attrs(op_type, args, attrs)
        if op_name is None:
            op_name = decls[0][1] if decls else f"{op_type}_{start}"
        for _, vname, vpos in decls:
            if vname in symbols:
                raise self.error(f"variable {vname!r} is already defined", vpos)
        if op_type == "const":
            outputs = self._build_const(op_pos, decls, args, op_name)
        else:
            outputs = self._build_op(op_type, op_pos, args, symbols, op_name)
        if decls and len(outputs) != len(decls):
            raise self.error(f"{op_type} produces {len(outputs)} output(s), {len(decls)} declared", start)
        for decl, var in zip(decls, outputs):
            self.check_type(decl, type_of_sym(var.sym_type), decl[2], f"{op_type} computes")
            var.set_name(decl[1])
            symbols[decl[1]] = var

    def _merge_attrs(self, op_type, args, attrs) -> str | None:
        """Move the attributes other than `name` into `args`; the name attribute's value, if any."""
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
        return op_name

    def _build_const(self, op_pos, decls, args, op_name) -> tuple:
        lit = args.get("val")
        if not isinstance(lit, _Literal) or set(args) != {"val"}:
            raise self.error("const takes exactly one attribute val = <literal>", op_pos)
        if isinstance(lit.value, (dict, tuple, list)):
            raise self.error(f"const of type {format_type(lit.type)} is not supported", lit.pos)
        value = lit.value
        if len(decls) != 1:
            raise self.error("const has exactly one output", op_pos)
        self.check_type(decls[0], lit.type, lit.pos, "the literal is")
        return (self.call(op_pos, "const", {"val": value}, op_name),)

    def _build_op(self, op_type, op_pos, args, symbols, op_name) -> tuple:
        if not _is_op(op_type):
            raise self.error(f"unknown op {op_type!r}", op_pos)
        kwargs = {name: self.resolve(b, symbols, f"{op_name}_{name}") for name, b in args.items()}
        result = self.call(op_pos, op_type, kwargs, op_name)
        return tuple(result) if isinstance(result, (tuple, list)) else (result,)

    def call(self, pos: int, op_type: str, kwargs: dict, name: str):
        return self.builder_call(pos, op_type, getattr(mb, op_type), name=name, **kwargs)

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


def _static_dims(toks: list, j: int) -> tuple[list[int] | None, int, int]:
    """The fast path's `[int, ...]` from token j: (dims, their product, the index after `]`);
    dims None if a token is anything else (a `?`, a sign, a missing separator)."""
    dims, n = [], 1
    if toks[j][1] == "]":
        return dims, n, j + 1
    while True:
        kind, text, _ = toks[j]
        if kind != "num" or not text.isdigit():
            return None, n, j
        d = int(text)
        dims.append(d)
        n *= d
        sep = toks[j + 1][1]
        j += 2
        if sep == "]":
            return dims, n, j
        if sep != ",":
            return None, n, j


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _is_op(name: str) -> bool:
    """A MIL op coremltools' Builder knows (its registry, not any attribute of `mb`)."""
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    return (
        name in SSAOpRegistry.core_ops
        or name in SSAOpRegistry.dialect_ops
        or name in SSAOpRegistry.custom_ops
    ) and hasattr(mb, name)


# --- the size guard on coremltools' constant folding ------------------------------------------
#: True while the parser builds an op (see `_Parser.builder_call`).
_BUILDING: contextvars.ContextVar[bool] = contextvars.ContextVar("anekit_mil_building", default=False)


class _TooLarge(Exception):
    pass


@functools.lru_cache(maxsize=4096)  # few distinct types in a program; each is a (hashable) class
def _static_bytes(sym_type) -> int:
    """Bytes of a tensor type counting only its known dims (a `?` counts as 1); 0 for other types."""
    if not types.is_tensor(sym_type):
        return 0
    n = 1
    for d in sym_type.get_shape():
        if isinstance(d, (int, np.integer)):
            n *= int(d)
    name = types.builtin_to_string(sym_type.get_primitive())
    bits = BY_NAME[name].bits if name in BY_NAME else 64
    return n * max(bits, 8) // 8


def _install_size_guard() -> None:
    """Refuse, while the parser builds an op, an output larger than MAX_TENSOR_BYTES before the
    Builder materializes it: it evaluates every op whose inputs are all constant
    (`Operation._auto_val` calls `value_inference`), so `fill(shape = [65536, 65536, 4], ...)` would
    otherwise allocate 64 GiB while parsing (or later, in a backend, if its type says `?`). Output
    types are known at this point (type inference runs first), so the check costs one product per
    output. Outside the parser (the context variable is False) the Builder behaves as before."""
    from coremltools.converters.mil.mil.operation import Operation

    original = Operation._auto_val
    if getattr(original, "_anekit_guard", False):
        return

    def _auto_val(self, output_types):
        if _BUILDING.get():
            for t in output_types:
                size = _static_bytes(t)
                if size > MAX_TENSOR_BYTES:
                    raise _TooLarge(
                        f"its output {types.builtin_to_string(t.get_primitive())}{list(t.get_shape())} "
                        f"would be {size} bytes, more than the {MAX_TENSOR_BYTES}-byte limit on a tensor"
                    )
        return original(self, output_types)

    _auto_val._anekit_guard = True
    Operation._auto_val = _auto_val


_install_size_guard()


@functools.cache
def _int_range(dt: str) -> tuple[int, int]:
    """The values an integer dtype holds (sub-byte types by their bit width)."""
    d = dtype_of(dt)
    info = np.iinfo(d.numpy)
    lo, hi = (
        (-(1 << (d.bits - 1)), (1 << (d.bits - 1)) - 1) if dt.startswith("int") else (0, (1 << d.bits) - 1)
    )
    return max(lo, int(info.min)), min(hi, int(info.max))


#: Sub-byte dtypes as the Builder infers them from an array: int8/uint8 tagged with the MIL type
#: (coremltools types/type_int.py `np_uint4_dtype` ...); a plain uint8 array would make a uint8 const.
_SUB_BYTE_NUMPY = {
    name: np.dtype(types.type_mapping.string_to_nptype(name))
    for name in ("int4", "uint1", "uint2", "uint3", "uint4", "uint6")
}
_FLOAT64_MAX = float(np.finfo(np.float64).max)


def _compatible(a: TextType, b: TextType) -> bool:
    if isinstance(a, TensorType) and isinstance(b, TensorType):
        if a.dtype != b.dtype or len(a.shape) != len(b.shape):
            return False
        return all(x is None or y is None or x == y for x, y in zip(a.shape, b.shape))
    return type(a) is type(b)


def _scalar(arr: np.ndarray):
    """The one value of `arr`: a NumPy scalar, or a 0-d array for sub-byte dtypes, whose MIL type
    lives in the array's dtype metadata (a NumPy scalar would make a uint8 const of a uint4)."""
    return arr.reshape(()) if arr.dtype.metadata else arr[0]


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    elif isinstance(raw, np.generic):  # a typed scalar element, e.g. fp16(1) inside [ ]
        out.append(raw.item())
    else:
        out.append(raw)


def _nested(raw):
    if isinstance(raw, _Raw):
        return [_nested(x) for x in raw.items]
    return raw


def loads(
    text: str | bytes,
    weights: dict[str, bytes] | str | os.PathLike | None = None,
    *,
    filename: str = "<mil>",
) -> Program:
    """Parse MIL text into a coremltools Program.

    text: the MIL text, as a str or as UTF-8 bytes (bytes that are not UTF-8 are a MilParseError at
        the first bad byte).
    weights: the weight files the text's BLOBFILE constants refer to, as a dict keyed by their
        `@model_path/weights/...` path (like `MilModel.weights`) or a model directory holding `weights/`.

    Any text that is not a valid program raises MilParseError (file:line:col, and the line with a
    caret), never another exception; see MAX_NESTING, MAX_TOKEN_CHARS, MAX_TENSOR_BYTES and
    MAX_PATH_BYTES for the limits on what is accepted.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = _decode(bytes(text), filename)
    elif not isinstance(text, str):
        raise TypeError(f"MIL text must be str or bytes, not {type(text).__name__}")
    else:
        _check_encodable(text, filename)
    return _Parser(text, weights, filename).program()


def _check_encodable(text: str, filename: str) -> None:
    """A str holding a lone surrogate (bytes decoded with errors="surrogateescape") is no Unicode
    text: refused here, rather than failing when the program's names are written out again."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        line_start = text.rfind("\n", 0, e.start) + 1
        line_end = text.find("\n", e.start)
        raise MilParseError(
            f"the text holds a lone surrogate (U+{ord(text[e.start]):04X}), which is not Unicode text; "
            "decode MIL files as UTF-8 without errors='surrogateescape'",
            text.count("\n", 0, e.start) + 1,
            e.start - line_start + 1,
            text[line_start : line_end if line_end >= 0 else len(text)],
            filename,
        ) from None


def _decode(data: bytes, filename: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line_end = data.find(b"\n", e.start)
        source = data[line_start : line_end if line_end >= 0 else len(data)].decode("utf-8", "replace")
        col = len(data[line_start : e.start].decode("utf-8", "replace")) + 1
        raise MilParseError(
            f"the text is not valid UTF-8 (byte 0x{data[e.start]:02x} at byte offset {e.start}: {e.reason}); "
            "MIL text is UTF-8",
            data.count(b"\n", 0, e.start) + 1,
            col,
            source,
            filename,
        ) from None


def load_program(path: str | os.PathLike) -> Program:
    """Parse a model directory (or its `model.mil`) into a Program; weights are read from the
    directory's `weights/`. A file that cannot be read is a MilParseError too."""
    p = Path(path)
    root, name = (p, TEXT_FILE) if p.is_dir() else (p.parent, p.name)
    try:
        data = read_inside(root, name, WeightPathError, "MIL text")
    except WeightPathError as e:  # missing, a directory, a fifo, a link out of the directory
        raise MilParseError(str(e), 1, 1, "", str(root / name)) from None
    return loads(data, root, filename=str(root / name))
