"""The MIL parser refuses every bad input with a MilParseError (file:line:col and a caret), never
another exception: bad UTF-8, deep nesting, overflowing or huge numbers, over-long names and paths,
tensors over the size limit (refused before anything is allocated), Builder failures."""

from __future__ import annotations

import os
import re
import tracemalloc

import numpy as np
import pytest

from anekit.backends.reference import compile as ref_compile
from anekit.errors import AnekitError
from anekit.mil import BlobWriter, MilParseError, ct, dumps, load_program, loads, mb, types
from anekit.mil.parser import (
    MAX_NESTING,
    MAX_PATH_BYTES,
    MAX_PATH_COMPONENT_BYTES,
    MAX_TENSOR_BYTES,
    MAX_TOKEN_CHARS,
)

HEAD = "program(1.3)\n{\n    func main<ios18>(tensor<fp32, [1, 4]> x) {\n"
RELU = '        tensor<fp32, [1, 4]> y = relu(x = x)[name = string("y")];\n'
TAIL = "    } -> (y);\n}\n"


def text_with(line: str) -> str:
    """A valid program with `line` as its fourth line (before the relu that makes y)."""
    return HEAD + line + "\n" + RELU + TAIL


def refused(text, weights=None, **kw) -> MilParseError:
    with pytest.raises(MilParseError) as info:
        loads(text, weights, filename="t.mil", **kw)
    err = info.value
    assert str(err).startswith(f"t.mil:{err.line}:{err.col}: "), str(err)
    return err


def const(decl: str, literal: str, name: str = "k") -> str:
    return f'        {decl} {name} = const()[name = string("{name}"), val = {literal}];'


def const_value(program, name: str = "k"):
    return next(op for op in program.functions["main"].operations if op.name == name).outputs[0].val


# --- UTF-8 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82"])
def test_bytes_that_are_not_utf8_are_a_parse_error_at_the_bad_byte(bad):
    data = text_with('        tensor<fp32, [1, 4]> z = relu(x = x)[name = string("ab')
    data = data.encode("utf-8").replace(b'"ab', b'"ab' + bad + b'")];', 1)
    err = refused(data)
    assert (err.line, err.col) == (4, 63)  # the column (in characters) of the bad byte
    assert "not valid UTF-8" in err.message and f"0x{bad[0]:02x}" in err.message
    assert err.__cause__ is None and err.__suppress_context__


def test_utf8_bytes_parse_like_the_text():
    text = text_with("        // café, 日本語 in a comment")
    a, b = loads(text), loads(text.encode("utf-8"))
    x = np.array([[-1, 2, -3, 4]], np.float32)
    np.testing.assert_array_equal(ref_compile(a)(x=x)["y"], ref_compile(b)(x=x)["y"])


def test_a_file_that_is_not_utf8_is_a_parse_error(tmp_path):
    (tmp_path / "model.mil").write_bytes(text_with("        // \xff").encode("latin-1"))
    with pytest.raises(MilParseError) as info:
        load_program(tmp_path)
    assert (info.value.line, info.value.col) == (4, 12)
    assert info.value.filename == str(tmp_path / "model.mil")


def test_a_missing_or_unreadable_model_file_is_a_parse_error(tmp_path):
    with pytest.raises(MilParseError, match="does not exist"):
        load_program(tmp_path)
    (tmp_path / "model.mil").mkdir()
    with pytest.raises(MilParseError, match="directory"):
        load_program(tmp_path)


def test_lone_surrogates_in_a_str_are_refused():
    err = refused(text_with('        tensor<fp32, [1, 4]> z = relu(x = x)[name = string("a\udcffb")];'))
    assert (err.line, err.col) == (4, 62) and "lone surrogate" in err.message
    str(err).encode("utf-8")  # the message itself can be printed


# --- nesting -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line",
    [
        const("tensor<fp32, [1]>", "tensor<fp32, [1]>(" + "[" * 100_000 + "1" + "]" * 100_000 + ")"),
        const("tensor<fp32, [1]>", "tensor<fp32, [1]>(" + "[" * 5000),
        "        " + "list<" * 50_000 + "fp16" + ", ?>" * 50_000 + " k = const();",
        "        tensor<fp32, [1, 4]> z = add(x = " + "(" * 50_000 + "x" + ")" * 50_000 + ", y = x);",
        const("fp32", "fp32(" * 20_000 + "1" + ")" * 20_000),
        const("tensor<fp32, [1]>", "tensor<fp32, [1]>(" + "{" * 3000),
    ],
    ids=["brackets", "unclosed", "type-params", "tuple-binding", "typed-values", "braces"],
)
def test_nesting_beyond_the_limit_is_a_parse_error_not_a_recursion_error(line):
    err = refused(text_with(line))
    assert err.line == 4 and f"nesting deeper than {MAX_NESTING} levels" in err.message


