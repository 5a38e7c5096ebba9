"""One rank of the data-parallel tests: the real `anekit train` command, with test-only instruments.

- DIST_TEST_DIR: where this rank writes, outside the run directory, its final parameters
  (params-rank<R>.npz) and every path under DIST_TEST_RUN it opened for writing, renamed, created or
  removed (writes-rank<R>.json), as seen by a Python audit hook (PEP 578: the interpreter reports
  each `open`, `os.rename`, `os.mkdir`, `os.remove`, ... whoever calls it).
- DIST_TEST_DIE="R:S": rank R kills itself with SIGKILL as it starts step S (0-based), in the first
  attempt only (torchrun numbers its restarts in TORCHELASTIC_RESTART_COUNT).
- DIST_TEST_HANG="R:S": rank R writes its pid to hung-rank<R>.pid and stops itself (SIGSTOP) as it
  starts step S: a hung Mac, as its peers see it.

Started as ``python -m dist_worker train ...`` by torchrun (tests/train/test_distributed.py).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys

import numpy as np

from anekit.train import loop

RANK = int(os.environ["RANK"])
OUT_DIR = os.environ["DIST_TEST_DIR"]
RUN = os.path.realpath(os.environ["DIST_TEST_RUN"])
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
writes: list[str] = []


def _under_run(path) -> bool:
    try:
        p = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return p == RUN or p.startswith(RUN + os.sep)


def _audit(event: str, args) -> None:
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        if writing and _under_run(path):
            writes.append(f"open {os.fsdecode(path)}")
    elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "shutil.move"):
        if args and _under_run(args[0]):
            writes.append(f"{event} {os.fsdecode(args[0])}")


def _report() -> None:
    with open(os.path.join(OUT_DIR, f"writes-rank{RANK}.json"), "w") as f:
        json.dump(writes, f)


_close = loop.Trainer.close


def _close_and_dump(self) -> None:
    np.savez(os.path.join(OUT_DIR, f"params-rank{RANK}.npz"), **self.params)
    _close(self)


loop.Trainer.close = _close_and_dump
if os.environ.get("DIST_TEST_DIE"):
    die_rank, die_step = (int(x) for x in os.environ["DIST_TEST_DIE"].split(":"))
    _train_step = loop.Trainer.train_step

    def _train_step_or_die(self, step):
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if RANK == die_rank and step == die_step and first_attempt:
            os.kill(os.getpid(), signal.SIGKILL)
        return _train_step(self, step)

    loop.Trainer.train_step = _train_step_or_die

if os.environ.get("DIST_TEST_HANG"):
    hang_rank, hang_step = (int(x) for x in os.environ["DIST_TEST_HANG"].split(":"))
    _train_step_h = loop.Trainer.train_step

    def _train_step_or_hang(self, step):
        if RANK == hang_rank and step == hang_step:
            with open(os.path.join(OUT_DIR, f"hung-rank{RANK}.pid"), "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)
        return _train_step_h(self, step)

    loop.Trainer.train_step = _train_step_or_hang

atexit.register(_report)
sys.addaudithook(_audit)

from anekit.cli import main  # noqa: E402  (after the instruments)

sys.argv = ["anekit", *sys.argv[1:]]
main()
