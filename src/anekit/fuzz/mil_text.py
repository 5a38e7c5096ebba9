"""Fuzz target `mil`: mutated real MIL text, parsed by `anekit.mil`, then run on the reference backend.

Seeds are MIL texts nobody fuzzing them wrote: the test fixtures (`tests/mil/fixtures`), the held-out
corpus (`../shared/mil-corpus/*/model.mil`, with its real weights where it has them) when this is a
source checkout that has them, and always a few texts printed by `anekit.mil.dumps` from small
coremltools programs, so the target works from an installed package too. Which seeds exist decides
what case `i` is: a case reproduces on a machine with the same seed files.

Each case applies one to four structure-aware mutations (byte flips, truncation, duplicated or
deleted lines, deep nesting, huge numbers, bad UTF-8, long tokens, swapped dtypes and shapes,
altered BLOBFILE paths and offsets, swapped ops, damaged weight files), parses the result (from a
string, from bytes or from a model directory) and, when that succeeds, runs the program with
`anekit.compile(program, backend="reference")` on small random inputs of its declared shapes.
Programs with a tensor above `RUN_ELEMENT_LIMIT` elements are parsed but not run.
"""

from __future__ import annotations

import functools
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Seeds longer than this are left out: a case must stay well under the runner's time limit.
MAX_SEED_CHARS = 64_000
#: A parsed program is run only when every static tensor in it has at most this many elements.
RUN_ELEMENT_LIMIT = 1 << 18
#: Size given to every flexible (`?`) input dimension of one case is drawn from these.
FLEXIBLE_SIZES = (1, 2, 3, 5, 7)

_REPO = Path(__file__).resolve().parents[3]
_FIXTURES = _REPO / "tests" / "mil" / "fixtures"
_CORPUS = _REPO.parent / "shared" / "mil-corpus"


@dataclass(frozen=True)
class Seed:
    name: str
    text: str
    weights: dict[str, bytes] | None  #: keyed by `@model_path/weights/...`, as `loads` takes them
    weights_dir: Path | None = None  #: a real model directory holding `weights/`, when there is one


@dataclass
class Case:
    seed: str
    data: str | bytes  #: the mutated text (bytes when it is not valid UTF-8, or to test bytes input)
    weights: dict[str, bytes] | Path | None
    via: str  #: "loads" (text + weights), or "dir" (written to a model directory, load_program)
    input_seed: int
    mutations: list[str] = field(default_factory=list)


# --- seeds ----------------------------------------------------------------------------------------
@functools.cache
def seeds() -> tuple[Seed, ...]:
    """Every seed, in a fixed order: fixtures, corpus (when present), generated."""
    out = []
    for path in sorted(_FIXTURES.glob("*.mil")) if _FIXTURES.is_dir() else []:
        out.append(_seed_from_text(f"fixture:{path.name}", path.read_text(encoding="utf-8")))
    for case in sorted(_CORPUS.iterdir()) if _CORPUS.is_dir() else []:
        mil = case / "model.mil"
        if not mil.is_file() or mil.stat().st_size > MAX_SEED_CHARS:
            continue
        text = mil.read_text(encoding="utf-8")
        wdir = case / "weights"
        if wdir.is_dir():
            weights = {f"@model_path/weights/{f.name}": f.read_bytes() for f in sorted(wdir.iterdir())}
            out.append(Seed(f"corpus:{case.name}", text, weights, case))
        else:
            out.append(_seed_from_text(f"corpus:{case.name}", text))
    out.extend(_generated_seeds())
    return tuple(out)


_BLOBREF = re.compile(
    r"tensor<(\w+),\s*\[([0-9,\s]*)\]>\(\s*BLOBFILE\(\s*path\s*=\s*(?:tensor<string,\s*\[\]>|string)"
    r'\(\s*"([^"]+)"\s*\)\s*,\s*offset\s*=\s*(?:tensor<uint64,\s*\[\]>|uint64)\(\s*(\d+)\s*\)'
)


