"""Fuzz target `bundle`: record bundles, damaged, then loaded and replayed.

The seed is a real bundle: a small program (two inputs, two BLOBFILE weights, two outputs) recorded
with `anekit.bundles` on the reference backend into a temporary directory, once per process. Each case
copies it and applies one to four mutations: to `meta.json` (fields deleted or set to other JSON
values, nested fields, raw bytes: truncated, not UTF-8, deeply nested, flipped), to the `.npz` files
(members replaced by forged `.npy` headers claiming huge, negative or object arrays, by other valid
arrays, renamed, dropped, duplicated; the archive's bytes flipped, truncated, emptied), to
`model.mil` (bytes, lines, BLOBFILE paths and offsets, declared types), to the weight files, and to
the files themselves (missing, a directory, a fifo, a symlink leaving the bundle, a symlink inside
it, a dangling or looping symlink). Then `load_bundle` and `check_replay` on the reference backend.

Acceptable outcomes: success or an AnekitError. One more check: a bundle whose meta.json, array file
or model.mil is a symlink leaving the bundle must not load (its target is a valid copy, so only the
path check can refuse it).
"""

from __future__ import annotations

import atexit
import functools
import io
import json
import os
import shutil
import struct
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from ..bundles import BundleError, check_replay, load_bundle
from ..mil.blob import BlobWarning

FILES = ["meta.json", "inputs.npz", "outputs.npz", "model.mil", "weights/w.bin", "weights/s.bin", "weights"]
META_KEYS = [
    "format",
    "version",
    "source",
    "backend",
    "options",
    "tolerance",
    "inputs",
    "outputs",
    "machine",
    "timings",
    "note",
    "created",
]
JSON_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    1.5,
    float("nan"),
    1e308,
    "",
    "x",
    "anekit-bundle",
    "reference-backend",
    "ane-hardware",
    [],
    [1, 2],
    {},
    {"a": 1},
    "y" * 5000,
]
NESTED = [
    ("options", "numerics"),
    ("tolerance", "rtol"),
    ("tolerance", "atol"),
    ("inputs", "x"),
    ("inputs", "z"),
    ("outputs", "y"),
    ("outputs", "q"),
    ("machine", "chip"),
    ("timings", "runs"),
]
SPEC_SHAPES: list[object] = [
    [1, 8, 1, 4],
    [1, 8, 1, 5],
    [8, 4],
    [],
    [None, 8, 1, 4],
    [-1],
    [2**62],
    "1,8,1,4",
    None,
]


@dataclass
class Case:
    mutations: list[tuple] = field(default_factory=list)


# --- the seed bundle --------------------------------------------------------------------------------
#: Each case creates and deletes a directory tree: on a memory file system that takes ~0.05 ms,
#: on a disk under load ~5 ms (measured here), most of a case's time.
_MEMORY_FS = Path("/dev/shm")


@functools.cache
def _workdir() -> Path:
    memory = _MEMORY_FS.is_dir() and os.access(_MEMORY_FS, os.W_OK | os.X_OK)
    root = Path(tempfile.mkdtemp(prefix="anekit-fuzz-bundle-", dir=_MEMORY_FS if memory else None))
    atexit.register(shutil.rmtree, root, True)
    return root


@functools.cache
def seed_bundle() -> Path:
    """A real bundle recorded on the reference backend (made once per process)."""
    from ..bundles import record, save_bundle
    from ..mil import ct, dumps, mb, types

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 8, 1, 1)) / 4).astype(np.float16)
    s = (rng.standard_normal((1, 8, 1, 4))).astype(np.float16)
    specs = [mb.TensorSpec(shape=(1, 8, 1, 4), dtype=types.fp16) for _ in range(2)]

    @mb.program(input_specs=specs, opset_version=ct.target.iOS18)
    def prog(x, z):
        h = mb.conv(x=x, weight=mb.const(val=w, name="w"))
        y = mb.relu(x=mb.add(x=mb.mul(x=h, y=mb.const(val=s, name="s")), y=z), name="y")
        return y, mb.mul(x=z, y=z, name="q")

    inputs = {n: rng.standard_normal((1, 8, 1, 4)).astype(np.float16) for n in ("x", "z")}
    try:
        bundle = record(dumps(prog), inputs, backend="reference")
        root = save_bundle(bundle, _workdir() / "seed")
        if check_replay(load_bundle(root)):
            raise AssertionError("the seed bundle does not replay to its own outputs")
    except Exception as e:  # not an AnekitError: a broken seed must not pass as refused cases
        raise RuntimeError(f"cannot make the seed bundle: {e}") from e
    return root


