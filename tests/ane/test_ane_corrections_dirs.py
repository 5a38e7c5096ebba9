"""Issue 8 §4: the temp directory `$TMPDIR/<hexStringIdentifier>/` (ane-private-api.md §1.4) is
shared by every model of the same program text + weights, in this process and in others (worker
processes, other runs); it is deleted only when its last user lets go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from anekit.backends.ane.weights import LOCK_FILE, USERS_SUFFIX, ModelDirectories, model_dir, other_users

TEXT = b"program(1.3) {}"
WEIGHTS = {"@model_path/weights/w.bin": b"\x01" * 128}

HOLDER = textwrap.dedent(
    """
    import sys
    from anekit.backends.ane.weights import MODEL_DIRS
    directory = sys.argv[1]
    MODEL_DIRS.acquire(directory, b"program(1.3) {}", {"@model_path/weights/w.bin": b"\\x01" * 128})
    print("held", flush=True)
    if sys.stdin.readline().strip() == "release":
        print("deleted" if MODEL_DIRS.release(directory) else "kept", flush=True)
    """
)


def holder(directory):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_in_process_users_are_counted(tmp_path):
    dirs = ModelDirectories()
    d = model_dir(tmp_path, "abc123")
    dirs.acquire(d, TEXT, WEIGHTS)
    dirs.acquire(d, TEXT, WEIGHTS)  # a second model of the same program
    assert (d / "model.mil").read_bytes() == TEXT and (d / "weights" / "w.bin").read_bytes() == WEIGHTS[
        "@model_path/weights/w.bin"
    ]
    assert dirs.users(d) == 2
    assert dirs.release(d) is False and (d / "model.mil").is_file()  # the other model still holds it
    assert dirs.release(d) is True and not d.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]  # no marker left behind


def test_another_process_holding_the_directory_keeps_it(tmp_path):
    d = model_dir(tmp_path, "shared")
    dirs = ModelDirectories()
    dirs.acquire(d, TEXT, WEIGHTS)
    other = holder(d)  # e.g. the same kernel compiled in a worker process
    try:
        assert other_users(d) == [other.pid]
        inode = (d / "model.mil").stat().st_ino
        assert dirs.release(d) is False and (d / "model.mil").stat().st_ino == inode  # kept, not rewritten
        dirs.acquire(d, TEXT, WEIGHTS)  # held by the other: files already there are not rewritten
        assert (d / "model.mil").stat().st_ino == inode
        assert dirs.release(d) is False
        other.stdin.write("release\n")
        other.stdin.flush()
        assert other.stdout.readline().strip() == "deleted"  # it was the last user
        assert not d.exists() and not d.with_name(d.name + USERS_SUFFIX).exists()
    finally:
        other.kill()
        other.wait()


def test_a_dead_process_does_not_keep_a_directory_forever(tmp_path):
    d = model_dir(tmp_path, "stale")
    other = holder(d)
    os.kill(other.pid, signal.SIGKILL)
    other.wait()
    dirs = ModelDirectories()
    dirs.acquire(d, TEXT, WEIGHTS)
    assert other_users(d) == []  # its marker names a process that no longer exists
    assert dirs.release(d) is True and not d.exists()
