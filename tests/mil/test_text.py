"""MIL text: printing, parsing, round trips, and errors that point at the right place."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anekit.backends.reference import compile as ref_compile
from anekit.mil import BlobWriter, MilModel, MilParseError, ct, dumps, load, load_program, loads, mb, types
from anekit.mil.literals import format_float

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_weights(text: str):
    """The constexpr fixture refers to one int8 [4, 4] blob; synthesize it (mil-text.md §6: real
    files' weights are LFS pointers, so tests make their own)."""
    if "BLOBFILE" not in text:
        return None
    w = BlobWriter()
    assert w.add(np.arange(-8, 8, dtype=np.int8).reshape(4, 4)) == 64
    return {"@model_path/weights/weight.bin": w.to_bytes()}


def conv_program(channels=64, seq=32, depth=3, seed=0):
    rng = np.random.default_rng(seed)
    weights = [
        (rng.standard_normal((channels, channels, 1, 1)) / channels**0.5).astype(np.float16)
        for _ in range(depth)
    ]

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, channels, 1, seq), dtype=types.fp16)],
        opset_version=ct.target.iOS18,
    )
    def prog(x):
        for i, w in enumerate(weights):
            x = mb.conv(
                x=x,
                weight=mb.const(val=w, name=f"w{i}"),
                strides=[1, 1],
                pad_type="valid",
                pad=[0, 0, 0, 0],
                dilations=[1, 1],
                groups=1,
                name=f"conv{i}",
            )
            x = mb.relu(x=x, name=f"relu{i}")
        return x

    return prog, weights


# --- fixtures in Core ML's and maderix's styles ----------------------------------------------
@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.mil")), ids=lambda p: p.name)
def test_fixture_parses_and_round_trips_stably(path):
    text = path.read_text()
    program = loads(text, fixture_weights(text), filename=str(path))
    once = dumps(program)
    twice = dumps(loads(once.text, once.weights))
    assert twice.text == once.text
    assert twice.weights == once.weights


def test_coreml_v10_canonical_scalars_compute():
    text = (FIXTURES / "coreml_v10_ios16.mil").read_text()
    program = loads(text)
    a = np.array([[1, 2, 3, 4]], np.float32)
    b = np.array([[0.5, 0, -1, 2]], np.float32)
    out = ref_compile(program, numerics="exact")(a=a, b=b)["out"]
    np.testing.assert_allclose(out, a * 3.0 + b)
    # printed back in the same dialect: program(1.0), canonical scalars, the file's own buildInfo
    printed = dumps(program).text
    assert printed.startswith("program(1.0)\n[buildInfo = dict<tensor<string, []>, tensor<string, []>>(")
    assert '"coremlc-version", "3402.4.1"' in printed
    assert (
        'tensor<fp32, []> k = const()[name = tensor<string, []>("k"), val = tensor<fp32, []>(0x1.8p+1)];'
        in printed
    )
    assert "func main<ios16>(" in printed
    # the name attribute is kept apart from the variable it names (mil-text.md §1.1)
    assert (
        'tensor<fp32, [1, 4]> out = add(x = scaled, y = b)[name = tensor<string, []>("op_7_add")];' in printed
    )


def test_multifunction_inline_literals_and_unnamed_ops():
    program = loads((FIXTURES / "coreml_v13_multifunction.mil").read_text())
    assert list(program.functions) == ["first", "second"]
    first = ref_compile(program, function="first")  # "ane" numerics: the cast to fp16 rounds
    x = np.array([[1, -2, 3], [0, 5e-9, -1]], np.float32)
    expected = np.maximum((-x).astype(np.float16), np.float16(-(2.0**-24))).astype(np.float32)
    np.testing.assert_array_equal(first(x=x)["output"], expected)
    second = ref_compile(program, function="second", numerics="exact")
    out = second(input=np.array([1, 1, 1, 1], np.float32))
    np.testing.assert_array_equal(out["output"], [2, 3, -2, 1])
    np.testing.assert_array_equal(out["small"], [False, False, True, True])
    text = dumps(program).text
    assert "func first<ios18>" in text and "func second<ios17>" in text
    # names are per function: `output` in both functions stays `output`
    assert text.count("} -> (output") == 2