def test_real_nesting_depths_parse():
    # a rank-5 tensor literal inside a typed value: well within the limit
    literal = "tensor<int32, [1, 1, 1, 1, 2]>([[[[[1, 2]]]]])"
    program = loads(text_with(const("tensor<int32, [1, 1, 1, 1, 2]>", literal)))
    np.testing.assert_array_equal(const_value(program), [[[[[1, 2]]]]])


# --- numbers -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "literal, fragment",
    [
        ("fp16(0x1p+1024)", "0x1p+1024 is beyond the range of any float type"),
        ("fp32(-0x1p+99999)", "beyond the range of any float type"),
        ("fp32(1e400)", "1e400 is beyond the range of any float type"),
        ("fp64(1" + "0" * 400 + ".5)", "beyond the range of any float type"),
        ("fp32(" + "9" * 400 + ")", "out of range for fp32"),
        ("fp16(70000)", "value 70000 is out of range for fp16 (largest finite value 65504)"),
        ("fp16(65520)", "out of range for fp16"),
        ("fp16(0x1p+16)", "out of range for fp16"),
        ("fp32(0x1p+128)", "out of range for fp32"),
        ("fp16(0xp+1)", "is not a hexadecimal float"),
    ],
)
def test_float_literals_that_overflow_are_errors_not_inf(literal, fragment):
    dt = literal.split("(")[0]
    err = refused(text_with(const(dt, literal)))
    assert (err.line, fragment in err.message) == (4, True), err.message


def test_fp16_overflow_in_a_tensor_names_the_value():
    err = refused(text_with(const("tensor<fp16, [3]>", "tensor<fp16, [3]>([1, -70000, 2])")))
    assert "value -70000 is out of range for fp16" in err.message


@pytest.mark.parametrize(
    "literal, expected",
    [
        ("fp16(65504)", 65504.0),
        ("fp16(65519)", 65504.0),  # rounds to the largest finite fp16, not to inf
        ("fp16(inf)", np.inf),
        ("fp16(-inf)", -np.inf),
        ("fp32(-inf)", -np.inf),
        ("fp16(1e-10)", 0.0),  # underflow rounds to zero, as the compiler does
        ("fp32(0x1.fffffep+127)", 3.4028234663852886e38),
    ],
)
def test_representable_floats_and_explicit_infinities_stay_valid(literal, expected):
    dt = literal.split("(")[0]
    assert float(const_value(loads(text_with(const(dt, literal))))) == expected


@pytest.mark.parametrize(
    "literal, fragment",
    [
        ("int32(" + "9" * 5000 + ")", f"the limit is {MAX_TOKEN_CHARS}"),  # past Python's int digit limit
        ("int32(" + "9" * 1000 + ")", "out of range for int32"),
        ("int64(9223372036854775808)", "out of range for int64"),
        ("uint64(-1)", "out of range for uint64"),
        ("int32(2147483648)", "out of range for int32"),
        ("uint8(256)", "out of range for uint8"),
        ("int32(1e10)", "out of range for int32"),
        ("int32(inf)", "non-integer value inf"),
        ("uint4(16)", "out of range for uint4"),
    ],
)
def test_integers_outside_the_declared_dtype_are_errors(literal, fragment):
    dt = literal.split("(")[0]
    err = refused(text_with(const(dt, literal)))
    assert err.line == 4 and fragment in err.message, err.message


# --- names and paths -----------------------------------------------------------------------------
def test_over_long_names_and_numbers_are_refused_at_their_start():
    name = "v" * (MAX_TOKEN_CHARS + 1)
    err = refused(text_with(f'        tensor<fp32, [1, 4]> {name} = relu(x = x)[name = string("a")];'))
    assert (err.line, err.col) == (4, 30) and f"{MAX_TOKEN_CHARS + 1} characters" in err.message
    assert len(str(err)) < 1000  # the shown line is cut around the caret
    line = const("fp32", "fp32(0." + "1" * 2000 + ")")
    err = refused(text_with(line))
    assert (err.line, err.col) == (4, line.index("0.1") + 1)


def test_a_long_string_is_not_a_long_name_and_round_trips():
    long_name = "op" * 3000
    program = loads(text_with(f'        tensor<fp32, [1, 4]> z = relu(x = x)[name = string("{long_name}")];'))
    assert any(op.name == long_name for op in program.functions["main"].operations)
    assert long_name in dumps(loads(dumps(program).text)).text


def blob_line(path: str, offset: str = "uint64(64)", decl: str = "tensor<fp32, [1, 4]>") -> str:
    return const(decl, f'{decl}(BLOBFILE(path = string("{path}"), offset = {offset}))')