def _seed_from_text(name: str, text: str) -> Seed:
    """A seed whose weight files are not at hand: synthesize blobs of the declared dtypes and shapes
    with anekit's own BlobWriter and point the text's offsets at them."""
    if "BLOBFILE" not in text:
        return Seed(name, text, None)
    from ..mil.blob import BlobWriter
    from ..mil.dtypes import dtype as dtype_of

    rng = np.random.default_rng(0)
    writers: dict[str, BlobWriter] = {}
    placed: dict[tuple[str, int], int] = {}
    for m in _BLOBREF.finditer(text):
        dt, dims, path, offset = m.group(1), m.group(2), m.group(3), int(m.group(4))
        if (path, offset) in placed:
            continue
        shape = tuple(int(d) for d in dims.replace(" ", "").split(",") if d)
        d = dtype_of(dt)
        lo, hi = _value_range(dt)
        n = int(np.prod(shape, dtype=np.int64))
        if d.is_float:  # a random block repeated: large weights are made as fast as small ones
            block = (rng.standard_normal(min(n, 4096)) * 0.05).astype(d.numpy)
        else:
            block = rng.integers(max(lo, 0), min(hi, 3) + 1, size=min(n, 4096)).astype(d.numpy)
        arr = np.resize(block, shape)
        placed[(path, offset)] = writers.setdefault(path, BlobWriter()).add(arr, dt)

    def repoint(m: re.Match) -> str:
        new = placed[(m.group(3), int(m.group(4)))]
        whole, at = m.group(0), m.start(0)
        return whole[: m.start(4) - at] + str(new) + whole[m.end(4) - at :]

    text = _BLOBREF.sub(repoint, text)
    return Seed(name, text, {path: w.to_bytes() for path, w in writers.items()})


def _value_range(dt: str) -> tuple[int, int]:
    from ..mil.dtypes import dtype as dtype_of

    d = dtype_of(dt)
    if d.is_float or d.numpy is None:
        return -1, 1
    if d.bits < 8:
        return (
            (-(1 << (d.bits - 1)), (1 << (d.bits - 1)) - 1)
            if dt.startswith("int")
            else (0, (1 << d.bits) - 1)
        )
    info = np.iinfo(d.numpy)
    return int(info.min), int(info.max)


def _generated_seeds() -> list[Seed]:
    """Small programs printed by `dumps`: the seeds that exist wherever anekit is installed."""
    from ..mil import ct, dumps, mb, types

    rng = np.random.default_rng(0)
    fp16 = types.fp16
    progs = {}

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 16, 1, 8), dtype=fp16)], opset_version=ct.target.iOS18)
    def conv_chain(x):
        w = (rng.standard_normal((16, 16, 1, 1)) / 4).astype(np.float16)
        y = mb.conv(x=x, weight=w, name="conv")
        y = mb.add(x=mb.relu(x=y, name="relu"), y=np.float16(0.5), name="shift")
        return mb.mul(x=y, y=mb.sigmoid(x=y, name="gate"), name="y")

    progs["conv_chain"] = conv_chain

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 8), dtype=types.fp32)], opset_version=ct.target.iOS18)
    def attention_like(x):
        w = (rng.standard_normal((8, 8)) / 3).astype(np.float32)
        q = mb.matmul(x=x, y=w, name="proj")
        s = mb.matmul(x=q, y=x, transpose_y=True, name="scores")
        p = mb.softmax(x=s, axis=-1, name="probs")
        o = mb.matmul(x=p, y=x, name="mix")
        return mb.layer_norm(x=o, axes=[-1], epsilon=np.float32(1e-5), name="y")

    progs["attention_like"] = attention_like

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3, 4), dtype=types.fp32)], opset_version=ct.target.iOS17)
    def shapes(x):
        t = mb.transpose(x=x, perm=[0, 2, 1], name="t")
        r = mb.reshape(x=t, shape=[2, 12], name="r")
        c = mb.concat(values=(r, r), axis=1, name="c")
        s = mb.slice_by_size(x=c, begin=[0, 3], size=[2, 10], name="s")
        g = mb.gather(x=s, indices=np.array([1, 0, 1], np.int32), axis=0, name="g")
        return mb.reduce_sum(x=g, axes=[1], keep_dims=False, name="y")

    progs["shapes"] = shapes

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8), dtype=types.fp32)], opset_version=ct.target.iOS16)
    def int8_dequant(x):
        w = mb.constexpr_affine_dequantize(
            quantized_data=rng.integers(-8, 8, (8, 8)).astype(np.int8),
            zero_point=np.int8(0),
            scale=np.float32(0.125),
            axis=0,
            name="w",
        )
        return mb.linear(x=x, weight=w, name="y")

    progs["int8_dequant"] = int8_dequant

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 16, 1, 4), dtype=fp16)], opset_version=ct.target.iOS18)
    def uint4_blockwise(x):
        q = mb.const(val=rng.integers(0, 16, (16, 16, 1, 1)).astype(types.np_uint4_dtype), name="wq")
        scale = (rng.random((16, 2, 1, 1)) / 8).astype(np.float16)
        w = mb.constexpr_blockwise_shift_scale(data=q, scale=scale, name="w")
        return mb.conv(x=x, weight=w, name="y")

    progs["uint4_blockwise"] = uint4_blockwise

    out = []
    for name, prog in progs.items():
        model = dumps(prog)
        out.append(Seed(f"generated:{name}", model.text, model.weights or None))
    return out


