"""Data-parallel benchmark (not a test; nothing is asserted):

1. `tiny` training throughput (tokens/s, median over the steps after the first two) with 1 process and
   with `anekit train --nproc 2` (the same --batch per process: 2 processes train twice the tokens
   per step), on the reference backend;
2. the gradient all-reduce of a `stories110m`-sized model (109.5 M fp32 gradients in 25 MB buckets,
   `GradReducer`) between 2 processes over loopback gloo, full and fp16 precision, best and median of
   R, beside the published M4 step (91.8 ms, ane-private-api.md §4.8) and, with --measure-step, a
   reference-backend step of stories110m on this machine;
3. the predicted scaling efficiency (`anekit scaling`'s arithmetic) for 2 and 4 M4 Macs over a
   Thunderbolt bridge (~40 Gb/s) and 10 GbE.

    python benchmarks/distributed.py [--steps 12] [--batch 8] [--repeats 5] [--measure-step] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _env() -> dict:
    import anekit

    env = dict(os.environ)
    src = str(Path(anekit.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def throughput(nproc: int, steps: int, batch: int) -> dict:
    """Median tokens/s and ms/step of `anekit train --preset tiny` with `nproc` processes."""
    from anekit.train.runlog import read_log

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [
            sys.executable, "-m", "anekit", "train", "--preset", "tiny", "--steps", str(steps),
            "--batch", str(batch), "--backend", "reference", "--out", str(run), "--eval-every", "0",
            "--sample-tokens", "0", "--save-every", str(steps),
        ]  # fmt: skip
        if nproc > 1:
            cmd += ["--nproc", str(nproc)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"anekit train --nproc {nproc} failed:\n{proc.stderr[-3000:]}")
        log = read_log(run / "log.jsonl")[2:]
    return {
        "processes": nproc,
        "batch_per_process": batch,
        "tokens_per_s": statistics.median(e.tokens_per_s for e in log),
        "ms_per_step": statistics.median(e.ms_per_step for e in log),
        "comm_ms": statistics.median(e.comm_ms for e in log) if nproc > 1 else None,
        "steps_measured": len(log),
        "wall_s_with_start_up": wall,
    }


def allreduce_worker(repeats: int, preset: str) -> None:
    """Run as each rank under torchrun: time `GradReducer` over the preset's gradient shapes."""
    from anekit.model.config import preset as get_preset
    from anekit.train.distributed import GradBuckets, GradReducer, Group, backward_order, world_from_env

    cfg = get_preset(preset)
    shapes = cfg.param_shapes()
    group = Group(world_from_env())
    buckets = GradBuckets(shapes, backward_order(shapes, cfg.n_layers), np.float32, 25 << 20)
    rng = np.random.default_rng(group.rank)
    for flat in buckets.flat:
        flat[:] = rng.standard_normal(flat.shape, dtype=np.float32) * 1e-3
    out = {
        "preset": preset,
        "params": cfg.n_params(),
        "buckets": len(buckets.flat),
        "world": group.world_size,
    }
    for precision in ("full", "fp16"):
        reducer = GradReducer(group, buckets, precision)
        times = []
        for _ in range(repeats + 1):  # the first is a warm-up
            group.all_reduce_(np.zeros(1))  # start together
            t0 = time.perf_counter()
            reducer.start(256.0, 1)
            reducer.ready(shapes)
            reducer.finish()
            times.append(time.perf_counter() - t0)
        out[precision] = {"best_ms": min(times[1:]) * 1e3, "median_ms": statistics.median(times[1:]) * 1e3}
    if group.rank == 0:
        print("ALLREDUCE " + json.dumps(out), flush=True)
    group.close()


def allreduce(repeats: int, preset: str) -> dict:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        __file__, "--allreduce-worker", "--repeats", str(repeats), "--preset", preset,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("ALLREDUCE "):
            return json.loads(line[len("ALLREDUCE ") :])
    raise SystemExit(f"the all-reduce benchmark failed:\n{proc.stderr[-3000:]}")