# --- making cases -----------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _mutation(rng: np.random.Generator) -> tuple:
    """One mutation: (kind, arguments..., seed of its own random choices)."""
    return (*_mutation_args(rng), int(rng.integers(0, 1 << 30)))


def _mutation_args(rng: np.random.Generator) -> tuple:
    r = int(rng.integers(0, 12))
    if r == 0:
        return ("meta_set", _pick(rng, META_KEYS + ["extra"]), _pick(rng, JSON_VALUES))
    if r == 1:
        return ("meta_del", _pick(rng, META_KEYS))
    if r == 2:
        outer, inner = _pick(rng, NESTED)
        value = _pick(rng, JSON_VALUES)
        if outer in ("inputs", "outputs") and rng.random() < 0.7:
            value = {"shape": _pick(rng, SPEC_SHAPES), "dtype": _pick(rng, ["fp16", "fp32", 3])}
        if outer == "options" and rng.random() < 0.5:
            value = _pick(rng, ["ane", "exact", "fast"])
        return ("meta_sub", outer, inner, value)
    if r == 3:
        return ("meta_raw", _pick(rng, ["truncate", "garbage", "latin1", "deep", "empty", "huge", "flip"]))
    if r in (4, 5):
        return (
            "npz_member",
            _pick(rng, ["inputs.npz", "outputs.npz"]),
            _pick(rng, ["x", "z", "y", "q", "w"]),
            _pick(rng, _MEMBER_KINDS),
        )
    if r == 6:
        return (
            "npz_bytes",
            _pick(rng, ["inputs.npz", "outputs.npz"]),
            _pick(rng, ["flip", "truncate", "empty", "garbage", "append", "compressed-flip"]),
        )
    if r == 7:
        return ("mil", _pick(rng, _MIL_KINDS))
    if r == 8:
        return (
            "weights",
            _pick(rng, ["weights/w.bin", "weights/s.bin"]),
            _pick(rng, ["flip", "truncate", "empty", "header", "append"]),
        )
    if r in (9, 10):
        return ("file", _pick(rng, FILES), _pick(rng, _FILE_KINDS))
    return ("root", _pick(rng, ["file", "missing", "symlink-inside-tmp"]))


_MEMBER_KINDS = [
    "huge",
    "negative",
    "object",
    "unicode",
    "structured",
    "v3",
    "short",
    "long",
    "fortran",
    "big-endian",
    "reshape",
    "float64",
    "int32",
    "bool",
    "complex",
    "nan",
    "empty",
    "0-d",
    "drop",
    "rename",
    "extra",
    "not-npy",
    "duplicate",
    "header-garbage",
]
_MIL_KINDS = [
    "flip",
    "truncate",
    "drop-line",
    "dup-line",
    "offset",
    "path",
    "latin1",
    "dtype",
    "shape",
    "empty",
]
_FILE_KINDS = ["missing", "directory", "fifo", "symlink-outside", "symlink-inside", "dangling", "loop"]


def make_case(rng: np.random.Generator) -> Case:
    seed_bundle()  # made (coremltools imported) on first use here, outside the case's time limit
    return Case([_mutation(rng) for _ in range(int(rng.choice([1, 1, 1, 2, 2, 3, 4])))])