@pytest.mark.parametrize(
    "path, fragment",
    [
        ("@model_path/weights/" + "a" * (MAX_PATH_COMPONENT_BYTES + 1) + ".bin", "is too long"),
        ("@model_path/weights/" + "é" * 130 + ".bin", "is too long"),  # 260 bytes in one component
        ("@model_path/weights/" + "d/" * (MAX_PATH_BYTES // 2) + "w.bin", "is too long"),
        ("@model_path/weights/w\\0.bin", "control character"),
        ("@model_path/weights/w\\n.bin", "control character"),
    ],
)
def test_blobfile_paths_the_file_system_cannot_take_are_refused(path, fragment, tmp_path):
    (tmp_path / "weights").mkdir()
    line = blob_line(path)
    for weights in (tmp_path, {}):
        err = refused(text_with(line), weights)
        assert (err.line, err.col) == (4, line.index('string("@') + 1), err.message
        assert fragment in err.message


@pytest.mark.parametrize(
    "offset, fragment",
    [
        ("fp32(64.5)", "offset must be an integer such as uint64(64), not fp32"),
        ('string("64")', "offset must be an integer"),
        ("int32(-64)", "negative"),
        ("uint64(18446744073709551615)", "beyond the end of the file"),
    ],
)
def test_blobfile_offsets_must_be_integers_inside_the_file(offset, fragment):
    w = BlobWriter()
    w.add(np.array([[1, 2, 3, 4]], np.float32))
    err = refused(
        text_with(blob_line("@model_path/weights/w.bin", offset)), {"@model_path/weights/w.bin": w.to_bytes()}
    )
    assert err.line == 4 and fragment in err.message, err.message


# --- sizes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line",
    [
        blob_line("@model_path/weights/w.bin", decl="tensor<fp16, [1099511627776]>"),
        blob_line("@model_path/weights/w.bin", decl="tensor<fp32, [65536, 65536]>"),
        const("tensor<fp16, [1099511627776]>", "tensor<fp16, [1099511627776]>([1])"),
        const("tensor<int8, [0, 4294967296]>", "tensor<int8, [0, 4294967296]>([])"),
        "        tensor<fp32, [?, 1048576, 1024]> k = const();",
    ],
    ids=["blob-2^40", "blob-16GiB", "inline-2^40", "zero-times-huge", "declared-with-?"],
)
def test_tensors_over_the_size_limit_are_refused_before_anything_is_read(line):
    tracemalloc.start()
    try:
        err = refused(text_with(line), {"@model_path/weights/w.bin": b""})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.line == 4 and f"larger than anekit accepts ({MAX_TENSOR_BYTES} bytes" in err.message
    assert peak < 50 * 2**20


def test_a_function_parameter_over_the_size_limit_is_refused():
    err = refused(
        "program(1.3)\n{\n    func main<ios18>(tensor<fp32, [1024, 1024, 1024]> x) {\n    } -> (x);\n}\n"
    )
    assert (err.line, err.col) == (3, 22) and "larger than anekit accepts" in err.message
    # a dimension that alone exceeds the limit (the product is 0) is refused too
    err = refused(
        "program(1.3)\n{\n    func main<ios18>(tensor<fp32, [0, 99999999999999999999999]> x) {\n    } -> (x);\n}\n"
    )
    assert (err.line, err.col) == (3, 22) and "larger than anekit accepts" in err.message


def test_the_size_limit_admits_a_tensor_of_exactly_the_limit():
    n = MAX_TENSOR_BYTES // 2  # fp16: exactly the limit, declared on a parameter (never allocated)
    program = loads(f"program(1.3)\n{{\n    func main<ios18>(tensor<fp16, [{n}]> x) {{\n    }} -> (x);\n}}\n")
    assert program.functions["main"].inputs["x"].shape == (n,)


def test_an_op_whose_constant_output_exceeds_the_limit_is_refused_before_it_is_computed():
    # coremltools folds ops with constant inputs while building them: fill would allocate 4 GiB here
    line = (
        "        tensor<fp32, [?, ?]> k = fill(shape = tensor<int32, [2]>([32768, 32768]), "
        'value = fp32(0))[name = string("k")];'
    )
    tracemalloc.start()
    try:
        err = refused(text_with(line))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (err.line, err.col) == (4, 34)
    assert "fill: its output fp32[32768, 32768] would be 4294967296 bytes" in err.message
    assert peak < 50 * 2**20


def test_the_size_guard_is_off_outside_the_parser():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1,), dtype=types.fp32)], opset_version=ct.target.iOS18)
    def prog(x):
        return mb.add(x=x, y=mb.fill(shape=[2, 3], value=1.0, name="f"), name="y")

    assert prog.functions["main"].find_ops(op_type="fill")[0].outputs[0].val.shape == (2, 3)


