"""Data-parallel training (anekit.train.distributed) with real processes: gloo over 127.0.0.1.

The 2-rank runs start through torch's own launcher (`anekit.train.launch.launch`, or the command
`anekit train --nproc 2`); each rank is `tests/train/dist_worker.py`, the real `anekit train` with a
Python audit hook recording what it writes and a dump of its final parameters. The oracle is a plain
single-process `Trainer` (no torch) over the same global batches. Reference backend, exact (float64)
numerics, the micro model: the whole module takes about a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import anekit
from anekit.model.config import ModelConfig
from anekit.model.reference import init_params
from anekit.train.checkpoint import load_checkpoint
from anekit.train.data import Batches, DataError
from anekit.train.loop import Trainer, TrainOptions

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed")

SRC = Path(anekit.__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
STEPS, PER_RANK, SAVE_EVERY = 4, 2, 2
ACCUM = 2  #: micro-batches per step: accumulation composes with the all-reduce
#: Every subprocess gets this long (a stuck run fails the test instead of hanging CI); the runs take
#: ~10-15 s each on 2 busy cores.
PROC_TIMEOUT_S = 240
#: --dist-timeout of the ranks: a rank waiting for a dead peer gives up after this at most.
DIST_TIMEOUT_S = 30

_LAUNCH = """
import sys
from anekit.errors import AnekitError
from anekit.train.launch import launch
try:
    launch(int(sys.argv[1]), sys.argv[3:], module="dist_worker", max_restarts=int(sys.argv[2]))
except AnekitError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
"""


def _env(test_dir: Path, run: Path, **extra: str) -> dict:
    drop = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ANEKIT_RUN_ID", "ANEKIT_NPROC")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE), env.get("PYTHONPATH", "")])
    env["DIST_TEST_DIR"], env["DIST_TEST_RUN"] = str(test_dir), str(run)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def train_args(config: Path, run: Path, batch: int = PER_RANK, *extra: str) -> list[str]:
    return [
        "train", "--config", str(config), "--steps", str(STEPS), "--batch", str(batch), "--accum", str(ACCUM),
        "--backend", "reference", "--numerics", "exact", "--save-every", str(SAVE_EVERY), "--warmup", "2",
        "--eval-every", "0", "--sample-tokens", "0", "--out", str(run), "--check-every", "1",
        "--dist-timeout", str(DIST_TIMEOUT_S), "--bucket-mb", "0.1", *extra,
    ]  # fmt: skip


def launch_ranks(test_dir: Path, run: Path, args: list[str], nproc: int = 2, max_restarts: int = 0, **env):
    test_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-c", _LAUNCH, str(nproc), str(max_restarts), *args],
        env=_env(test_dir, run, **env),
        capture_output=True,
        text=True,
        timeout=PROC_TIMEOUT_S,
    )


def single_process(config: Path, run: Path, batch: int, **kw):
    opts = TrainOptions(
        config_file=config, steps=STEPS, batch=batch, accum=ACCUM, backend="reference", numerics="exact",
        save_every=SAVE_EVERY, warmup=2, eval_every=0, sample_tokens=0, out=run, **kw,
    )  # fmt: skip
    trainer = Trainer(opts)
    try:
        trainer.run()
        return {k: v.copy() for k, v in trainer.params.items()}
    finally:
        trainer.close()


def max_rel_diff(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(a[k] - b[k]) / np.maximum(np.abs(b[k]), 1e-12))) for k in b)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    from micro_model import MICRO

    d = tmp_path_factory.mktemp("dist")
    (d / "micro.json").write_text(json.dumps(MICRO))
    return d


@pytest.fixture(scope="module")
def one_rank(work):
    """The oracle: one process, no torch, --batch 4 = the 2-rank global batch (both x --accum 2)."""
    return single_process(work / "micro.json", work / "one" / "run", batch=2 * PER_RANK)


@pytest.fixture(scope="module")
def two_ranks(work):
    """2 ranks x --batch 2: the run directory and each rank's dumped parameters."""
    run, out = work / "two" / "run", work / "two"
    proc = launch_ranks(out, run, train_args(work / "micro.json", run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, [dict(np.load(out / f"params-rank{r}.npz")) for r in (0, 1)]


def test_two_ranks_equal_one_rank_over_the_same_global_batch(one_rank, two_ranks):
    run, (p0, p1) = two_ranks
    for name in p0:  # the ranks stay bit-identical
        assert np.array_equal(p0[name], p1[name]), name
    assert max_rel_diff(p0, one_rank) <= 1e-6
    saved = load_checkpoint(run / "checkpoint")[1]
    assert all(np.array_equal(saved[k], p0[k]) for k in p0)
    # and training moved them: the comparison is not between two copies of the initial weights
    start = init_params(ModelConfig.from_file(run.parent.parent / "micro.json"), rng=0, scheme="dynamic")
    assert max_rel_diff(p0, start) > 1e-3


def test_rank_0_alone_writes_files(two_ranks):
    run, _ = two_ranks
    w0 = json.loads((run.parent / "writes-rank0.json").read_text())
    w1 = json.loads((run.parent / "writes-rank1.json").read_text())
    assert w1 == []
    # the hook does see the writes: rank 0's log and checkpoints
    assert any(w.endswith("log.jsonl") for w in w0)
    assert any("checkpoint" in w and "state.json" in w for w in w0)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, STEPS + 1))
    assert all(e["world"] == 2 and e["comm_ms"] is not None for e in log)