# --- applying mutations -----------------------------------------------------------------------------
def _forged(shape, descr="<f2", data: bytes = b"", fortran: bool = False) -> bytes:
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buf.getvalue() + data


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _member_bytes(kind: str, rng: np.random.Generator) -> bytes | None:
    good = rng.standard_normal((1, 8, 1, 4)).astype(np.float16)
    return {
        "huge": lambda: _forged((1 << 40,), "|u1", b"\0" * 64),
        "negative": lambda: _forged((-8, 4)),
        "object": lambda: _forged((2,), "|O", b"\0" * 16),
        "unicode": lambda: _forged((2,), "<U3", b"\0" * 24),
        "structured": lambda: _forged((2,), [("a", "<f4")], b"\0" * 8),
        "v3": lambda: b"\x93NUMPY\x03\x00" + _forged((1, 8, 1, 4))[8:] + good.tobytes(),
        "short": lambda: _forged((1, 8, 1, 4), data=good.tobytes()[:-3]),
        "long": lambda: _forged((1, 8, 1, 4), data=good.tobytes() + b"\0\0"),
        "fortran": lambda: _npy(np.asfortranarray(good.reshape(8, 4)).reshape(1, 8, 1, 4, order="F")),
        "big-endian": lambda: _npy(good.astype(">f2")),
        "reshape": lambda: _npy(good.reshape(8, 4)),
        "float64": lambda: _npy(good.astype(np.float64) * 1e300),
        "int32": lambda: _npy(rng.integers(-(2**31), 2**31, size=(1, 8, 1, 4), dtype=np.int32)),
        "bool": lambda: _npy(good > 0),
        "complex": lambda: _npy(good.astype(np.complex64)),
        "nan": lambda: _npy(np.where(good > 0, np.nan, np.inf).astype(np.float16)),
        "empty": lambda: _npy(np.zeros((1, 0, 1, 4), np.float16)),
        "0-d": lambda: _npy(np.array(1.0, np.float16)),
        "header-garbage": lambda: (
            b"\x93NUMPY\x01\x00" + struct.pack("<H", 40) + bytes(rng.integers(0, 256, 40, np.uint8))
        ),
    }.get(kind, lambda: None)()


def _without(entries: list, name: str) -> list:
    return [(k, v) for k, v in entries if k != name]


def _edited_entries(entries: list, name: str, kind: str, rng: np.random.Generator) -> list:
    """The archive's (member name, bytes) list after `kind` is done to member `name`."""
    if kind == "drop":
        return _without(entries, name)
    if kind == "rename":
        return [(f"r{k}" if k == name else k, v) for k, v in entries]
    if kind == "extra":
        return [*entries, (name, _npy(np.ones(3, np.float16)))]
    if kind == "not-npy":
        return [*entries, ("notes.txt", b"hello")]
    if kind == "duplicate":
        return entries + [(k, v) for k, v in entries if k == name]
    return _without(entries, name) + [(name, _member_bytes(kind, rng) or b"")]


def _edit_npz(path: Path, member: str, kind: str, rng: np.random.Generator) -> None:
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    name = f"{member}.npy"
    entries = _edited_entries(list(members.items()), name, kind, rng)
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as z:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the "duplicate" kind wants one
        for k, v in entries:
            z.writestr(k, v)


def _flip(data: bytearray, rng: np.random.Generator, count: int = 4) -> bytearray:
    for _ in range(int(rng.integers(1, count + 1))):
        if data:
            data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    return data


def _edit_bytes(path: Path, kind: str, rng: np.random.Generator) -> None:
    if not path.is_file() or path.is_symlink():
        return
    data = bytearray(path.read_bytes())
    if kind == "flip":
        data = _flip(data, rng)
    elif kind == "truncate":
        del data[int(rng.integers(0, len(data) + 1)) :]
    elif kind == "empty":
        data = bytearray()
    elif kind == "garbage":
        data = bytearray(b"PK\x03\x04") + bytearray(rng.integers(0, 256, 200, np.uint8).tobytes())
    elif kind == "append":
        data += rng.integers(0, 256, int(rng.integers(1, 100)), np.uint8).tobytes()
    elif kind == "header":
        at = int(rng.integers(0, min(128, len(data)) or 1))
        if data:
            data[at] = int(rng.integers(0, 256))
    elif kind == "compressed-flip":
        # the members recompressed as they are (never parsed here: they may be forged), then flipped
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
            members = [(i.filename, z.read(i)) for i in z.infolist()]
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, member in members:
                z.writestr(name, member)
        data = _flip(bytearray(buf.getvalue()), rng, 2)
    path.write_bytes(bytes(data))


def _edit_mil_bytes(path: Path, raw: bytes, kind: str, rng: np.random.Generator) -> bool:
    """The kinds that damage model.mil as bytes; False when `kind` is not one of them."""
    if kind == "flip":
        path.write_bytes(bytes(_flip(bytearray(raw), rng)))
    elif kind == "truncate":
        path.write_bytes(raw[: int(rng.integers(0, len(raw) + 1))])
    elif kind == "latin1":
        at = int(rng.integers(0, len(raw) + 1))
        path.write_bytes(raw[:at] + b"\xff\xfe" + raw[at:])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        return False
    return True