def reference_step_ms(preset: str) -> float:
    """One training step of `preset` at batch 1 on the reference backend here (best of 2)."""
    from anekit.model.config import preset as get_preset
    from anekit.model.reference import init_params
    from anekit.train.step import ModelRunner

    cfg = get_preset(preset)
    rng = np.random.default_rng(0)
    tok = rng.integers(0, cfg.vocab_size, (1, cfg.seq_len))
    with ModelRunner(cfg, 1, backend="reference") as runner:
        runner.set_params(init_params(cfg, rng=0))
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            runner.step(tok, np.roll(tok, -1, axis=1), loss_scale=256.0)
            best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--preset", default="stories110m", help="model whose gradients are all-reduced")
    ap.add_argument("--measure-step", action="store_true", help="also time a reference step of --preset")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--allreduce-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.allreduce_worker:
        allreduce_worker(args.repeats, args.preset)
        return

    from anekit.model.config import preset as get_preset
    from anekit.train.distributed import PUBLISHED_STEP_MS, estimate_scaling

    report: dict = {"cores": os.cpu_count()}
    report["tiny"] = [throughput(n, args.steps, args.batch) for n in (1, 2)]
    ar = allreduce(args.repeats, args.preset)
    published, source = PUBLISHED_STEP_MS.get(args.preset, (None, None))
    for precision in ("full", "fp16"):
        wire = ar["params"] * (4 if precision == "full" else 2)  # W = 2: each rank sends the payload once
        r = ar[precision]
        r["loopback_gbps"] = wire * 8 / (r["best_ms"] * 1e-3) / 1e9
        if published:
            r["fraction_of_published_step"] = r["median_ms"] / published
    ar["published_step_ms"], ar["published_step_source"] = published, source
    if args.measure_step:
        ar["reference_step_ms"] = reference_step_ms(args.preset)
        for precision in ("full", "fp16"):
            ar[precision]["fraction_of_reference_step"] = ar[precision]["median_ms"] / ar["reference_step_ms"]
    report["allreduce"] = ar
    n = get_preset(args.preset).n_params()
    report["predicted"] = [
        {"link": link} | estimate_scaling(n, w, gbps, published, p).to_json()
        for w in (2, 4)
        for link, gbps in (("Thunderbolt ~40 Gb/s", 40.0), ("10 GbE", 10.0))
        for p in ("full", "fp16")
    ] if published else []  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"machine: {report['cores']} cores; reference backend (CPU emulation)")
    for t in report["tiny"]:
        comm = f", all-reduce wait {t['comm_ms']:.1f} ms" if t["comm_ms"] is not None else ""
        print(
            f"tiny, {t['processes']} process(es) x --batch {t['batch_per_process']}: "
            f"{t['tokens_per_s']:,.0f} tokens/s, {t['ms_per_step']:.1f} ms/step{comm} "
            f"(median of {t['steps_measured']} steps)"
        )
    print(
        f"{args.preset} gradients ({ar['params'] / 1e6:.1f} M, {ar['buckets']} buckets), 2 ranks, "
        "loopback gloo:"
    )
    for precision in ("full", "fp16"):
        r = ar[precision]
        line = (
            f"  {precision}: best {r['best_ms']:.0f} ms, median {r['median_ms']:.0f} ms "
            f"({r['loopback_gbps']:.1f} Gb/s effective)"
        )
        if published:
            line += (
                f"; {100 * r['fraction_of_published_step']:.0f} % of the published M4 step ({published:g} ms)"
            )
        if "fraction_of_reference_step" in r:
            line += (
                f"; {100 * r['fraction_of_reference_step']:.1f} % of a reference step here "
                f"({ar['reference_step_ms']:.0f} ms)"
            )
        print(line)
    if published:
        print(f"predicted for M4 Macs ({published:g} ms per step, {source}), no overlap assumed:")
        for p in report["predicted"]:
            print(
                f"  {p['world']} Macs, {p['link']}, {p['allreduce']}: all-reduce {p['comm_ms']:.0f} ms, "
                f"efficiency {100 * p['efficiency']:.0f} %, speed-up {p['speedup']:.2f}x; "
                f"x{p['step_factor_for_80_percent']} accumulation for 80 %"
            )


if __name__ == "__main__":
    main()
