"""`MilModel`: MIL text plus its weight files, as handed to the compiler and stored on disk."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AnekitError

MODEL_PATH = "@model_path/"
WEIGHTS_DIR = "weights"


class WeightPathError(AnekitError, ValueError):
    """A BLOBFILE path that is malformed or escapes the model directory."""


def weight_relpath(path: str) -> str:
    """`@model_path/weights/w.bin` -> `weights/w.bin`, refusing anything outside the model dir.

    The compiler resolves `@model_path` against the model directory (mil-text.md §1.9, §1.10); a
    path climbing out of it (`..`, absolute) could read or write arbitrary files, so it is refused.
    """
    if not path.startswith(MODEL_PATH):
        raise WeightPathError(f"weight path {path!r} does not start with {MODEL_PATH!r}")
    rel = path[len(MODEL_PATH) :]
    norm = posixpath.normpath(rel)
    if not rel or rel.startswith("/") or norm == "." or norm.startswith("../") or norm == ".." or "\\" in rel:
        raise WeightPathError(f"weight path {path!r} escapes the model directory; refused")
    return norm


@dataclass
class MilModel:
    """MIL text and its weights, keyed by the `@model_path/weights/<file>.bin` path the text uses."""

    text: str
    weights: dict[str, bytes] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `model.mil` and `weights/` into `directory` (created if needed); returns it."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        for path, data in self.weights.items():
            target = root / weight_relpath(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (root / "model.mil").write_text(self.text, encoding="utf-8")
        return root

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
    """Read a model directory (or its `model.mil`) written by `MilModel.save` or by Core ML."""
    p = Path(path)
    if p.is_dir():
        root, text_file = p, p / "model.mil"
    else:
        root, text_file = p.parent, p
    if not text_file.is_file():
        raise FileNotFoundError(f"no MIL text at {text_file}")
    weights = {}
    wdir = root / WEIGHTS_DIR
    if wdir.is_dir():
        for f in sorted(wdir.rglob("*")):
            if f.is_file():
                weights[MODEL_PATH + f.relative_to(root).as_posix()] = f.read_bytes()
    return MilModel(text_file.read_text(encoding="utf-8"), weights)
