"""Optimizer benchmark: one AdamW update over Stories110M-sized float32 parameters.

- host: `anekit.train.optim.AdamW` (the NumPy blocked pass on 2 threads and 1), against the
  two-pass implementation it replaced (kept below as `TwoPassAdamW`, for this comparison only),
  best of N in one process;
- engine: `anekit.train.engine_adamw.EngineAdamW` on the reference backend, its host-side time per
  update (packing gradients, reading results, forming the fp32 weights: everything but the kernel
  runs, which the runner reports).

    python benchmarks/optimizer.py [--preset stories110M] [--repeats 3] [--skip-old] [--skip-engine]

Figures are printed, never asserted (speed is measured by commands, not tests).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


class TwoPassAdamW:
    """The AdamW `anekit.train.optim` had before issue 12 (check every parameter, then apply; several
    temporaries per parameter), for the comparison only."""

    def __init__(self, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.t, self.m, self.v = 0, {}, {}

    def step(self, params, grads, lr=None):
        lr = self.lr if lr is None else lr
        t = self.t + 1
        with np.errstate(over="ignore", invalid="ignore"):
            bad = [
                n
                for n, w in params.items()
                if not all(np.isfinite(a).all() for a in self._upd(n, w, grads, lr, t))
            ]
            if bad:
                return bad
            self.t = t
            for n, w in params.items():
                w_new, self.m[n], self.v[n] = self._upd(n, w, grads, lr, t)
                w[...] = w_new
        return []

    def _upd(self, n, w, grads, lr, t):
        b1, b2 = self.betas
        g, m, v = grads[n], self.m.get(n), self.v.get(n)
        m_new = (1 - b1) * g if m is None else m * b1 + (1 - b1) * g
        v_new = (1 - b2) * np.square(g) if v is None else v * b2 + (1 - b2) * np.square(g)
        m_new, v_new = np.asarray(m_new, w.dtype), np.asarray(v_new, w.dtype)
        w_new = w * (1 - lr * self.weight_decay) if self.weight_decay and w.ndim >= 2 else w.copy()
        w_new -= lr * (m_new / (1 - b1**t)) / (np.sqrt(v_new / (1 - b2**t)) + self.eps)
        return w_new, m_new, v_new


def make(preset: str, seed: int = 0):
    from anekit.model import preset as get_preset

    cfg = get_preset(preset)
    rng = np.random.default_rng(seed)
    params, grads = {}, {}
    for name, shape in cfg.param_shapes().items():
        params[name] = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
        grads[name] = (rng.standard_normal(shape, dtype=np.float32) * 1e-3).astype(np.float32)
    return cfg, params, grads


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def host(params, grads, repeats: int, skip_old: bool) -> dict[str, float]:
    from anekit.train.optim import AdamW, global_norm

    norm = global_norm(grads)
    out = {}
    for threads in (2, 1):
        opt = AdamW(threads=threads)
        opt.step(params, grads, grad_norm=norm)  # first step: allocates the moments
        label = f"host, {threads} thread(s)"
        out[label] = best(lambda o=opt: o.step(params, grads, grad_norm=norm), repeats)
        out[label + ", norm computed"] = best(lambda o=opt: o.step(params, grads), repeats)
    if not skip_old:
        old = TwoPassAdamW()
        old.step(params, grads)
        out["two-pass (before issue 12)"] = best(lambda: old.step(params, grads), max(1, repeats - 1))
    return out


def engine(params, grads, repeats: int) -> dict[str, float]:
    from anekit.train.engine_adamw import EngineAdamW
    from anekit.train.optim import global_norm

    norm = global_norm(grads)
    opt = EngineAdamW(backend="reference")
    opt.step(params, grads, grad_norm=norm)
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        opt.step(params, grads, grad_norm=norm)
        total = time.perf_counter() - t
        runs.append((total - opt.last_kernel_s, total, opt.last_kernel_s))
    host_s, total, kernel = min(runs)
    opt.close()
    return {
        "engine AdamW host side": host_s,
        "engine AdamW kernels (reference emulation)": kernel,
        "engine AdamW total": total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="stories110m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-old", action="store_true")
    ap.add_argument("--skip-engine", action="store_true")
    args = ap.parse_args()
    cfg, params, grads = make(args.preset)
    n = sum(p.size for p in params.values())
    print(f"{cfg.name}: {n / 1e6:.1f}M float32 parameters, best of {args.repeats}")
    rows = host(params, grads, args.repeats, args.skip_old)
    if not args.skip_engine:
        rows |= engine(params, grads, args.repeats)
    for name, s in rows.items():
        print(f"  {name:<45} {s * 1e3:8.1f} ms  ({s / n * 1e9:5.2f} ns/parameter)")


if __name__ == "__main__":
    main()