# --- mutations ------------------------------------------------------------------------------------
_DTYPES = (
    "fp16 fp32 fp64 bf16 bool string int4 int8 int16 int32 int64 uint1 uint2 uint3 uint4 uint6 uint8 "
    "uint16 uint32 uint64".split()
)
_OPS = (
    "add mul sub relu conv matmul linear softmax reshape transpose concat slice_by_size gather cast "
    "reduce_sum layer_norm const constexpr_affine_dequantize constexpr_blockwise_shift_scale fill tile "
    "range_1d expand_dims squeeze lstm split".split()
)
_HUGE_NUMBERS = [
    "9" * 5000,
    "-" + "9" * 4400,
    "1" + "0" * 400 + ".5",
    "1e400",
    "-1e400",
    "1e-400",
    "0x1p+1024",
    "-0x1p+99999",
    "0x1p-1080",
    "0x1.fffffffffffffp+1023",
    "70000",
    "65520",
    "65519",
    "-65536",
    "1e39",
    "2147483648",
    "4294967296",
    "9223372036854775808",
    "18446744073709551616",
    "-1",
    "nan",
    "inf",
    "-inf",
    "1099511627776",
    "0x" + "f" * 300 + "p+0",
]
_BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\xc0\xaf", b"\xe2\x82", b"\x80"]
_PATHS = [
    "@model_path/../secret.bin",
    "/etc/passwd",
    "@model_path/weights/" + "a" * 300 + ".bin",
    "@model_path/weights/" + "d/" * 700 + "w.bin",
    "@model_path/weights/w\\0.bin",
    "@model_path/weights",
    "@model_path/weights/.",
    "@model_path/",
    "@model_path/weights/nope.bin",
    "@model_path/weights/../w.bin",
    "@model_path/weights\\\\w.bin",
    "",
    "@model_path/weights/" + "é" * 200 + ".bin",
]
_OFFSETS = [
    "0",
    "1",
    "63",
    "65",
    "128",
    "4096",
    "9223372036854775807",
    "18446744073709551615",
    "-64",
    "18446744073709551616",
    "0x1p+6",
    "64.5",
]
_SHAPE = re.compile(r"(?<=, )\[[0-9?, ]*\]")
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:0[xX][0-9a-fA-F.]+[pP][-+]?\d+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)")
_IDENT = re.compile(r"[A-Za-z_]\w*")
_OP_CALL = re.compile(r"(?<== )[A-Za-z_]\w*(?=\()")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_TOKEN = re.compile(r'[A-Za-z_]\w*|"(?:[^"\\\n]|\\.)*"|[-+]?[0-9][\w.+-]*|\S')
_OFFSET = re.compile(
    r"(?<=offset = uint64\()\d+|(?<=offset=uint64\()\d+|(?<=offset = tensor<uint64, \[\]>\()\d+"
)
_PATH = re.compile(
    r'(?<=path = string\(")[^"]*|(?<=path=string\(")[^"]*|(?<=path = tensor<string, \[\]>\(")[^"]*'
)


def _pick(rng, matches):
    return matches[int(rng.integers(len(matches)))] if matches else None


def _replace_match(text: str, rng, pattern: re.Pattern, make) -> str:
    m = _pick(rng, list(pattern.finditer(text)))
    if m is None:
        return text
    return text[: m.start()] + make(m.group()) + text[m.end() :]


def _choice(rng, options):
    return options[int(rng.integers(len(options)))]


def _lines(text: str) -> list[str]:
    return text.split("\n")