def test_flexible_function_attributes_split_masks_and_inf():
    text = (FIXTURES / "coreml_v10_ios17_flexible.mil").read_text()
    program = loads(text)
    printed = dumps(program).text
    assert (
        "[FlexibleShapeInformation = tuple<tuple<tensor<string, []>, dict<tensor<string, []>, tensor<int32, [?]>>>"
        in printed
    )
    assert '{{"scale", [[1, 1], [1, 64]]}}' in printed
    assert "tensor<fp16, [1, ?]> scale" in printed
    assert "tensor<fp16, []>(-inf)" in printed
    audio = np.arange(24, dtype=np.float16).reshape(1, 4, 6)
    out = ref_compile(program)(audio=audio, scale=np.ones((1, 5), np.float16))
    left, right = audio[..., :3], audio[..., 3:]
    keep = np.array([[[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]]], bool)
    np.testing.assert_array_equal(out["picked"], np.where(keep, left, -np.inf))
    tiny = np.float16(1.5 * 2.0**-23)
    np.testing.assert_array_equal(out["lifted"], (right[:, 1:3, :] + tiny).astype(np.float16))


def test_maderix_style_compact_syntax_flat_mask_and_bare_bool():
    program = loads((FIXTURES / "maderix_style.mil").read_text())
    q = (np.random.default_rng(1).standard_normal((1, 2, 4, 32)) * 0.3).astype(np.float16)
    out = ref_compile(program, numerics="exact")(q=q)["out"]
    qd = q.astype(np.float64)
    scores = qd @ qd.transpose(0, 1, 3, 2) * float(np.float16(0.353553))
    scores = scores + np.triu(np.full((4, 4), -65504.0), 1)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, np.concatenate([p @ qd, qd], axis=1), rtol=1e-9, atol=1e-12)


def test_constexpr_attribute_form_reads_blob():
    text = (FIXTURES / "constexpr_attr_form.mil").read_text()
    program = loads(text, fixture_weights(text))
    x = np.array([[1.0, 2.0, -1.0, 0.5]], np.float32)
    w = (np.arange(-8, 8).reshape(4, 4) + 1) * 0.5
    np.testing.assert_allclose(ref_compile(program, numerics="exact")(x=x)["y"], x @ w.T)
    printed = dumps(program).text
    # iOS16-era constexpr ops keep all parameters as attributes (mil-text.md §1.6)
    assert "= constexpr_affine_dequantize()[axis = int32(0), name = string(" in printed
    assert 'quantized_data = tensor<int8, [4, 4]>(BLOBFILE(path = string("@model_path/weights/' in printed


# --- printer ------------------------------------------------------------------------------------
def test_default_header_layout_and_per_tensor_blobs():
    prog, weights = conv_program(depth=2)
    model = dumps(prog)
    lines = model.text.splitlines()
    assert lines[0] == "program(1.3)"
    assert lines[1] == (
        '[buildInfo = dict<string, string>({{"coremlc-component-MIL", "3510.2.1"}, {"coremlc-version", "3505.4.1"}, '
        '{"coremltools-component-milinternal", ""}, {"coremltools-version", "9.0"}})]'
    )
    assert lines[2] == "{"
    assert lines[3] == "    func main<ios18>(tensor<fp16, [1, 64, 1, 32]> x) {"
    assert lines[-2] == "    } -> (relu1);" and lines[-1] == "}"
    assert all(line.startswith("        ") and line.endswith(";") for line in lines[4:-2])
    assert all("[name = string(" in line for line in lines[4:-2])
    assert sorted(model.weights) == ["@model_path/weights/w0.bin", "@model_path/weights/w1.bin"]
    for i, w in enumerate(weights):
        blob = model.weights[f"@model_path/weights/w{i}.bin"]
        assert struct.unpack_from("<II", blob, 0) == (1, 2)  # count, version (mil-text.md §2.1)
        assert struct.unpack_from("<IIQQ", blob, 64) == (0xDEADBEEF, 1, w.nbytes, 128)
        assert blob[128 : 128 + w.nbytes] == w.tobytes()
        assert f'BLOBFILE(path = string("@model_path/weights/w{i}.bin"), offset = uint64(64))' in model.text
    # arguments sorted alphabetically (mil-text.md §1.6)
    conv_line = next(line for line in lines if "= conv(" in line)
    args = [a.split(" = ")[0] for a in conv_line.split("conv(")[1].split(")[")[0].split(", ")]
    assert args == sorted(args)


