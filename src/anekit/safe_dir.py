"""Reading and writing the files of a directory anekit owns (a model directory, a record bundle)
without being led outside it.

Reading: a file named relative to the directory is opened only if its real path (after every symlink)
lies inside the directory's real path, and only if it is a regular file; a fifo would block the reader,
a directory or device is never what a model file means.

Writing: a directory is never written in place. Its content is built in a fresh directory beside it
(created here, so nothing can be pre-placed in it: no symlink at `model.mil`, `weights/` or a weight
file can redirect a write), then renamed into place. An existing non-empty directory is replaced only
when the caller says `overwrite`, only once the new content is complete, and only if it holds nothing
but entries the writer itself produces (so `--overwrite` cannot delete a directory of unrelated
files). The target itself may not be a symlink. rename(2) of a directory is atomic on POSIX and
replaces an empty directory; a non-empty one is first moved aside, then removed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from .errors import AnekitError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_BINARY = getattr(os, "O_BINARY", 0)


def not_regular(mode: int) -> str | None:
    """None for a regular file; otherwise what the file is, in words a user recognises. Every reader of a
    user's file asks this first: a fifo would block, /dev/zero never ends, a directory fails later with
    a confusing message."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a regular file"
    return "not a regular file"


def check_regular_file(path: str | os.PathLike, error: type[AnekitError], what: str, hint: str) -> Path:
    """`path` if it names a regular file (through symlinks); else `error`: `<what> <path>: is <kind>;
    <hint>` (or `no such file`)."""
    p = Path(path)
    label = f"{what} {p}" if what else str(p)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise error(f"{label}: no such file; {hint}") from None
    except OSError as e:
        raise error(f"{label}: cannot be read ({e.strerror or e}); {hint}") from None
    kind = not_regular(mode)
    if kind is not None:
        raise error(f"{label}: is {kind}; {hint}")
    return p


def resolve_inside(root: str | os.PathLike, rel: str, error: type[AnekitError], what: str) -> Path:
    """The real path of `root/rel`; `error` if it (through any symlink) leaves `root`'s real path."""
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, rel))
    if os.path.commonpath([base, real]) != base:
        raise error(
            f"{what} {Path(root) / rel} resolves to {real}, outside the directory {base} (through a "
            "symbolic link or '..'); anekit reads only files inside the directory: replace the link "
            "with the file itself"
        )
    return Path(real)


def read_inside(
    root: str | os.PathLike,
    rel: str,
    error: type[AnekitError],
    what: str = "file",
    max_bytes: int | None = None,
) -> bytes:
    """The bytes of the regular file `root/rel`, which must resolve inside `root` (see module doc),
    and (if given) hold at most `max_bytes` bytes."""
    real = resolve_inside(root, rel, error, what)
    shown = Path(root) / rel
    try:
        # O_NOFOLLOW: `real` has no symlink left; one placed there since is refused, not followed.
        fd = os.open(real, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _BINARY)
    except FileNotFoundError:
        raise error(f"{what} {shown} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} {shown} is a directory, not a file") from None
    except OSError as e:
        raise error(f"{what} {shown} cannot be opened: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        kind = not_regular(st.st_mode)
        if kind is not None:
            raise error(f"{what} {shown} is {kind}; it must be a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(
                f"{what} {shown} is {st.st_size} bytes, more than the {max_bytes} bytes such a file can be"
            )
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        try:
            return f.read()
        except OSError as e:
            raise error(f"{what} {shown} cannot be read: {e.strerror or e}") from None


def write_new_file(root: Path, rel: str, data: bytes) -> Path:
    """Create `root/rel` (and its parent directories) and write `data`; never follows a symlink and
    never opens an existing file. Flushed to disk before returning."""
    path = root / rel
    parent = path.parent
    if parent != root:
        parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _BINARY, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


class StagedDirectory:
    """`with StagedDirectory(target, ...) as stage:` write files into `stage` (a new, empty directory
    beside `target`); on success it becomes `target`, on an exception it is removed and `target` is
    untouched. The checks of `target` run on entry, before any work."""

    def __init__(
        self,
        target: str | os.PathLike,
        *,
        overwrite: bool,
        error: type[AnekitError],
        produces: Iterable[str],
        what: str = "directory",
    ):
        self.target = Path(target)
        self.overwrite = overwrite
        self.error = error
        self.produces = frozenset(produces)
        self.what = what
        self.stage: Path | None = None

    def check_target(self) -> bool:
        """Refuse a target we may not replace; True if it exists as a non-empty directory."""
        t = self.target
        try:
            st = os.lstat(t)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise self.error(f"cannot check {self.what} {t}: {e.strerror or e}") from None
        if stat.S_ISLNK(st.st_mode):
            raise self.error(
                f"{self.what} {t} is a symbolic link; anekit never writes through one (it could point "
                "anywhere): remove the link or give the real directory"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise self.error(f"{self.what} {t} exists and is not a directory; choose another path")
        try:
            entries = sorted(os.listdir(t))
        except OSError as e:
            raise self.error(f"cannot list {self.what} {t}: {e.strerror or e}") from None
        if not entries:
            return False
        if not self.overwrite:
            raise self.error(
                f"{self.what} {t} already exists and is not empty; pass overwrite=True (on the command "
                "line: --overwrite) to replace it, or choose another path"
            )
        foreign = [e for e in entries if e not in self.produces]
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise self.error(
                f"{self.what} {t} holds {shown}, which anekit did not write there; refusing to replace "
                f"it (only {', '.join(sorted(self.produces))} would be): move those away or choose "
                "another path"
            )
        return True

    def __enter__(self) -> Path:
        self.check_target()
        parent = self.target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.stage = self._fresh(parent, "tmp")
        except OSError as e:
            raise self.error(f"cannot create {self.what} {self.target}: {e.strerror or e}") from None
        return self.stage

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.stage is not None
        if exc_type is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            if isinstance(exc, OSError):  # disk full, permissions, ...: say so, nothing was changed
                raise self.error(
                    f"cannot write {self.what} {self.target}: {exc.strerror or exc}; nothing was changed "
                    f"there (the partial copy was removed)"
                ) from exc
            return False
        try:
            self._place()
        except BaseException:
            shutil.rmtree(self.stage, ignore_errors=True)
            raise
        return False

    def _place(self) -> None:
        t, stage = self.target, self.stage
        replace = self.check_target()  # again: the target may have changed while we wrote
        try:
            if not replace:
                os.rename(stage, t)  # atomic; replaces an empty directory, nothing else
            else:
                old = self._fresh_name(t.parent, "old")
                os.rename(t, old)
                try:
                    os.rename(stage, t)
                except OSError:
                    os.rename(old, t)
                    raise
                shutil.rmtree(old, ignore_errors=True)
        except OSError as e:
            raise self.error(
                f"cannot move the new {self.what} into place at {t}: {e.strerror or e}"
            ) from None
        _fsync_dir(t.parent)

    def _fresh(self, parent: Path, kind: str) -> Path:
        while True:
            path = self._fresh_name(parent, kind)
            try:
                os.mkdir(path)  # mode 0o777 & ~umask, as the directory would get if made in place
                return path
            except FileExistsError:
                continue

    def _fresh_name(self, parent: Path, kind: str) -> Path:
        return parent / f".{self.target.name}.{kind}-{secrets.token_hex(4)}"


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (POSIX: fsync the directory); best effort where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
