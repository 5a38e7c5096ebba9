"""The reference backend's cost per training kernel: each kernel of a `tiny` training layer run
through a binding as the training runner drives it (activation segments written with
`write_slice`, outputs read with `run_float32`), one BLAS thread, best of N; and where the time
goes, per op type (`--ops`), beside the same op's NumPy work without the fp16 rounding.

    python benchmarks/reference_plan.py [--preset tiny] [--batch 8] [--repeats 20] [--ops]

Random inputs of the right scales (the op costs do not depend on the values, except that the
attention masks put -inf in every call, as in training). Never asserted; figures for notes.
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np


def _kernels(cfg, batch: int):
    from anekit.kernels.attention import attention_backward, attention_forward
    from anekit.kernels.ffn import ffn_backward, ffn_forward
    from anekit.kernels.wgrad import attention_wgrad, ffn_wgrad

    makers = {
        "attention_forward": attention_forward,
        "ffn_forward": ffn_forward,
        "ffn_backward": ffn_backward,
        "attention_backward": attention_backward,
        "attention_wgrad": attention_wgrad,
        "ffn_wgrad": ffn_wgrad,
    }
    out = {}
    for name, make in makers.items():
        try:
            out[name] = make(cfg, batch, cfg.seq_len, "fp16")
        except TypeError:  # a generator without the precision argument
            out[name] = make(cfg, batch, cfg.seq_len)
    return out


def _bound(spec, kernel, rng):
    """A binding with a whole random input written, and the activation segments to rewrite per call."""
    from anekit.kernels.layout import Layout

    lay: Layout = spec.input_layout
    staged = {st.segment for st in spec.staging}
    buf = (rng.standard_normal(lay.shape) * 0.5).astype(np.float16)
    for st in spec.staging:
        seg = lay[st.segment]
        buf[seg.index] = (rng.standard_normal(seg.shape) * 0.05).astype(np.float16)
    binding = kernel.new_binding()
    binding.write(**{spec.input_name: buf})
    acts = [
        (lay[s.name].index, (rng.standard_normal(s.shape) * 0.5).astype(np.float32))
        for s in lay.segments
        if s.name not in staged
    ]
    return binding, acts


def _best(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _per_op(kernel, binding, repeats: int) -> collections.Counter:
    """Seconds per op type of one run (best of `repeats` per step)."""
    plan, ops = kernel._plan, kernel._step_ops
    best = [float("inf")] * len(plan)
    for _ in range(repeats):
        env = kernel._env_template.copy()
        for name, slot in kernel._input_slots.items():
            env[slot] = binding._staged[name]
        with np.errstate(all="ignore"):
            for i, step in enumerate(plan):
                t = time.perf_counter()
                step(env)
                best[i] = min(best[i], time.perf_counter() - t)
    out: collections.Counter = collections.Counter()
    for op, t in zip(ops, best):
        out[op.op_type] += t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--ops", action="store_true", help="also the time per op type")
    args = ap.parse_args()

    from anekit.backends.reference import compile as ref_compile
    from anekit.model import preset
    from anekit.train.blas import set_blas_threads

    set_blas_threads(1)
    cfg = preset(args.preset)
    rng = np.random.default_rng(0)
    total = 0.0
    by_op: collections.Counter = collections.Counter()
    print(f"{cfg.name}, {args.batch} x {cfg.seq_len} tokens per call, best of {args.repeats} (ms):")
    for name, spec in _kernels(cfg, args.batch).items():
        kernel = ref_compile(spec.program, numerics="ane")
        binding, acts = _bound(spec, kernel, rng)

        def call(binding=binding, acts=acts, input_name=spec.input_name):
            for index, values in acts:
                binding.write_slice(input_name, index, values)
            return binding.run_float32()

        t_call = _best(call, args.repeats)
        t_run = _best(binding.run_float32, args.repeats)
        total += t_call
        print(f"  {name:<20} {t_call * 1e3:7.2f}  (run alone {t_run * 1e3:6.2f}, {len(kernel._plan)} steps)")
        if args.ops:
            by_op.update(_per_op(kernel, binding, args.repeats))
    layers = f"x {cfg.n_layers} layers = {total * cfg.n_layers * 1e3:.1f}"
    print(f"  {'one layer':<20} {total * 1e3:7.2f}  {layers}")
    if args.ops:
        print("per op type, one layer (ms):")
        for op, t in by_op.most_common():
            print(f"  {op:<20} {t * 1e3:7.2f}")


if __name__ == "__main__":
    main()