def test_m1_dialect_options_and_single_weight_file():
    prog, weights = conv_program(depth=3)
    model = dumps(
        prog, version="1.0", opset="ios16", build_info={"coremlc-version": "3505.4.1"}, weight_files="single"
    )
    text = model.text
    assert text.startswith(
        'program(1.0)\n[buildInfo = dict<tensor<string, []>, tensor<string, []>>({{"coremlc-version", "3505.4.1"}})]'
    )
    assert "func main<ios16>" in text
    # the builder's default consts are named by coremltools' per-process counters: match the form only
    assert re.search(
        r'tensor<int32, \[\]> conv0_groups_\d+ = const\(\)\[name = tensor<string, \[\]>\("conv0_groups_\d+"\), '
        r"val = tensor<int32, \[\]>\(1\)\];",
        text,
    )
    assert (
        'BLOBFILE(path = tensor<string, []>("@model_path/weights/weight.bin"), offset = tensor<uint64, []>(64))'
        in text
    )
    size = weights[0].nbytes  # 8192: each further blob sits at 64 + i * (64 + size) (§2.3)
    for i in range(3):
        assert f"offset = tensor<uint64, []>({64 + i * (64 + size)}))" in text
    assert list(model.weights) == ["@model_path/weights/weight.bin"]
    assert "buildInfo" not in dumps(prog, build_info=False).text
    canonical13 = dumps(prog, scalars="canonical").text
    assert canonical13.startswith("program(1.3)") and "tensor<int32, []>(1)" in canonical13


def test_small_constants_stay_inline_and_threshold_is_configurable():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 9), dtype=types.fp32)], opset_version=ct.target.iOS18)
    def prog(x):
        return mb.add(x=x, y=np.arange(9, dtype=np.float32).reshape(1, 9), name="y")

    assert dumps(prog).weights == {}
    assert "tensor<fp32, [1, 9]>([[0x0p+0, 0x1p+0, 0x1p+1," in dumps(prog).text
    assert len(dumps(prog, blob_threshold=9).weights) == 1


def test_names_that_are_not_identifiers_are_sanitized_consistently():
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4), dtype=types.fp32)], opset_version=ct.target.iOS18)
    def prog(x):
        a = mb.relu(x=x, name="layer.1/relu")
        b = mb.relu(x=a, name="tensor")
        return mb.add(x=a, y=b, name="9out")

    text = dumps(prog).text
    assert 'tensor<fp32, [1, 4]> layer_1_relu = relu(x = x)[name = string("layer.1/relu")];' in text
    assert "tensor_workaround = relu(x = layer_1_relu)" in text
    assert "} -> (_9out);" in text
    out = ref_compile(loads(text), numerics="exact")(x=np.array([[-1, 2, -3, 4]], np.float32))
    np.testing.assert_array_equal(out["_9out"], [[0, 4, 0, 8]])


@given(st.floats(allow_nan=False, width=64))
def test_hex_floats_round_trip_exactly(v):
    text = format_float(v)
    assert float.fromhex(text) == v or (math.isinf(v) and float(text) == v)
    if v != 0 and not math.isinf(v):
        mantissa = text.split("p")[0]
        assert not mantissa.endswith("0") or "." not in mantissa  # trailing zeros stripped (§1.5)


def test_hex_float_spellings_match_the_compiler():
    assert format_float(0.125) == "0x1p-3"
    assert format_float(-65504.0) == "-0x1.ffcp+15"
    assert format_float(0.0) == "0x0p+0"
    assert format_float(-1.0) == "-0x1p+0"
    assert format_float(2.0**-24) == "0x1p-24"
    assert format_float(float("-inf")) == "-inf"


# --- round trips on random programs -------------------------------------------------------------
_UNARY = ["relu", "sigmoid", "tanh", "exp", "sqrt_abs", "square"]