def test_resume_with_another_world_size_reshards_or_refuses(work, one_rank, two_ranks):
    run, _ = two_ranks
    # the 2-rank run's checkpoint at step 2, continued by one process drawing the same global batch
    # (--batch 4) to step 4, ends where the 1-process run did
    resumed = work / "reshard" / "run"
    resumed.mkdir(parents=True)
    shutil.copytree(run / "checkpoint.prev", resumed / "checkpoint")
    with pytest.raises(DataError, match=r"2 process\(es\) x --batch 1 = 2.*resume with --batch 2"):
        _sampler(resumed, batch=1, rank=1, world=2)  # what rank 1 of a 2 x --batch 1 run would do
    with pytest.raises(DataError, match=r"drew 4 sequences.*--batch 2 = 2.*resume with --batch 4"):
        single_process(work / "micro.json", resumed, batch=2, resume=True)
    params = single_process(work / "micro.json", resumed, batch=2 * PER_RANK, resume=True)
    assert max_rel_diff(params, one_rank) <= 1e-6


def _sampler(run: Path, batch: int, rank: int, world: int) -> Batches:
    """A rank's sampler resumed from the checkpoint in `run` (as `Trainer` makes it)."""
    from anekit.train.checkpoint import read_state
    from anekit.train.data import load_dataset, train_val_split

    state = read_state(run / "checkpoint").train_state.sampler
    train, _ = train_val_split(load_dataset(None), 32)
    batches = Batches(train, batch, 32, rank=rank, world=world)
    batches.load_state_dict(state)
    return batches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_agents(work: Path, name: str, args: list[str], **env) -> tuple[list, str]:
    """Two 'machines': two torchrun agents, one rank each, static rendezvous on 127.0.0.1. Returns
    (agents, agent 0's stderr) once agent 0 has ended; a rank that hangs (its pid in hung-rank1.pid)
    is then killed, and agent 1 given 10 s more. Output goes to files, not pipes: a stopped rank
    holds its inherited pipe open, and reading to its end would never return."""
    out = work / name
    port = str(_free_port())
    agents = []
    for node in (0, 1):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", port,
            "--max-restarts", "0", "--module", "dist_worker", *args,
        ]  # fmt: skip
        with open(out / f"agent{node}.out", "w") as o, open(out / f"agent{node}.err", "w") as e:
            agents.append(subprocess.Popen(cmd, env=_env(out, out / "run", **env), stdout=o, stderr=e))
    try:
        agents[0].wait(timeout=PROC_TIMEOUT_S)
        hung = out / "hung-rank1.pid"
        if hung.exists():  # the stopped rank outlives everything: end it
            try:
                os.kill(int(hung.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            agents[1].wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
                a.wait()
    return agents, (out / "agent0.err").read_text()


@pytest.mark.parametrize(
    "fault, bound",
    [
        # a dead process's sockets are closed by the kernel: the peer's all-reduce fails at once
        ("DIST_TEST_DIE", "at once"),
        # a hung one is given up on after --dist-timeout
        ("DIST_TEST_HANG", "--dist-timeout"),
    ],
)
def test_a_dead_or_hung_rank_is_named(work, fault, bound):
    """Rank 1 dies (SIGKILL) or hangs (SIGSTOP) as it starts step 3, after the checkpoint at step 2.
    Rank 0 must stop with an error naming rank 1, the checkpoint and the resume command, well within
    PROC_TIMEOUT_S (its bounds: the closed socket or --dist-timeout, then 3 s of grace for the marks)."""
    name = fault.lower()
    (work / name).mkdir()
    run = work / name / "run"
    args = train_args(work / "micro.json", run)
    if fault == "DIST_TEST_HANG":
        i = args.index("--dist-timeout")
        args[i + 1] = "8"  # start-up included: rank 0 loads the data while rank 1 waits
    agents, err0 = _two_agents(work, name, args, **{fault: "1:2"})
    assert agents[0].returncode != 0
    assert "rank 1 (host" in err0 and "stopped answering during the gradient all-reduce of step 3" in err0, (
        err0[-3000:]
    )
    assert "(step 2)" in err0 and "--resume" in err0, err0[-3000:]
    assert load_checkpoint(run / "checkpoint")[3].step == 2


def test_torchrun_restarts_a_killed_run_and_it_ends_bit_exact(work, two_ranks):
    """`--max-restarts 1`: rank 1 dies as it starts step 3; torchrun restarts both ranks, which resume
    from the checkpoint at step 2 by themselves and end with the bits of the uninterrupted run."""
    run, out = work / "restarted" / "run", work / "restarted"
    proc = launch_ranks(out, run, train_args(work / "micro.json", run), max_restarts=1, DIST_TEST_DIE="1:2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = dict(np.load(out / "params-rank0.npz"))
    _, (uninterrupted, _) = two_ranks
    for name in uninterrupted:
        assert np.array_equal(resumed[name], uninterrupted[name]), name
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # the restart kept the log up to its checkpoint


def test_fp16_allreduce_through_anekit_train_nproc(work, one_rank):
    """`anekit train --nproc 2 --allreduce fp16`: the gradients cross the wire as fp16 (loss-scaled).
    Stated tolerance: each parameter's distance to the exact 1-process result is at most 2 % of how far
    training moved it (fp16 keeps 11 significant bits: ~5e-4 relative per gradient element)."""
    run = work / "fp16" / "run"
    env = _env(work / "fp16", run)
    args = train_args(work / "micro.json", run, PER_RANK, "--allreduce", "fp16")
    proc = subprocess.run(
        [sys.executable, "-m", "anekit", *args, "--nproc", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=PROC_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data-parallel: 2 processes" in proc.stdout
    params = load_checkpoint(run / "checkpoint")[1]
    start = init_params(ModelConfig.from_file(work / "micro.json"), rng=0, scheme="dynamic")
    worst = max(
        np.linalg.norm(params[k] - one_rank[k]) / np.linalg.norm(one_rank[k] - start[k]) for k in one_rank
    )
    assert worst <= 0.02
    assert max_rel_diff(params, one_rank) > 0  # the fp16 path did run
