"""The benchmark programs, each with the float64 NumPy computation it must agree with.

Shapes follow the published benchmarks (ane-private-api.md §4): activations `[1, C, 1, S]` (or
`[1, C, S, S]` for the INT8 benchmark's 2-D spatial), linear layers as 1x1 convs, fp16 everywhere. One
difference, on purpose: inputs and outputs are fp16 here, where inmem_peak/inmem_bench/sram_* take fp32
and `cast` (the cost-model column counts what is actually built, so it stays comparable).

Weights are N(0, 1/C), so activations keep unit scale through any depth (no fp16 overflow), and the
float64 reference stays within ~1e-3 (relative) of an fp16 engine even 128 layers deep.
"""

from __future__ import annotations

import numpy as np

from .core import Arrays, Case

F16 = np.float16


def _weights(rng: np.random.Generator, c_out: int, c_in: int) -> np.ndarray:
    return (rng.standard_normal((c_out, c_in), dtype=np.float32) / np.sqrt(c_in)).astype(F16)


def _int8_weights(rng: np.random.Generator, c: int) -> tuple[np.ndarray, np.float16]:
    """int8 codes and an fp16 scale whose product is ~N(0, 1/C) (scale = 1 / (32 sqrt C))."""
    q = np.clip(np.rint(rng.standard_normal((c, c), dtype=np.float32) * 32), -127, 127).astype(np.int8)
    return q, F16(1.0 / (32.0 * np.sqrt(c)))


def conv_chain(
    channels: int,
    spatial: int,
    depth: int,
    seed: int = 0,
    spatial2d: bool = False,
    weights: str = "fp16",
    w8a8: bool = False,
    act_scale: float = 2.0**-4,
    check_rows: int | None = None,
) -> Case:
    """`depth` chained 1x1 convs, C -> C, on `[1, C, 1, S]` (or `[1, C, S, S]`); output `y`.

    weights="int8": weights as int8 through `constexpr_affine_dequantize` (weight-only int8).
    w8a8: between layers, `quantize` to int8 with scale `act_scale` then `dequantize` (the W8A8 program
        of ane_int8_bench, §4.4). The float64 reference rounds each conv output to fp16 before quantizing,
        as the program stores it in fp16: otherwise a half-ulp difference at a rounding boundary would
        become a whole quantization step.
    check_rows: verify only this many (random) output channels: a large conv's float64 recomputation
        would otherwise cost more than the benchmark.
    """
    from ..mil import ct, mb, types

    rng = np.random.default_rng(seed)
    c = channels
    shape = (1, c, spatial, spatial) if spatial2d else (1, c, 1, spatial)
    positions = spatial * spatial if spatial2d else spatial
    layers, w64 = _chain_weights(rng, c, depth, weights)
    x = rng.standard_normal(shape, dtype=np.float32).astype(F16)
    s_act = F16(act_scale)

    @mb.program(input_specs=[mb.TensorSpec(shape=shape, dtype=types.fp16)], opset_version=ct.target.iOS18)
    def prog(x):
        h = x
        for i, layer in enumerate(layers):
            last = i == depth - 1
            h = mb.conv(x=h, weight=_mil_weight(layer, i), name="y" if last else f"conv{i}")
            if w8a8 and not last:
                q8 = mb.quantize(input=h, scale=s_act, output_dtype="int8", name=f"q{i}")
                h = mb.dequantize(input=q8, scale=s_act, name=f"dq{i}")
        return h

    idx = None
    if check_rows is not None and check_rows < c:
        idx = np.sort(rng.choice(c, size=check_rows, replace=False))
    mode = "w8a8" if w8a8 else ("int8-weights" if weights == "int8" else "fp16")
    label = f"{depth}x conv {c}ch " + (f"{spatial}x{spatial}" if spatial2d else f"sp{spatial}")
    if mode != "fp16":
        label += f" {mode}"
    params = {"channels": c, "spatial": spatial, "depth": depth, "spatial2d": spatial2d, "mode": mode}
    return Case(
        label,
        params,
        prog,
        {"x": x},
        _chain_expected(w64, shape, positions, s_act if w8a8 else None, idx),
        2.0 * c * c * positions * depth,
        tol=2e-2 if w8a8 else 1e-2,
        rows={"y": (1, idx)} if idx is not None else {},
    )


def _chain_weights(
    rng: np.random.Generator, c: int, depth: int, weights: str
) -> tuple[list, list[np.ndarray]]:
    """Each layer's weight as the program holds it (fp16 array, or int8 codes and scale), and in float64."""
    if weights == "int8":
        qs = [_int8_weights(rng, c) for _ in range(depth)]
        return qs, [q.astype(np.float64) * np.float64(s) for q, s in qs]
    if weights == "fp16":
        ws = [_weights(rng, c, c) for _ in range(depth)]
        return ws, [w.astype(np.float64) for w in ws]
    raise ValueError(f"weights must be 'fp16' or 'int8', not {weights!r}")