@st.composite
def random_programs(draw):
    channels = draw(st.sampled_from([1, 3, 8, 32]))
    seq = draw(st.sampled_from([1, 4, 32]))
    ops = draw(
        st.lists(
            st.sampled_from(_UNARY + ["add_const", "mul_const", "concat_self", "softmax"]),
            min_size=1,
            max_size=8,
        )
    )
    dtype = draw(st.sampled_from([types.fp16, types.fp32]))
    scale = draw(st.floats(-4, 4, allow_nan=False, width=16))
    return channels, seq, ops, dtype, scale


def build(channels, seq, ops, dtype, scale):
    npdt = np.float16 if dtype == types.fp16 else np.float32

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, channels, 1, seq), dtype=dtype)], opset_version=ct.target.iOS18
    )
    def prog(x):
        for i, name in enumerate(ops):
            if name == "sqrt_abs":
                x = mb.sqrt(x=mb.abs(x=x, name=f"abs{i}"), name=f"op{i}")
            elif name == "square":
                x = mb.mul(x=x, y=x, name=f"op{i}")
            elif name == "add_const":
                x = mb.add(x=x, y=np.full((1, channels, 1, 1), scale, npdt), name=f"op{i}")
            elif name == "mul_const":
                x = mb.mul(x=x, y=npdt(scale), name=f"op{i}")
            elif name == "concat_self":
                x = mb.slice_by_size(
                    x=mb.concat(values=(x, x), axis=3, name=f"cat{i}"),
                    begin=[0, 0, 0, seq // 2],
                    size=[1, channels, 1, seq],
                    name=f"op{i}",
                )
            elif name == "softmax":
                x = mb.softmax(x=x, axis=1, name=f"op{i}")
            else:
                x = getattr(mb, name)(x=x, name=f"op{i}")
        return x

    return prog, npdt


@settings(max_examples=30, deadline=None)
@given(random_programs(), st.integers(0, 2**16))
def test_random_programs_round_trip_to_the_same_outputs(spec, seed):
    prog, npdt = build(*spec)
    x = (np.random.default_rng(seed).standard_normal((1, spec[0], 1, spec[1])) * 2).astype(npdt)
    model = dumps(prog)
    reparsed = loads(model.text, model.weights)
    assert dumps(reparsed).text == model.text
    want = ref_compile(prog)(x=x)
    got = ref_compile(reparsed)(x=x)
    (name,) = want
    np.testing.assert_array_equal(got[name], want[name])


def test_save_and_load_directory(tmp_path):
    prog, _ = conv_program()
    model = dumps(prog)
    root = model.save(tmp_path / "m")
    assert (root / "model.mil").read_text() == model.text
    assert sorted(p.name for p in (root / "weights").iterdir()) == ["w0.bin", "w1.bin", "w2.bin"]
    back = load(root)
    assert back.text == model.text and back.weights == model.weights
    assert load(root / "model.mil").weights == model.weights
    x = np.random.default_rng(0).standard_normal((1, 64, 1, 32)).astype(np.float16)
    np.testing.assert_array_equal(
        ref_compile(load_program(root))(x=x)["relu2"], ref_compile(prog)(x=x)["relu2"]
    )


def test_save_refuses_weight_paths_that_escape(tmp_path):
    with pytest.raises(ValueError, match="escapes the model directory"):
        MilModel("program(1.3)\n{}\n", {"@model_path/../evil.bin": b"x"}).save(tmp_path / "m")
    assert not (tmp_path / "evil.bin").exists()


# --- errors -------------------------------------------------------------------------------------
HEAD = "program(1.3)\n{\n    func main<ios18>(tensor<fp32, [1, 4]> x) {\n"
TAIL = "    } -> (y);\n}\n"


def parse_error(body: str, weights=None) -> MilParseError:
    with pytest.raises(MilParseError) as info:
        loads(HEAD + body + TAIL, weights, filename="t.mil")
    return info.value


@pytest.mark.parametrize(
    "body, line, col, fragment",
    [
        (
            '        tensor<fp32, [1, 4]> y = relu(x = z)[name = string("y")];\n',
            4,
            43,
            "undefined variable 'z'",
        ),
        ("        tensor<fp32, [1, 4]> x = relu(x = x);\n", 4, 30, "already defined"),
        ("        tensor<fp32, [1, 4]> y = frobnicate(x = x);\n", 4, 34, "unknown op 'frobnicate'"),
        ("        tensor<fp32, [1, 4]> y = relu(x = x)\n", 5, 5, "';' at the end of the statement"),
        (
            "        tensor<fp32, [1, 5]> y = relu(x = x);\n",
            4,
            30,
            "declared tensor<fp32, [1, 5]> but relu computes tensor<fp32, [1, 4]>",
        ),
        (
            "        tensor<fp32, [3]> k = const()[val = tensor<fp32, [3]>([1, 2])];\n        tensor<fp32, [1, 4]> y = relu(x = x);\n",
            4,
            45,
            "needs 3 element(s), the literal has 2",
        ),
        ("        tensor<fp32, [1, 4]> y = relu(x = x) $;\n", 4, 46, "unexpected character '$'"),
        ("        tensor<fp33, [1, 4]> y = relu(x = x);\n", 4, 16, "unknown dtype 'fp33'"),
        (
            "        tensor<int8, [1]> k = const()[val = tensor<int8, [1]>([300])];\n        tensor<fp32, [1, 4]> y = relu(x = x);\n",
            4,
            45,
            "out of range for int8",
        ),
        ("        tensor<fp32, [1, 4]> y = add(x = x, y = x, x = x);\n", 4, 52, "argument 'x' given twice"),
        ("        tensor<fp32, [1, 4]> y = add(x = x, y = tensor<int32, [1]>([1]));\n", 4, 34, "add:"),
    ],
)
def test_errors_name_line_column_and_expectation(body, line, col, fragment):
    err = parse_error(body)
    assert (err.line, err.col) == (line, col), str(err)
    assert fragment in err.message
    assert str(err).startswith(f"t.mil:{line}:{col}: ")
    assert "^" in str(err)  # the offending line is shown with a caret


def blob_body(path: str) -> str:
    return (
        f'        tensor<fp32, [1, 4]> w = const()[val = tensor<fp32, [1, 4]>(BLOBFILE(path = string("{path}"), offset = uint64(64)))];\n'
        "        tensor<fp32, [1, 4]> y = add(x = x, y = w);\n"
    )


@pytest.mark.parametrize(
    "path",
    [
        "@model_path/../secret.bin",
        "@model_path//etc/passwd",
        "/etc/passwd",
        "@model_path/weights/../../x.bin",
    ],
)
def test_blobfile_paths_escaping_the_model_dir_are_refused(path, tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 256)
    err = parse_error(blob_body(path), weights=tmp_path / "model")
    assert "escapes the model directory" in err.message or "does not start with" in err.message


def test_blobfile_from_dict_and_directory(tmp_path):
    w = BlobWriter()
    w.add(np.array([[1, 2, 3, 4]], np.float32))
    data = w.to_bytes()
    text = HEAD + blob_body("@model_path/weights/w.bin") + TAIL
    x = np.ones((1, 4), np.float32)
    p1 = loads(text, {"@model_path/weights/w.bin": data})
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.bin").write_bytes(data)
    p2 = loads(text, tmp_path)
    for p in (p1, p2):
        np.testing.assert_array_equal(ref_compile(p, numerics="exact")(x=x)["y"], [[2, 3, 4, 5]])
    assert "no weights were given" in parse_error(blob_body("@model_path/weights/w.bin")).message
    assert (
        "not among the given weights"
        in parse_error(blob_body("@model_path/weights/v.bin"), {"@model_path/weights/w.bin": data}).message
    )


def test_malformed_blob_is_a_parse_error_at_the_constant():
    w = BlobWriter()
    w.add(np.array([[1, 2, 3, 4]], np.float32))
    data = bytearray(w.to_bytes())
    data[64:68] = b"\0\0\0\0"  # sentinel gone
    err = parse_error(blob_body("@model_path/weights/w.bin"), {"@model_path/weights/w.bin": bytes(data)})
    assert err.line == 4 and "bad weight blob" in err.message


def test_header_and_structure_errors():
    with pytest.raises(MilParseError, match="expected 'program'"):
        loads("func main<ios18>() {} -> ();")
    with pytest.raises(MilParseError, match="unknown opset 'ios99'"):
        loads("program(1.3)\n{\n func main<ios99>(tensor<fp32, [1]> x) {\n } -> (x);\n}\n")
    with pytest.raises(MilParseError, match="output 'nope' is not defined"):
        loads("program(1.3)\n{\n func main<ios18>(tensor<fp32, [1]> x) {\n } -> (nope);\n}\n")
    with pytest.raises(MilParseError, match="defines no function"):
        loads("program(1.3)\n{\n}\n")
    with pytest.raises(MilParseError, match="after the program's closing"):
        loads("program(1.3)\n{\n func main<ios18>(tensor<fp32, [1]> x) {\n } -> (x);\n}\n}")


def test_comments_and_odd_whitespace_are_ignored():
    text = (
        "program(1.3) // a comment\n{func main<ios18>(tensor<fp32,[1,4]>x){tensor<fp32,[1,4]>y=relu(x=x)"
        '[name=string("y")];}->(y);}'
    )
    out = ref_compile(loads(text), numerics="exact")(x=np.array([[-1, 0, 1, 2]], np.float32))
    np.testing.assert_array_equal(out["y"], [[0, 0, 1, 2]])


def test_string_escapes_survive_a_round_trip():
    text = (
        HEAD
        + '        tensor<fp32, [1, 4]> y = relu(x = x)[name = string("a \\"quoted\\" \\\\ name")];\n'
        + TAIL
    )
    program = loads(text)
    assert program.functions["main"].operations[-1].name == 'a "quoted" \\ name'
    assert '[name = string("a \\"quoted\\" \\\\ name")]' in dumps(program).text


def test_builder_default_norm_epsilon_is_printed_in_the_ops_dtype():
    # coremltools fills a missing epsilon with an fp32 const even for fp16 norms; written out as is,
    # its own validation (and reportedly the ANE compiler, mil-text.md §3.10) rejects the program.
    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 32, 1, 32), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        a = mb.layer_norm(x=x, axes=[1], gamma=np.ones(32, np.float16), name="ln")
        b = mb.batch_norm(x=x, mean=np.zeros(32, np.float16), variance=np.ones(32, np.float16), name="bn")
        return mb.instance_norm(x=mb.add(x=a, y=b, name="sum"), name="inn")

    model = dumps(prog)
    assert not re.search(r"fp32 \w*epsilon", model.text)
    assert re.search(
        r"fp16 ln_epsilon_\d+ = const\(\)\[name = string\(\"ln_epsilon_\d+\"\), val = fp16\(0x1.5p-17\)\];",
        model.text,
    )
    reparsed = loads(model.text, model.weights)
    x = np.random.default_rng(0).standard_normal((1, 32, 1, 32)).astype(np.float16)
    np.testing.assert_array_equal(ref_compile(reparsed)(x=x)["inn"], ref_compile(prog)(x=x)["inn"])


