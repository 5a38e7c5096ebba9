"""The pieces of data-parallel training that need no second process: rank detection, data sharding,
gradient buckets, the bandwidth arithmetic, the launcher's arguments and the errors a user sees."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from anekit.cli import app
from anekit.train import distributed
from anekit.train.data import Batches, DataError
from anekit.train.distributed import (
    DistributedError,
    DistributedUnavailable,
    GradBuckets,
    backward_order,
    estimate_scaling,
    ring_allreduce_bytes,
    world_from_env,
)
from anekit.train.options import OptionError, TrainOptions

runner = CliRunner()
TORCHRUN_ENV = {
    "WORLD_SIZE": "4",
    "RANK": "2",
    "LOCAL_RANK": "0",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29500",
}


def test_world_from_env_reads_torchrun_variables():
    assert world_from_env({}) is None
    info = world_from_env(TORCHRUN_ENV | {"TORCHELASTIC_RESTART_COUNT": "1"})
    assert (info.rank, info.world_size, info.local_rank, info.restart_count) == (2, 4, 0, 1)
    with pytest.raises(DistributedError, match=r"RANK=4 must be >= 0 and < 4"):
        world_from_env(TORCHRUN_ENV | {"RANK": "4"})
    with pytest.raises(DistributedError, match=r"WORLD_SIZE='two' is not an integer.*torchrun"):
        world_from_env(TORCHRUN_ENV | {"WORLD_SIZE": "two"})
    with pytest.raises(DistributedError, match="MASTER_PORT is not"):
        world_from_env({k: v for k, v in TORCHRUN_ENV.items() if k != "MASTER_PORT"})


def test_shards_are_disjoint_slices_of_the_single_process_batch():
    tokens = np.arange(5000) % 997
    whole = Batches(tokens, 6, 16, seed=3)
    ranks = [Batches(tokens, 2, 16, seed=3, rank=r, world=3) for r in range(3)]
    for _ in range(4):
        x, y = next(whole)
        parts = [next(b) for b in ranks]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
    # the saved state is the global stream's: one process with the global batch continues it
    state = ranks[1].state_dict()
    assert state["batch_size"] == 6 and state == ranks[0].state_dict()
    again = Batches(tokens, 6, 16)
    again.load_state_dict(state)
    np.testing.assert_array_equal(next(again)[0], next(whole)[0])
    with pytest.raises(
        DataError, match=r"drew 6 sequences.*4 process\(es\) x --batch 2 = 8.*6 does not split"
    ):
        Batches(tokens, 2, 16, rank=0, world=4).load_state_dict(state)


def test_gradient_buckets_are_views_in_backward_order():
    shapes = {"embed": (10, 4), "layers.0.wq": (4, 4), "layers.1.wq": (4, 4), "final_norm": (4,)}
    order = backward_order(shapes, 2)
    assert order == ["layers.1.wq", "layers.0.wq", "embed", "final_norm"]
    b = GradBuckets(shapes, order, np.float32, bucket_bytes=2 * 16 * 4)
    assert b.names == [["layers.1.wq", "layers.0.wq"], ["embed"], ["final_norm"]]
    b.views["layers.0.wq"][...] = 7
    assert b.flat[0][16:].tolist() == [7.0] * 16 and b.flat[0][:16].tolist() == [0.0] * 16
    assert all(np.shares_memory(b.views[n], b.flat[b.bucket_of[n]]) for n in shapes)
    assert b.nbytes == sum(4 * int(np.prod(s)) for s in shapes.values())


def test_bandwidth_arithmetic():
    # ring all-reduce: each rank sends 2 (W-1)/W of the payload
    assert ring_allreduce_bytes(1000, 1) == 0
    assert ring_allreduce_bytes(1000, 2) == 1000
    assert ring_allreduce_bytes(1000, 4) == 1500
    # 100 M fp32 gradients, 2 ranks, 40 Gb/s: 400 MB x 8 / 40e9 = 80 ms, + 2 hops x 16 buckets x 0.1 ms
    est = estimate_scaling(100_000_000, 2, 40.0, step_ms=80.0)
    buckets = -(-400_000_000 // (25 << 20))
    assert est.comm_ms == pytest.approx(80.0 + 2 * buckets * distributed.HOP_LATENCY_MS)
    assert est.efficiency == pytest.approx(80.0 / (80.0 + est.comm_ms))
    half = estimate_scaling(100_000_000, 2, 40.0, step_ms=80.0, precision="fp16")
    assert half.wire_bytes == est.wire_bytes / 2
    # a step 4x the exposed all-reduce reaches 80 %
    k = est.accum_factor_for(0.8)
    assert estimate_scaling(100_000_000, 2, 40.0, step_ms=80.0 * k).efficiency >= 0.8 - 1e-12
    assert estimate_scaling(100_000_000, 2, 40.0, step_ms=80.0 * (k - 1)).efficiency < 0.8


def test_scaling_command_json():
    res = runner.invoke(app, ["scaling", "--preset", "tiny", "--step-ms", "20", "--world", "2", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["params"] == 1672896 and doc["step_ms_source"] == "--step-ms"
    rows = {(e["link"], e["allreduce"]): e for e in doc["estimates"]}
    assert set(rows) == {(link, p) for link in ("Thunderbolt", "10 GbE") for p in ("full", "fp16")}
    tb = rows["Thunderbolt", "full"]
    assert tb["wire_bytes_per_rank"] == 1672896 * 4  # W = 2: the payload once
    res = runner.invoke(app, ["scaling", "--preset", "stories15m"])
    assert res.exit_code == 1 and "no published step time for stories15m" in res.output


def test_without_torch_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "torch.distributed", None)
    with pytest.raises(DistributedUnavailable, match=r"pip install 'anekit\[distributed\]'"):
        distributed.require_torch()
    res = runner.invoke(app, ["train", "--nproc", "2", "--steps", "1"])
    assert res.exit_code == 1 and "pip install 'anekit[distributed]'" in res.output


def test_nproc_checks(monkeypatch):
    res = runner.invoke(app, ["train", "--nproc", "0"])
    assert res.exit_code == 1 and "--nproc must be from 1 to 1024" in res.output
    res = runner.invoke(app, ["train", "--nproc", "2", "--lr", "5"])
    assert res.exit_code == 1 and "--lr must be" in res.output  # checked before any process starts
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = runner.invoke(app, ["train", "--nproc", "2"])
    assert res.exit_code == 1 and "leave --nproc and --max-restarts out" in res.output


def test_rank_args_give_each_rank_the_same_options(tmp_path, monkeypatch):
    import anekit.train.loop as loop
    from anekit.cli.train import rank_args

    opts = TrainOptions(
        preset="stories15m", steps=7, batch=3, accum=2, lr=1e-3, out=tmp_path / "r", resume=True,
        allreduce="fp16", bucket_mb=4.0, check_every=5, dist_timeout=60.0,
    )  # fmt: skip
    captured = []

    def fake_trainer(o, group=None):  # what `anekit train ARGS` builds, captured before any work
        captured.append(o)
        raise OptionError("captured")

    monkeypatch.setattr(loop, "Trainer", fake_trainer)
    res = runner.invoke(app, rank_args(opts, print_every=3))
    assert res.exit_code == 1 and "captured" in res.output
    assert captured == [opts]


def test_allreduce_option_is_checked():
    with pytest.raises(OptionError, match="--allreduce must be full or fp16"):
        TrainOptions(allreduce="bf16").validate()
    with pytest.raises(OptionError, match="--check-every"):
        TrainOptions(check_every=0).validate()