def mutate_byte_flip(b: bytes, rng, case) -> bytes:
    """Flip bits of a few bytes; mostly within ASCII, so the text often stays UTF-8 and reaches the
    grammar (bad_utf8 covers undecodable bytes)."""
    buf = bytearray(b)
    for _ in range(int(rng.integers(1, 9))):
        if buf:
            buf[int(rng.integers(len(buf)))] ^= int(rng.integers(1, 128 if rng.random() < 0.8 else 256))
    return bytes(buf)


def mutate_truncate(b: bytes, rng, case) -> bytes:
    return b[: int(rng.integers(len(b) + 1))]


def mutate_bad_utf8(b: bytes, rng, case) -> bytes:
    at = int(rng.integers(len(b) + 1))
    return b[:at] + _choice(rng, _BAD_UTF8) + b[at:]


def mutate_dup_line(t: str, rng, case) -> str:
    lines = _lines(t)
    i = int(rng.integers(len(lines)))
    return "\n".join(lines[: i + 1] + [lines[i]] * int(rng.integers(1, 4)) + lines[i + 1 :])


def mutate_del_line(t: str, rng, case) -> str:
    lines = _lines(t)
    del lines[int(rng.integers(len(lines)))]
    return "\n".join(lines)


def mutate_swap_lines(t: str, rng, case) -> str:
    lines = _lines(t)
    i, j = (int(x) for x in rng.integers(len(lines), size=2))
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def mutate_deep_nesting(t: str, rng, case) -> str:
    n = int(_choice(rng, [40, 100, 300, 1000, 5000, 100_000]))
    opener, closer, middle = _choice(
        rng,
        [
            ("[", "]", "1"),
            ("(", ")", "x"),
            ("{", "}", "1"),
            ("list<", ", ?>", "fp16"),
            ("tuple<", ">", "fp16"),
            ("state<", ">", "tensor<fp16, [1]>"),
            ("dict<string, ", ">", "fp16"),
            ("tensor<fp16, [1]>(", ")", "1"),
        ],
    )
    body = opener * n + middle + (closer * n if rng.random() < 0.7 else "")
    anchors = [m.end() for m in re.finditer(r"[(\[=,<]", t)] or [0]
    at = _choice(rng, anchors)
    return t[:at] + body + t[at:]


def mutate_huge_number(t: str, rng, case) -> str:
    return _replace_match(t, rng, _NUMBER, lambda _: _choice(rng, _HUGE_NUMBERS))


def mutate_number_tweak(t: str, rng, case) -> str:
    def tweak(s: str) -> str:
        try:
            v = int(s)
        except ValueError:
            return _choice(rng, ["0", "-1", "1", "0x1p+15", "-0x0p+0", "3"])
        return str(_choice(rng, [v + 1, v - 1, 0, -v, v * 2, v * 64 + 1]))

    return _replace_match(t, rng, _NUMBER, tweak)


def mutate_long_token(t: str, rng, case) -> str:
    n = int(_choice(rng, [300, 2000, 5000, 200_000]))
    kind = int(rng.integers(3))
    if kind == 0:
        return _replace_match(t, rng, _IDENT, lambda s: s + "x" * n)
    if kind == 1:
        return _replace_match(t, rng, _STRING, lambda s: s[:-1] + "y" * n + '"')
    return _replace_match(t, rng, _NUMBER, lambda s: s + "0" * n)


def mutate_swap_dtype(t: str, rng, case) -> str:
    pattern = re.compile(r"\b(?:" + "|".join(_DTYPES) + r")\b")
    return _replace_match(t, rng, pattern, lambda _: _choice(rng, _DTYPES))


def mutate_swap_shape(t: str, rng, case) -> str:
    def shape(s: str) -> str:
        dims = [d.strip() for d in s[1:-1].split(",") if d.strip()]
        kind = int(rng.integers(5))
        if kind == 0 and dims:
            rng.shuffle(dims)
        elif kind == 1:
            dims = [str(int(x)) for x in rng.integers(0, 9, size=int(rng.integers(0, 7)))]
        elif kind == 2:
            dims = dims + [_choice(rng, ["1099511627776", "2147483648", "9223372036854775807", "4294967296"])]
        elif kind == 3:
            dims = ["?" for _ in dims] or ["?"]
        else:
            dims = dims[:-1]
        return "[" + ", ".join(dims) + "]"

    return _replace_match(t, rng, _SHAPE, shape)