def _mil_weight(layer, i: int):
    """A layer's 1x1 conv weight in the program: a constant, or int8 codes dequantized in the program."""
    from ..mil import mb

    if isinstance(layer, tuple):
        q, s = layer
        return mb.constexpr_affine_dequantize(
            quantized_data=q[:, :, None, None], zero_point=np.int8(0), scale=s, axis=0, name=f"w{i}"
        )
    return layer[:, :, None, None]


def _chain_expected(w64: list[np.ndarray], shape: tuple, positions: int, s_act, idx):
    """The float64 computation of the chain; `s_act` (W8A8 only) quantizes between layers; `idx`: the
    output channels checked (None: all)."""
    c, depth = shape[1], len(w64)

    def expected(inputs: Arrays) -> Arrays:
        h = inputs["x"].astype(np.float64).reshape(c, positions)
        for i, w in enumerate(w64):
            last = i == depth - 1
            if last and idx is not None:
                w = w[idx]
            h = w @ h
            if s_act is not None and not last:
                h16 = h.astype(F16).astype(np.float64)
                h = np.clip(np.rint(h16 / float(s_act)), -128, 127) * float(s_act)
        out_c = h.shape[0]
        return {"y": h.reshape((1, out_c) + shape[2:])}

    return expected


def matmul_const(channels: int, spatial: int, seed: int = 0) -> Case:
    """`x[1, 1, S, C] @ W^T[C, C]` with a constant weight: the same FLOPs as a 1x1 conv C -> C over S."""
    from ..mil import ct, mb, types

    rng = np.random.default_rng(seed)
    c, s = channels, spatial
    wt = _weights(rng, c, c).T.copy()  # [C_in, C_out]
    x = rng.standard_normal((1, 1, s, c), dtype=np.float32).astype(F16)

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 1, s, c), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.matmul(x=x, y=wt, name="y")

    def expected(inputs: Arrays) -> Arrays:
        return {"y": inputs["x"].astype(np.float64) @ wt.astype(np.float64)}

    return Case(
        f"matmul const {c}x{c} sp{s}",
        {"channels": c, "spatial": s, "kind": "matmul-const"},
        prog,
        {"x": x},
        expected,
        2.0 * c * c * s,
    )


def matmul_dynamic(channels: int, spatial: int, seed: int = 0) -> Case:
    """A matmul whose weight travels in the input: `[1, C, 1, S + C]` holds `[x | W^T]` per channel row,
    sliced apart in the program (the dynamic pipeline's idiom, ane-private-api.md §5.4, §1.10 item 6)."""
    from ..mil import ct, mb, types

    rng = np.random.default_rng(seed)
    c, s = channels, spatial
    w = _weights(rng, c, c)  # [C_out, C_in]
    packed = np.empty((1, c, 1, s + c), dtype=F16)
    packed[0, :, 0, :s] = rng.standard_normal((c, s), dtype=np.float32).astype(F16)
    packed[0, :, 0, s:] = w.T  # row c_in holds W[:, c_in]

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, c, 1, s + c), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(p):
        act = mb.reshape(x=mb.slice_by_size(x=p, begin=[0, 0, 0, 0], size=[1, c, 1, s]), shape=[c, s])
        wt = mb.reshape(x=mb.slice_by_size(x=p, begin=[0, 0, 0, s], size=[1, c, 1, c]), shape=[c, c])
        y = mb.matmul(x=wt, y=act, transpose_x=True)
        return mb.reshape(x=y, shape=[1, c, 1, s], name="y")

    def expected(inputs: Arrays) -> Arrays:
        p = inputs["p"].astype(np.float64)[0, :, 0, :]
        return {"y": (p[:, s:].T @ p[:, :s]).reshape(1, c, 1, s)}

    return Case(
        f"matmul dynamic {c}x{c} sp{s}",
        {"channels": c, "spatial": s, "kind": "matmul-dynamic"},
        prog,
        {"p": packed},
        expected,
        2.0 * c * c * s,
    )


def weight_mb(channels: int) -> float:
    """MB (MiB, as the published benchmarks print it) of a C x C fp16 weight."""
    return channels * channels * 2 / 2**20


def channels_for_mb(mb_: float, multiple: int = 64) -> int:
    """Channels C whose C x C fp16 weight is closest to `mb_` MiB, rounded to a multiple of 64."""
    c = np.sqrt(mb_ * 2**20 / 2)
    return max(multiple, int(round(c / multiple)) * multiple)