@pytest.mark.parametrize(
    "decl, fragment",
    [
        ("tensor<fp32, [1, -4]>", "a dimension cannot be negative"),
        ("tensor<fp32, [1, 4.0]>", "expected a dimension (an integer)"),
        ("tensor<fp32, [1 4]>", "',' or ']' in the shape"),
        ("tensor<fp32, [1, 4]", "expected '>'"),
    ],
)
def test_malformed_tensor_types_still_get_precise_errors(decl, fragment):
    err = parse_error(f"        {decl} y = relu(x = x);\n")
    assert fragment in err.message and err.line == 4


def test_flexible_and_scalar_tensor_types_parse():
    text = (
        "program(1.3)\n{\n    func main<ios18>(tensor<fp32, [?, 4]> x, tensor<fp32, [1]> s) {\n"
        '        tensor<fp32, [?, 4]> y = mul(x = x, y = s)[name = string("y")];\n    } -> (y);\n}\n'
    )
    printed = dumps(loads(text)).text
    assert (
        "tensor<fp32, [?, 4]> x, tensor<fp32, [1]> s)" in printed
        and "tensor<fp32, [?, 4]> y = mul(x = x, y = s)" in printed
    )
    with pytest.raises(MilParseError, match="rank-0 function parameter"):
        loads(text.replace("tensor<fp32, [1]> s", "fp32 s"))