def mutate_flexible_input(t: str, rng, case) -> str:
    """Make dims of a function parameter flexible (`?`) or empty (0): type inference then accepts
    more programs, which reach the run with shapes that may disagree."""

    def shape(s: str) -> str:
        dims = [d.strip() for d in s[1:-1].split(",")]
        for k in range(len(dims)):
            if rng.random() < 0.6:
                dims[k] = "?" if rng.random() < 0.8 else "0"
        return "[" + ", ".join(dims) + "]"

    head = t.find("func ")
    end = t.find("{", head)
    if head < 0 or end < 0:
        return t
    return t[:head] + _replace_match(t[head:end], rng, _SHAPE, shape) + t[end:]


def mutate_blobfile_path(t: str, rng, case) -> str:
    return _replace_match(t, rng, _PATH, lambda _: _choice(rng, _PATHS))


def mutate_blobfile_offset(t: str, rng, case) -> str:
    return _replace_match(t, rng, _OFFSET, lambda _: _choice(rng, _OFFSETS))


def mutate_swap_op(t: str, rng, case) -> str:
    return _replace_match(t, rng, _OP_CALL, lambda _: _choice(rng, _OPS))


def mutate_token(t: str, rng, case) -> str:
    m = _pick(rng, list(_TOKEN.finditer(t)))
    if m is None:
        return t
    kind = int(rng.integers(3))
    if kind == 0:
        return t[: m.start()] + t[m.end() :]
    if kind == 1:
        return t[: m.end()] + " " + m.group() + t[m.end() :]
    return (
        t[: m.start()]
        + _choice(rng, list("()[]{}<>,=;?") + ["->", '"', "//", "BLOBFILE", "true"])
        + t[m.end() :]
    )


def mutate_splice(t: str, rng, case) -> str:
    other = _lines(_choice(rng, seeds()).text)
    lines = _lines(t)
    lines.insert(int(rng.integers(len(lines) + 1)), _choice(rng, other))
    return "\n".join(lines)


def mutate_weights(b: bytes, rng, case) -> bytes:
    """Damage one weight file of the case (the text is unchanged)."""
    if isinstance(case.weights, dict) and case.weights:
        weights = dict(case.weights)
        key = _choice(rng, sorted(weights))
        blob = bytearray(weights[key])
        if rng.random() < 0.5 and blob:
            for _ in range(int(rng.integers(1, 5))):
                blob[int(rng.integers(min(len(blob), 256)))] ^= int(rng.integers(1, 256))
        else:
            blob = blob[: int(rng.integers(len(blob) + 1))]
        weights[key] = bytes(blob)
        case.weights = weights
    return b


_BYTE_MUTATIONS = {
    "byte_flip": mutate_byte_flip,
    "truncate": mutate_truncate,
    "bad_utf8": mutate_bad_utf8,
    "weights": mutate_weights,
}
_TEXT_MUTATIONS = {
    "dup_line": mutate_dup_line,
    "del_line": mutate_del_line,
    "swap_lines": mutate_swap_lines,
    "deep_nesting": mutate_deep_nesting,
    "huge_number": mutate_huge_number,
    "number_tweak": mutate_number_tweak,
    "long_token": mutate_long_token,
    "swap_dtype": mutate_swap_dtype,
    "swap_shape": mutate_swap_shape,
    "flexible_input": mutate_flexible_input,
    "blobfile_path": mutate_blobfile_path,
    "blobfile_offset": mutate_blobfile_offset,
    "swap_op": mutate_swap_op,
    "token": mutate_token,
    "splice": mutate_splice,
}
MUTATIONS = (*_TEXT_MUTATIONS, *_BYTE_MUTATIONS)


