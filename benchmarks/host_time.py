"""Host-side time per training step, optimizer included, against the same step in PyTorch.

The host side of a step is everything but the kernel runs: `ModelRunner.step`'s time outside its
kernel calls, then the update the training loop makes (`anekit.train.loop.Trainer._update`: the
clipping norm, from the step's `grad_sq` when it has one, else a read pass; AdamW with the clipping
factor folded into its pass; restaging the weights into the kernels' inputs). On a Mac the kernels
run on the engine while this is the CPU's share; here they run on the reference backend, whose time
is reported apart and excluded. The PyTorch step is forward, backward and `torch.optim.AdamW` in
float32 on the CPU with the same thread count, run in the same process, interleaved; nothing is
asserted.

    python benchmarks/host_time.py [--preset stories110m] [--batch 1] [--repeats 3] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import torch_step_fn  # noqa: E402  (the same PyTorch model as the step benchmark)

PARTS = ("step_host_ms", "clip_ms", "adamw_ms", "restage_ms", "kernels_ms")
PARTS += ("main_ms", "worker_host_ms", "worker_kernels_ms", "wait_ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="stories110m")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="PyTorch threads (the runner uses 2: main + dW)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    import torch

    from anekit.model import preset
    from anekit.model.reference import init_params
    from anekit.train.optim import AdamW, clip_factor, global_norm
    from anekit.train.step import ModelRunner

    torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    params = init_params(cfg, 0)
    rng = np.random.default_rng(1)
    shape = (args.batch, cfg.seq_len)
    tok, tgt = rng.integers(0, cfg.vocab_size, shape), rng.integers(0, cfg.vocab_size, shape)

    step_fn = torch_step_fn(cfg, params, tok, tgt)
    topt = torch.optim.AdamW(list(step_fn.params.values()), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def torch_step():
        for p, g in zip(step_fn.params.values(), step_fn()):
            p.grad = g
        topt.step()

    runner = ModelRunner(cfg, args.batch, numerics="ane")
    runner.set_params(params)
    own = {k: np.array(v, dtype=np.float32) for k, v in params.items()}
    opt = AdamW(lr=3e-4)

    spare = {}

    def anekit_step() -> dict[str, float]:
        res = runner.step(tok, tgt, loss_scale=256.0, reuse=spare.pop("grads", None))
        t0 = time.perf_counter()  # as Trainer._update does it (one micro-batch, one process)
        norm = math.sqrt(res.grad_sq) if res.grad_sq is not None else global_norm(res.grads)
        t1 = time.perf_counter()
        opt.step(own, res.grads, lr=3e-4, grad_scale=clip_factor(norm, 1.0), grad_norm=norm)
        t2 = time.perf_counter()
        runner.set_params(own)
        t3 = time.perf_counter()
        spare["grads"] = res.grads  # the next step writes into them, as the loop's does
        step_host = res.timing.total_s - res.timing.engine_s
        return {
            "host_ms": (step_host + t3 - t0) * 1e3,
            "step_host_ms": step_host * 1e3,
            "clip_ms": (t1 - t0) * 1e3,
            "adamw_ms": (t2 - t1) * 1e3,
            "restage_ms": (t3 - t2) * 1e3,
            "kernels_ms": res.timing.engine_s * 1e3,
            "kernel_calls": res.timing.kernel_calls,
            # the step's host side split: the main thread's own work, the dW worker's work outside
            # its kernels (overlapped with the main thread), and the main thread's wait for the
            # worker (here mostly the worker's emulated dW kernels)
            "main_ms": res.timing.cpu_s * 1e3,
            "worker_host_ms": (res.timing.dw_s - res.timing.dw_engine_s) * 1e3,
            "worker_kernels_ms": res.timing.dw_engine_s * 1e3,
            "wait_ms": res.timing.dw_wait_s * 1e3,
        }

    torch_step()  # warm up both
    anekit_step()
    torch_ms, runs = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        torch_step()
        torch_ms.append((time.perf_counter() - t) * 1e3)
        runs.append(anekit_step())
    runner.close()
    host = [r["host_ms"] for r in runs]
    out = {
        "preset": cfg.name,
        "batch": args.batch,
        "seq_len": cfg.seq_len,
        "threads": args.threads,
        "repeats": args.repeats,
        "host_ms_median": statistics.median(host),
        "host_ms_best": min(host),
        "pytorch_step_ms_median": statistics.median(torch_ms),
        "pytorch_step_ms_best": min(torch_ms),
        "host_over_pytorch": statistics.median(host) / statistics.median(torch_ms),
        "parts_ms_median": {k: statistics.median(r[k] for r in runs) for k in PARTS},
        "kernel_calls": runs[-1]["kernel_calls"],
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    p = out["parts_ms_median"]
    print(
        f"{cfg.name}, batch {args.batch} x {cfg.seq_len}, {args.threads} threads, median of {args.repeats}:"
    )
    print(
        f"  host-side time per step, optimizer included: {out['host_ms_median']:.1f} ms "
        f"(best {out['host_ms_best']:.1f})"
    )
    print(
        f"    step outside kernels {p['step_host_ms']:.1f}, clip norm {p['clip_ms']:.1f}, "
        f"AdamW {p['adamw_ms']:.1f}, restage {p['restage_ms']:.1f} ms"
    )
    print(
        f"    step: main thread {p['main_ms']:.1f} + waiting for the dW worker {p['wait_ms']:.1f} ms; "
        f"worker outside its kernels {p['worker_host_ms']:.1f} ms (overlapped), in its kernels "
        f"{p['worker_kernels_ms']:.1f} ms"
    )
    print(f"  PyTorch step + AdamW (float32, CPU): {out['pytorch_step_ms_median']:.1f} ms")
    print(f"  host-side / PyTorch step: {out['host_over_pytorch']:.3f}")
    print(f"  (reference-backend kernels, excluded: {p['kernels_ms']:.0f} ms in {out['kernel_calls']} calls)")


if __name__ == "__main__":
    main()
