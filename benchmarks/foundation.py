"""Foundation benchmarks (issue "Foundation"): ratios measured in one process, never asserted.

1. The reference backend running 64 chained 1x1 convs on [1, 512, 1, 64] fp16 against the same
   computation written directly in NumPy (fp32 products, fp16 storage after every layer).
2. `loads` + `dumps` of a 2,000-op program.

    python benchmarks/foundation.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def best_of(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def conv_chain(repeats: int) -> None:
    from anekit.backends.reference import compile as ref_compile
    from anekit.mil import ct, mb, types

    rng = np.random.default_rng(0)
    C, S, depth = 512, 64, 64
    weights = [(rng.standard_normal((C, C, 1, 1)) / np.sqrt(C)).astype(np.float16) for _ in range(depth)]

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, C, 1, S), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        for i, w in enumerate(weights):
            x = mb.conv(x=x, weight=w, name=f"conv{i}")
        return x

    kernel = ref_compile(prog)
    (out_name,) = kernel.outputs
    x = rng.standard_normal((1, C, 1, S)).astype(np.float16)
    w32 = [w[:, :, 0, 0].astype(np.float32) for w in weights]  # converted once, as the backend does

    def numpy_direct():
        h = x[0, :, 0, :]
        for w in w32:
            h = (w @ h.astype(np.float32)).astype(np.float16)
        return h

    def reference():
        return kernel(x=x)[out_name]

    np.testing.assert_array_equal(reference()[0, :, 0, :], numpy_direct())
    # interleave the two so machine noise hits both alike
    t_np, t_ref = [], []
    for _ in range(repeats):
        t_np.append(best_of(numpy_direct, 1))
        t_ref.append(best_of(reference, 1))
    a, b = min(t_np), min(t_ref)
    print(
        f"conv chain 64 x [1,512,1,64] fp16: numpy {a * 1e3:.2f} ms, reference {b * 1e3:.2f} ms, "
        f"ratio {b / a:.3f} (target <= 1.10)"
    )


def text_round_trip(repeats: int) -> None:
    from anekit.mil import ct, dumps, loads, mb, types

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 64, 1, 1)) / 8).astype(np.float16)

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 64, 1, 32), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        for i in range(250):  # conv (with its 6 parameter consts + weight) and add: 8 ops per layer
            x = mb.add(x=x, y=mb.conv(x=x, weight=w, name=f"c{i}"), name=f"a{i}")
        return x

    n_ops = len(prog.functions["main"].operations)
    model = dumps(prog)

    def round_trip():
        return dumps(loads(model.text, model.weights))

    t_loads = best_of(lambda: loads(model.text, model.weights), repeats)
    parsed = loads(model.text, model.weights)
    t_dumps = best_of(lambda: dumps(parsed), repeats)
    t = best_of(round_trip, repeats)
    print(
        f"loads + dumps of a {n_ops}-op program ({len(model.text) / 1e3:.0f} kB of text): "
        f"{t * 1e3:.0f} ms (loads {t_loads * 1e3:.0f} ms, dumps {t_dumps * 1e3:.0f} ms; target < 500 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    conv_chain(args.repeats)
    text_round_trip(max(3, args.repeats // 4))


if __name__ == "__main__":
    main()