_MIL_PATHS = [
    "@model_path/../meta.json",
    "/etc/passwd",
    "@model_path/weights/none.bin",
    "@model_path/meta.json",
    "@model_path/weights",
    "@model_path/weights/s.bin",
    "@model_path/./weights/w.bin",
    "weights/w.bin",
    "@model_path/" + "a/" * 500 + "w.bin",
]


def _swap_dtype(text: str, rng: np.random.Generator) -> str:
    old, new = _pick(rng, [("fp16", "fp32"), ("fp16", "int8"), ("fp16", "uint4"), ("fp16", "bf16")])
    pos = [i for i in range(len(text)) if text.startswith(old, i)]
    if pos:
        at = _pick(rng, pos)
        text = text[:at] + new + text[at + len(old) :]
    return text


def _edited_mil_lines(text: str, lines: list[str], kind: str, rng: np.random.Generator) -> list[str]:
    """model.mil's lines after a text edit `kind` (unchanged for a kind that does not apply)."""
    if kind in ("drop-line", "dup-line") and lines:
        i = int(rng.integers(len(lines)))
        lines[i : i + 1] = [] if kind == "drop-line" else [lines[i], lines[i]]
    elif kind == "offset":
        new = _pick(rng, ["0", "63", "65", "128", "192", "999999", "18446744073709551615", "-1", "0x40"])
        lines = [text.replace("uint64(64)", f"uint64({new})", 1)]
    elif kind == "path":
        lines = [text.replace("@model_path/weights/w.bin", _pick(rng, _MIL_PATHS), 1)]
    elif kind == "dtype":
        lines = [_swap_dtype(text, rng)]
    elif kind == "shape":
        new = _pick(rng, ["[1, 8, 1, 5]", "[1, 8]", "[]", "[1, 0, 1, 4]", "[?, 8, 1, 4]"])
        lines = [text.replace("[1, 8, 1, 4]", new, 1)]
    return lines


def _edit_mil(path: Path, kind: str, rng: np.random.Generator) -> None:
    if not path.is_file() or path.is_symlink():
        return
    raw = path.read_bytes()
    text = raw.decode("utf-8", "replace")
    lines = text.splitlines(keepends=True)
    if _edit_mil_bytes(path, raw, kind, rng):
        return
    path.write_text("".join(_edited_mil_lines(text, lines, kind, rng)), encoding="utf-8")


def _remove_for_replacement(path: Path, name: str, outside: Path) -> None:
    """Take `path` out of the bundle; a directory is kept as a copy in `outside` first."""
    if path.is_dir() and not path.is_symlink():
        saved = outside / f"copy-of-{name.replace('/', '_')}"
        shutil.copytree(path, saved, symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _make_directory(root: Path, name: str, outside: Path, original: bytes | None) -> bool:
    (root / name).mkdir()
    return False


def _make_fifo(root: Path, name: str, outside: Path, original: bytes | None) -> bool:
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / name)
    return False


def _make_symlink_outside(root: Path, name: str, outside: Path, original: bytes | None) -> bool:
    path = root / name
    target = outside / f"copy-of-{name.replace('/', '_')}"
    if original is not None:
        target.write_bytes(original)
    path.symlink_to(target, target_is_directory=target.is_dir())
    return name in ("meta.json", "inputs.npz", "outputs.npz", "model.mil") and original is not None


def _make_symlink_inside(root: Path, name: str, outside: Path, original: bytes | None) -> bool:
    if original is None:
        return False
    path = root / name
    copy = root / f"inside-{name.replace('/', '_')}"
    copy.write_bytes(original)
    path.symlink_to(os.path.relpath(copy, path.parent))
    return False


def _make_dangling(root: Path, name: str, outside: Path, original: bytes | None) -> bool:
    path = root / name
    path.symlink_to(path.parent / "nothing-here")
    return False


def _make_loop(root: Path, name: str, outside: Path, original: bytes | None) -> bool:
    path = root / name
    path.symlink_to(path.name)
    return False


#: `_replace_file` kind -> what takes the file's place ("missing": nothing); True when it escapes.
_REPLACEMENTS = {
    "directory": _make_directory,
    "fifo": _make_fifo,
    "symlink-outside": _make_symlink_outside,
    "symlink-inside": _make_symlink_inside,
    "dangling": _make_dangling,
    "loop": _make_loop,
}


