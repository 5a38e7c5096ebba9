"""The weights dictionary and the temp directory the compiler reads (pure Python).

ane-private-api.md §1.3: `modelWithMILText:weights:optionsPlist:` takes
`{ "@model_path/weights/<file>.bin": {"offset": 0, "data": <the whole blob file>} }`, one entry per
weight file, keyed by the exact BLOBFILE path of the MIL text; an *empty* dictionary (never nil)
when the program has no weights, since nil gives silent compile failures (§1.3, §6).

§1.4: before `compileWithQoS:` the program's files must exist in
`NSTemporaryDirectory()/<hexStringIdentifier>/`: `model.mil` (the MIL text bytes) and, for each
weights key, the data at the key with `@model_path/` stripped (`weights/<file>.bin`). The directory
is removed after unload.

The bridge turns the result of `weights_entries` into Foundation objects; everything else here is
tested off macOS.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path


def weight_relpath(path: str) -> str:
    """`anekit.mil.model.weight_relpath`, imported on use: `anekit.mil` pulls in coremltools,
    which `anekit.backends.ane` must not need just to be imported (availability checks)."""
    from ...mil.model import weight_relpath as relpath

    return relpath(path)


#: §1.3: the "offset" value of every entry (maderix passes @0; the MIL BLOBFILE offset is what counts).
ENTRY_OFFSET = 0
MODEL_FILE = "model.mil"
MODEL_PATH = "@model_path/"  # the prefix every weights key carries (§1.3)


def weights_entries(weights: Mapping[str, bytes]) -> dict[str, tuple[int, bytes]]:
    """`{BLOBFILE path: (offset, blob bytes)}` for the weights dictionary of §1.3.

    Every key must be `@model_path/...` and stay inside the model directory (checked by
    `weight_relpath`), since the same key names the file written by `populate_model_dir`.
    Returns an empty dict for a program without weights: the bridge must still pass an empty
    NSDictionary, not nil.
    """
    entries: dict[str, tuple[int, bytes]] = {}
    for path, data in weights.items():
        weight_relpath(path)  # raises WeightPathError for anything malformed or escaping
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"weight file {path!r} must be bytes, not {type(data).__name__}")
        entries[path] = (ENTRY_OFFSET, bytes(data))
    return entries


def model_dir(temp_root: str | os.PathLike, hex_id: str) -> Path:
    """`<temp_root>/<hex_id>`, the directory §1.4 names; refuses an identifier that is a path."""
    hex_id = str(hex_id)
    if not hex_id or hex_id in (".", "..") or "/" in hex_id or "\\" in hex_id or "\0" in hex_id:
        raise ValueError(f"hexStringIdentifier {hex_id!r} is not a plain directory name")
    return Path(temp_root) / hex_id


def populate_model_dir(
    directory: str | os.PathLike, mil_text: bytes, weights: Mapping[str, bytes]
) -> list[Path]:
    """Write `model.mil` and every weight file into `directory` as §1.4 lists; returns the files.

    Creates `directory/weights/` even when there are no weights (maderix creates it always).
    Existing files are overwritten: an identical program has the same identifier and therefore
    the same directory and the same bytes (§1.4 notes).
    """
    root = Path(directory)
    (root / "weights").mkdir(parents=True, exist_ok=True)
    written = []
    model_file = root / MODEL_FILE
    model_file.write_bytes(bytes(mil_text))
    written.append(model_file)
    for path, (_offset, data) in weights_entries(weights).items():
        target = root / weight_relpath(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written.append(target)
    return written


def remove_model_dir(directory: str | os.PathLike) -> None:
    """Delete the directory after unload (§1.4 "on free"); a missing directory is not an error."""
    shutil.rmtree(directory, ignore_errors=True)


__all__ = [
    "ENTRY_OFFSET",
    "MODEL_FILE",
    "MODEL_PATH",
    "weights_entries",
    "model_dir",
    "populate_model_dir",
    "remove_model_dir",
]
