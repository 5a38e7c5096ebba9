"""`MilModel`: MIL text plus its weight files, as handed to the compiler and stored on disk.

On disk a model is a directory: `model.mil` and the weight files its `BLOBFILE` constants name
(`@model_path/weights/*.bin`, mil-text.md §1.9). Reading one opens `model.mil` and exactly the weight
files the text refers to, each only if it resolves (after symlinks) inside the directory and is a
regular file; writing one never writes in place (see `anekit.safe_dir`).
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AnekitError
from ..safe_dir import StagedDirectory, read_inside, write_new_file

MODEL_PATH = "@model_path/"
WEIGHTS_DIR = "weights"
TEXT_FILE = "model.mil"


class WeightPathError(AnekitError, ValueError):
    """A file of a model directory that cannot be read or written safely: a BLOBFILE path that is
    malformed or escapes the directory (also through a symbolic link), a missing file, one that is
    not a regular file, or a directory that would be written through a link or overwritten."""


def weight_relpath(path: str) -> str:
    """`@model_path/weights/w.bin` -> `weights/w.bin`, refusing anything outside the model dir.

    The compiler resolves `@model_path` against the model directory (mil-text.md §1.9, §1.10); a
    path climbing out of it (`..`, absolute) could read or write arbitrary files, so it is refused.
    """
    if not path.startswith(MODEL_PATH):
        raise WeightPathError(f"weight path {path!r} does not start with {MODEL_PATH!r}")
    rel = path[len(MODEL_PATH) :]
    norm = posixpath.normpath(rel)
    if (
        not rel
        or rel.startswith("/")
        or norm == "."
        or norm.startswith("../")
        or norm == ".."
        or "\\" in rel
        or "\0" in rel
    ):
        raise WeightPathError(f"weight path {path!r} escapes the model directory; refused")
    return norm


# Just enough of the MIL lexer (mil-text.md §1.2) to find BLOBFILE paths without parsing: `//`
# comments and strings are skipped as units, so a path inside either is not taken for a reference.
_LEX = re.compile(r'//[^\n]*|"(?:[^"\\\n]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*|\S')
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}
_BLOBFILE_TOKENS = 32


def referenced_weights(text: str) -> list[str]:
    """The distinct `BLOBFILE(path = string("..."), ...)` paths of a MIL text, in order of appearance.

    Strings take C-style escapes (mil-text.md §1.2: none occur in real files, `\\"` and `\\\\` are
    accepted), undone here as the parser undoes them.
    """
    tokens = [m.group() for m in _LEX.finditer(text) if not m.group().startswith("//")]
    paths: dict[str, None] = {}
    for i, tok in enumerate(tokens):
        if tok != "BLOBFILE":
            continue
        # BLOBFILE ( [offset = uint64 ( N ) ,] path = string ( "..." ) ...: 14 tokens when well
        # formed; looking no further keeps a text of many unclosed BLOBFILE( linear to scan.
        depth, j, end = 0, i + 1, min(len(tokens), i + _BLOBFILE_TOKENS)
        while j < end:
            t = tokens[j]
            depth += t == "("
            depth -= t == ")"
            if depth <= 0:
                break
            if t == "path" and tokens[j + 1 : j + 4] == ["=", "string", "("] and j + 4 < len(tokens):
                s = tokens[j + 4]
                if s.startswith('"') and s.endswith('"') and len(s) >= 2:
                    paths[re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), s[1:-1])] = None
                break
            j += 1
    return list(paths)


def read_weight_file(root: str | os.PathLike, path: str) -> bytes:
    """The bytes of the weight file a BLOBFILE `path` names in model directory `root`.

    WeightPathError if the path is malformed, or the file is missing, resolves (through a symlink)
    outside `root`, or is not a regular file.
    """
    return read_inside(root, weight_relpath(path), WeightPathError, f"weight file {path!r}:")


@dataclass
class MilModel:
    """MIL text and its weights, keyed by the `@model_path/weights/<file>.bin` path the text uses."""

    text: str
    weights: dict[str, bytes] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write `model.mil` and its weight files into `directory`; returns it.

        The files are written into a new directory beside `directory`, which then takes its place
        (`anekit.safe_dir`): nothing is written through a symlink, and a failure leaves nothing
        half-written. An existing non-empty `directory` is a WeightPathError unless `overwrite`;
        with it, the old directory is replaced once the new one is complete (only if it holds
        nothing but a model: `model.mil` and weight files).
        """
        with StagedDirectory(
            directory,
            overwrite=overwrite,
            error=WeightPathError,
            produces=self.entries(),
            what="model directory",
        ) as stage:
            self.write_files(stage)
        return Path(directory)

    def entries(self) -> set[str]:
        """The names `write_files` creates at the top of a directory (`model.mil`, `weights`, ...)."""
        return {TEXT_FILE, WEIGHTS_DIR, *(weight_relpath(p).split("/", 1)[0] for p in self.weights)}

    def write_files(self, root: Path) -> None:
        """Write `model.mil` and the weight files into `root`, a new empty directory (see `save`)."""
        rels = {path: weight_relpath(path) for path in self.weights}
        if any(rel.split("/", 1)[0] == TEXT_FILE for rel in rels.values()):
            raise WeightPathError(f"a weight file cannot be named {TEXT_FILE}: it is the MIL text's file")
        written: set[str] = set()
        for path, data in self.weights.items():
            rel = rels[path]
            if rel in written:  # two spellings of one file (`weights/./w.bin`): one file
                continue
            write_new_file(root, rel, data)
            written.add(rel)
        write_new_file(root, TEXT_FILE, self.text.encode("utf-8"))

    def program(self, **options):
        """Parse back into a coremltools Program (see `anekit.mil.loads`)."""
        from .parser import loads

        return loads(self.text, self.weights, **options)

    def __repr__(self) -> str:
        size = sum(len(b) for b in self.weights.values())
        return (
            f"MilModel({len(self.text.splitlines())} lines, {len(self.weights)} weight files, {size} bytes)"
        )


def load(path: str | os.PathLike) -> MilModel:
    """Read a model directory (or its `model.mil`) written by `MilModel.save` or by Core ML.

    Reads `model.mil` and only the weight files its BLOBFILE constants name, each of which must
    resolve inside the directory and be a regular file (WeightPathError otherwise); text that is not
    UTF-8 is a MilParseError.
    """
    p = Path(path)
    root, name = (p, TEXT_FILE) if p.is_dir() else (p.parent, p.name)
    raw = read_inside(root, name, WeightPathError, "MIL text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        from .parser import MilParseError

        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise MilParseError(
            f"the file is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); MIL text is UTF-8",
            line,
            col,
            filename=str(root / name),
        ) from None
    weights = {ref: read_weight_file(root, ref) for ref in referenced_weights(text)}
    return MilModel(text, weights)