def make_case(rng: np.random.Generator) -> Case:
    all_seeds = seeds()
    seed = all_seeds[int(rng.integers(len(all_seeds)))]
    weights: dict[str, bytes] | Path | None = seed.weights
    via = "dir" if rng.random() < 0.05 else "loads"
    if via == "loads" and seed.weights_dir is not None and rng.random() < 0.2:
        weights = seed.weights_dir  # the parser reads weights/ from the directory itself
    case = Case(seed.name, seed.text, weights, via, int(rng.integers(2**32)))
    # one case in twenty runs the seed untouched: the run side sees every real program too
    count = 0 if rng.random() < 0.05 else int(min(4, rng.geometric(0.55)))
    data = seed.text.encode("utf-8")
    for _ in range(count):
        name = _choice(rng, MUTATIONS)
        if name in _BYTE_MUTATIONS:
            data = _BYTE_MUTATIONS[name](data, rng, case)
        else:
            text = data.decode("utf-8", "surrogateescape")
            data = _TEXT_MUTATIONS[name](text, rng, case).encode("utf-8", "surrogateescape")
        case.mutations.append(name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        case.data = data
    else:
        case.data = data if rng.random() < 0.2 else text
    return case


# --- running --------------------------------------------------------------------------------------
def run_case(case: Case) -> None:
    from ..mil import load_program, loads

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case.via == "dir":
            with tempfile.TemporaryDirectory(prefix="anekit-fuzz-") as tmp:
                root = Path(tmp)
                data = case.data if isinstance(case.data, bytes) else case.data.encode("utf-8")
                (root / "model.mil").write_bytes(data)
                _write_weights(root, case.weights)
                program = load_program(root)
        else:
            program = loads(case.data, case.weights, filename=f"<{case.seed}>")
        _run(program, np.random.default_rng(case.input_seed))


def _write_weights(root: Path, weights) -> None:
    (root / "weights").mkdir()
    if isinstance(weights, Path):
        for f in (weights / "weights").iterdir():
            shutil.copyfile(f, root / "weights" / f.name)
    elif weights:
        for path, blob in weights.items():
            (root / "weights" / path.rsplit("/", 1)[-1]).write_bytes(blob)


def _run(program, rng: np.random.Generator) -> None:
    import anekit

    function = "main" if "main" in program.functions else next(iter(program.functions))
    if not _small_enough(program.functions[function]):
        return
    kernel = anekit.compile(program, backend="reference", function=function)
    # one size for every `?` dim, or (one case in four) a size per dim, which may disagree
    same = rng.random() < 0.75
    flexible = int(_choice(rng, FLEXIBLE_SIZES))
    inputs = {}
    for name, spec in kernel.inputs.items():
        shape = tuple(
            d if d is not None else flexible if same else int(_choice(rng, FLEXIBLE_SIZES))
            for d in spec.shape
        )
        inputs[name] = _random_array(spec.dtype, shape, rng)
    kernel(**inputs)


def _small_enough(func) -> bool:
    """False when an input, or any op output whose shape is known, exceeds RUN_ELEMENT_LIMIT."""
    from ..mil import types

    variables = list(func.inputs.values()) + [v for op in func.operations for v in op.outputs]
    for var in variables:
        if types.is_tensor(var.sym_type) or types.is_state(var.sym_type):
            t = var.sym_type.wrapped_type() if types.is_state(var.sym_type) else var.sym_type
            dims = [d for d in t.get_shape() if isinstance(d, (int, np.integer))]
            if int(np.prod(dims, dtype=np.float64)) > RUN_ELEMENT_LIMIT:
                return False
    return True


def _random_array(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    from ..mil.dtypes import dtype as dtype_of

    d = dtype_of(dtype)
    if d.numpy is None:
        return np.zeros(shape, np.float32)
    if d.is_float:
        return rng.standard_normal(shape).astype(d.numpy)
    if d.name == "bool":
        return rng.random(shape) < 0.5
    lo, hi = _value_range(dtype)
    return rng.integers(max(lo, -2), min(hi, 4) + 1, size=shape).astype(d.numpy)


def describe(case: Case) -> str:
    """The seed, the mutations, and the mutated text from its first difference with the seed."""
    data = case.data if isinstance(case.data, str) else case.data.decode("utf-8", "backslashreplace")
    seed = next((s.text for s in seeds() if s.name == case.seed), "")
    first = next((k for k, (a, b) in enumerate(zip(data, seed)) if a != b), min(len(data), len(seed)))
    start = data.rfind("\n", 0, max(first - 200, 0)) + 1
    if isinstance(case.weights, Path):
        weights = f"weights dir {case.weights}"
    else:
        weights = f"{len(case.weights)} weight file(s)" if case.weights else "no weights"
    return (
        f"seed {case.seed}; mutations {case.mutations or 'none'}; via {case.via}; "
        f"{type(case.data).__name__} input; {weights}; {len(data)} characters, "
        f"the first change at character {first}; from line {data.count(chr(10), 0, start) + 1}:\n"
        f"{data[start:]}"
    )
