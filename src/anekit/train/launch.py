"""`anekit train --nproc N`: start N ranks on this machine through torch's own launcher.

The ranks are started by `torch.distributed.run` (the module behind `torchrun`) with ``--standalone``
(rendezvous on a free local port, https://pytorch.org/docs/stable/elastic/run.html#single-node-multi-worker),
each running ``python -m anekit train ...`` with the same options. torchrun watches them: when one
fails it stops the others (and restarts them all, from the run's last checkpoint, up to
``--max-restarts`` times). Its `ChildFailedError` is turned into `RankFailed` naming each rank that
failed and how (exit status or signal).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence

from .distributed import RankFailed, require_torch
from .loop import NPROC_ENV, RUN_ID_ENV


def torchrun_args(
    nproc: int, args: Sequence[str], *, module: str = "anekit", max_restarts: int = 0
) -> list[str]:
    """The command line `torch.distributed.run` gets for `nproc` local ranks running `module args`."""
    return [
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        "--module",
        module,
        *args,
    ]


def launch(nproc: int, args: Sequence[str], *, module: str = "anekit", max_restarts: int = 0) -> None:
    """Run ``python -m module args`` as `nproc` ranks of one job on this machine; returns when they all
    succeeded, raises `RankFailed` naming the ranks that did not."""
    require_torch()
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun copies this process's environment into every rank's
    os.environ.setdefault(RUN_ID_ENV, uuid.uuid4().hex[:12])
    os.environ[NPROC_ENV] = str(nproc)
    parsed = get_args_parser().parse_args(
        torchrun_args(nproc, args, module=module, max_restarts=max_restarts)
    )
    try:
        run(parsed)
    except ChildFailedError as e:
        raise RankFailed(describe_failures(e.failures, nproc, max_restarts)) from None


def describe_failures(failures: dict, nproc: int, max_restarts: int = 0) -> str:
    """One sentence per failed rank (earliest first), from torchrun's `ProcessFailure`s."""
    parts = []
    for rank, f in sorted(failures.items(), key=lambda kv: (getattr(kv[1], "timestamp", 0), kv[0])):
        how = (
            f"was killed by {f.signal_name()}"
            if getattr(f, "exitcode", 0) < 0
            else f"exited with status {getattr(f, 'exitcode', '?')}"
        )
        parts.append(f"rank {rank} (pid {getattr(f, 'pid', '?')}) {how}")
    restarts = f" after {max_restarts} restart(s)" if max_restarts else ""
    return (
        f"the run on {nproc} processes stopped{restarts}: "
        + "; ".join(parts)
        + " (torchrun stopped the rest). The ranks' own messages, if any, are above: act on them; a run "
        "that saved a checkpoint then continues with the same command and --resume"
    )
