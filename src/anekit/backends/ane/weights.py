"""The weights dictionary and the temp directory the compiler reads (pure Python).

ane-private-api.md §1.3: `modelWithMILText:weights:optionsPlist:` takes
`{ "@model_path/weights/<file>.bin": {"offset": 0, "data": <the whole blob file>} }`, one entry per
weight file, keyed by the exact BLOBFILE path of the MIL text; an *empty* dictionary (never nil)
when the program has no weights, since nil gives silent compile failures (§1.3, §6).

§1.4: before `compileWithQoS:` the program's files must exist in
`NSTemporaryDirectory()/<hexStringIdentifier>/`: `model.mil` (the MIL text bytes) and, for each
weights key, the data at the key with `@model_path/` stripped (`weights/<file>.bin`). The directory
is removed after unload, but only by its last user: the identifier is a hash of the text and
weights, so identical programs (two kernels of one program at two QoS values, an uncached
recompile, the same kernel in a worker process or another run) share one directory (§1.4 notes,
§6 "identical programs share one temp dir/hex id"), and the engine may need it again to reload an
unloaded program (§1.10 test_weight_reload). `acquire_model_dir` / `release_model_dir` count the
users in this process and mark this process as a user on disk, so neither another model here nor
another process deletes a directory a live model was compiled from (issue 8 §4).

The bridge turns the result of `weights_entries` into Foundation objects; everything else here is
tested off macOS.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl  # POSIX (macOS, Linux): serialises directory bookkeeping between processes
except ImportError:  # pragma: no cover - the engine needs macOS; elsewhere one process is enough
    fcntl = None


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


#: In the temp root: serialises acquire/release between processes (one small file, kept).
LOCK_FILE = ".anekit-model-dirs.lock"
#: Beside `<hex>/`: `<hex>.users/<pid>` says process <pid> holds a model compiled from `<hex>/`.
USERS_SUFFIX = ".users"


def _users_dir(directory: Path) -> Path:
    return directory.with_name(directory.name + USERS_SUFFIX)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def other_users(directory: str | os.PathLike) -> list[int]:
    """Live processes other than this one that hold a model compiled from `directory`; markers
    left by processes that died are removed on the way."""
    users = _users_dir(Path(directory))
    pids = []
    try:
        markers = list(users.iterdir())
    except FileNotFoundError:
        return []
    for marker in markers:
        try:
            pid = int(marker.name)
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        if _alive(pid):
            pids.append(pid)
        else:
            marker.unlink(missing_ok=True)
    return sorted(pids)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(root / LOCK_FILE, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _write_atomically(target: Path, data: bytes) -> None:
    """A reader (the compiler of another user of the directory) never sees a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class ModelDirectories:
    """Users of each model directory (§1.4), counted in this process and marked on disk per
    process, so a directory is deleted only when its last user anywhere lets go."""

    def __init__(self) -> None:
        self._count: dict[Path, int] = {}
        self._lock = threading.Lock()

    def users(self, directory: str | os.PathLike) -> int:
        """Models in this process holding `directory`."""
        with self._lock:
            return self._count.get(Path(directory), 0)

    def acquire(self, directory: str | os.PathLike, mil_text: bytes, weights: Mapping[str, bytes]) -> Path:
        """Hold `directory` for one model and make sure it holds the program's files.

        When nobody else holds it, every file is (re)written; otherwise only missing files are
        added, atomically, so a compile from it in progress elsewhere reads whole files.
        """
        root = Path(directory)
        with self._lock, _locked(root.parent):
            alone = self._count.get(root, 0) == 0 and not other_users(root)
            files = {MODEL_FILE: bytes(mil_text)}
            for path, (_offset, data) in weights_entries(weights).items():
                files[weight_relpath(path)] = data
            (root / "weights").mkdir(parents=True, exist_ok=True)
            for rel, data in files.items():
                target = root / rel
                if alone or not target.exists():
                    _write_atomically(target, data)
            users = _users_dir(root)
            users.mkdir(exist_ok=True)
            (users / str(os.getpid())).touch()
            self._count[root] = self._count.get(root, 0) + 1
        return root

    def release(self, directory: str | os.PathLike) -> bool:
        """One model lets go of `directory`; returns whether the directory was deleted (it is,
        when no model here and no live process elsewhere holds it any more)."""
        root = Path(directory)
        with self._lock, _locked(root.parent):
            count = self._count.get(root, 0)
            if count > 1:
                self._count[root] = count - 1
                return False
            self._count.pop(root, None)
            (_users_dir(root) / str(os.getpid())).unlink(missing_ok=True)
            if other_users(root):
                return False
            remove_model_dir(root)
            shutil.rmtree(_users_dir(root), ignore_errors=True)
            return True


#: This process's model directories.
MODEL_DIRS = ModelDirectories()


def acquire_model_dir(directory: str | os.PathLike, mil_text: bytes, weights: Mapping[str, bytes]) -> Path:
    """`MODEL_DIRS.acquire`: what the bridge calls before compiling (§1.4)."""
    return MODEL_DIRS.acquire(directory, mil_text, weights)


def release_model_dir(directory: str | os.PathLike) -> bool:
    """`MODEL_DIRS.release`: what the bridge calls when a model is closed (§1.4 "on free")."""
    return MODEL_DIRS.release(directory)


__all__ = [
    "ENTRY_OFFSET",
    "MODEL_FILE",
    "MODEL_PATH",
    "weights_entries",
    "model_dir",
    "populate_model_dir",
    "remove_model_dir",
    "ModelDirectories",
    "MODEL_DIRS",
    "acquire_model_dir",
    "release_model_dir",
    "other_users",
]