def _replace_file(root: Path, name: str, kind: str, outside: Path) -> bool:
    """Replace bundle file `name` by something else; True when it became a symlink leaving the bundle."""
    path = root / name
    original = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    _remove_for_replacement(path, name, outside)
    make = _REPLACEMENTS.get(kind)
    return make(root, name, outside, original) if make is not None else False


def _apply(case: Case, work: Path) -> tuple[Path, bool]:
    """A damaged copy of the seed bundle in `work`; True if a bundle file now leaves it by a symlink.

    Only anekit's own readers may meet the damage: the mutations read nothing that is not a regular
    file (a fifo would block them), and one that cannot apply to what earlier ones left (an archive
    they broke, JSON nested too deep for Python's json) is skipped. Replacing the whole bundle
    directory starts over from a valid copy, so earlier escapes no longer count.
    """
    root = work / "bundle"
    outside = work / "outside"
    outside.mkdir()
    shutil.copytree(seed_bundle(), root, symlinks=True)
    escaping = False
    for m in case.mutations:
        if not root.is_dir() or root.is_symlink():
            break  # the bundle directory itself was replaced
        if m[0] == "root":
            escaping = False
        try:
            escaping |= _apply_one(root, outside, m[:-1], np.random.default_rng(m[-1]))
        except Exception:  # noqa: BLE001 - the mutation's own reading failed; anekit was not called yet
            continue
    return root, escaping


def _apply_one(root: Path, outside: Path, m: tuple, rng: np.random.Generator) -> bool:
    kind = m[0]
    if kind in ("meta_set", "meta_del", "meta_sub"):
        _edit_meta(root / "meta.json", m)
    elif kind == "meta_raw":
        _raw_meta(root / "meta.json", m[1], rng)
    elif kind == "npz_member":
        if (root / m[1]).is_file() and not (root / m[1]).is_symlink():
            _edit_npz(root / m[1], m[2], m[3], rng)
    elif kind in ("npz_bytes", "weights"):
        _edit_bytes(root / m[1], m[2], rng)
    elif kind == "mil":
        _edit_mil(root / "model.mil", m[1], rng)
    elif kind == "file":
        return _replace_file(root, m[1], m[2], outside)
    elif kind == "root":
        shutil.rmtree(root)
        if m[1] == "file":
            root.write_text("not a bundle")
        elif m[1] == "symlink-inside-tmp":
            shutil.copytree(seed_bundle(), outside / "real")
            root.symlink_to(outside / "real", target_is_directory=True)
    return False


def _edit_meta(path: Path, m: tuple) -> None:
    if not path.is_file() or path.is_symlink():
        return
    meta = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        return
    if m[0] == "meta_set":
        meta[m[1]] = m[2]
    elif m[0] == "meta_del":
        meta.pop(m[1], None)
    else:
        outer = meta.get(m[1])
        if isinstance(outer, dict):
            outer[m[2]] = m[3]
        else:
            meta[m[1]] = {m[2]: m[3]}
    path.write_text(json.dumps(meta), encoding="utf-8")


def _raw_meta(path: Path, kind: str, rng: np.random.Generator) -> None:
    if not path.is_file() or path.is_symlink():
        return
    raw = path.read_bytes()
    data = {
        "truncate": lambda: raw[: int(rng.integers(0, len(raw) + 1))],
        "garbage": lambda: rng.integers(0, 256, 300, np.uint8).tobytes(),
        "latin1": lambda: raw.replace(b'"', b'"\xe9', 1),
        "deep": lambda: b'{"format": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        "empty": lambda: b"",
        "huge": lambda: raw[:-2] + b', "pad": "' + b"x" * (2 << 20) + b'"}',
        "flip": lambda: bytes(_flip(bytearray(raw), rng)),
    }[kind]()
    path.write_bytes(data)


# --- running a case ---------------------------------------------------------------------------------
def run_case(case: Case) -> None:
    work = Path(tempfile.mkdtemp(dir=_workdir()))
    try:
        root, escaping = _apply(case, work)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BlobWarning)  # expected for damaged reserved fields
            bundle = load_bundle(root)
            if escaping:
                raise AssertionError("a bundle file that is a symlink leaving the bundle was read")
            check_replay(bundle)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def describe(case: Case) -> str:
    return "; ".join(repr(m)[:300] for m in case.mutations)


__all__ = ["BundleError", "Case", "describe", "make_case", "run_case", "seed_bundle"]