# --- Builder failures -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["program", "placeholder", "TensorSpec", "__init__"])
def test_only_registered_ops_are_built(name):
    err = refused(text_with(f"        tensor<fp32, [1, 4]> z = {name}(x = x);"))
    assert (err.line, err.col) == (4, 34) and f"unknown op {name!r}" in err.message


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError("k"), RecursionError(), MemoryError()])
def test_any_exception_from_the_builder_is_a_parse_error_at_its_statement(monkeypatch, exc):
    def broken(**kwargs):
        raise exc

    monkeypatch.setattr(mb, "relu", broken)
    err = refused(text_with("        tensor<fp32, [1, 4]> z = relu(x = x);"))
    assert (err.line, err.col) == (4, 34) and err.message.startswith("relu: ")
    monkeypatch.setattr(mb, "placeholder", broken)
    err = refused(text_with(""))
    assert (err.line, err.col) == (3, 22) and "tensor<fp32, [1, 4]> parameter" in err.message


def test_a_dict_key_must_be_a_scalar():
    text = (
        'program(1.3)\n[buildInfo = dict<tensor<int32, [2]>, string>({{[1, 2], "a"}})]\n{\n'
        "    func main<ios18>(tensor<fp32, [1]> x) {\n    } -> (x);\n}\n"
    )
    err = refused(text)
    assert err.line == 2 and "a dict key must be a scalar" in err.message


def test_every_error_is_an_anekit_error_and_a_value_error():
    err = refused(text_with(const("fp16", "fp16(70000)")))
    assert isinstance(err, AnekitError) and isinstance(err, ValueError)


# --- sub-byte constants ------------------------------------------------------------------------
def test_uint4_constants_keep_their_type_inline_and_from_a_blob():
    w = BlobWriter()
    w.add(np.array([[1, 2, 3, 15]], np.uint8), "uint4")
    weights = {"@model_path/weights/q.bin": w.to_bytes()}
    for line in (
        blob_line("@model_path/weights/q.bin", decl="tensor<uint4, [1, 4]>"),
        const("tensor<uint4, [1, 4]>", "tensor<uint4, [1, 4]>([[1, 2, 3, 15]])"),
    ):
        program = loads(text_with(line), weights)
        var = next(op for op in program.functions["main"].operations if op.name == "k").outputs[0]
        assert types.builtin_to_string(var.dtype) == "uint4"
        np.testing.assert_array_equal(var.val, [[1, 2, 3, 15]])
        assert "tensor<uint4, [1, 4]> k = const()" in dumps(program).text
    scalar = loads(text_with(const("uint4", "uint4(7)")))
    assert int(const_value(scalar)) == 7


def test_inline_blob_constants_round_trip_to_a_fixed_point():
    # consts feeding a constexpr op are printed inline, in a file named after the op and argument
    # (what loads calls the const it reads back): loads + dumps is then a fixed point
    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 16, 1, 4), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        q = mb.const(val=(np.arange(256).reshape(16, 16, 1, 1) % 16).astype(types.np_uint4_dtype), name="Wq")
        w = mb.constexpr_blockwise_shift_scale(
            data=q, scale=np.full((16, 2, 1, 1), 0.5, np.float16), name="dq"
        )
        return mb.conv(x=x, weight=w, name="y")

    once = dumps(prog)
    assert re.search(
        r'data = tensor<uint4, \[16, 16, 1, 1\]>\(BLOBFILE\(path = string\("@model_path/weights/dq_data\.bin"',
        once.text,
    )
    twice = dumps(loads(once.text, once.weights))
    assert twice.text == once.text and twice.weights == once.weights


# --- the error message ---------------------------------------------------------------------------
def test_the_shown_line_is_printable_and_the_caret_stays_under_the_column():
    err = refused(text_with("\t  tensor<fp32, [1, 4]> z = relu(x = x) $\x01;"))
    shown, caret = str(err).splitlines()[1:3]
    assert shown.index("$") == caret.index("^") and "\x01" not in shown and "\t" not in shown


def test_model_directory_with_a_weight_dir_symlink_escape_is_a_parse_error(tmp_path):
    outside = tmp_path / "outside.bin"
    w = BlobWriter()
    w.add(np.array([[1, 2, 3, 4]], np.float32))
    outside.write_bytes(w.to_bytes())
    model = tmp_path / "m"
    (model / "weights").mkdir(parents=True)
    os.symlink(outside, model / "weights" / "w.bin")
    (model / "model.mil").write_text(text_with(blob_line("@model_path/weights/w.bin")))
    with pytest.raises(MilParseError, match="outside the directory"):
        load_program(model)
