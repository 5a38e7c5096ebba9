"""The published benchmarks' programs, described by their work (`ProgramCost`) rather than built as MIL.

Each function mirrors one maderix program closely enough for the cost model (ane-private-api.md §4,
§5.2): the same ops, shapes, dtypes and I/O. Building the real MIL for the calibration would take
minutes (a 128 MB weight, 256-deep chains) and would not change a number: tests check that
`count_ops` on a small built program agrees with these descriptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .count import OpCost, ProgramCost

FP16, FP32, INT8 = 2, 4, 1


def conv_chain(
    channels: int,
    spatial: int,
    depth: int,
    io_bytes: int = FP32,
    spatial2d: bool = False,
    weights: str = "fp16",
    w8a8: bool = False,
) -> ProgramCost:
    """`depth` chained 1x1 convs on `[1, C, 1, S]` (or `[1, C, S, S]` with `spatial2d`).

    io_bytes=4: fp32 input and output with `cast` to/from fp16, as inmem_peak/inmem_bench/sram_* do
    (§4.1-4.3); io_bytes=2: fp16 I/O, as ane_int8_bench (§4.4).
    weights="int8": weights through `constexpr_affine_dequantize` (1 byte each); w8a8: `quantize` ->
    `dequantize` between layers and the convs after the first fed int8 activations (§4.4).
    """
    c = channels
    positions = spatial * spatial if spatial2d else spatial
    act = c * positions  # elements of one activation
    wbytes = c * c * (INT8 if weights == "int8" else FP16)
    ops = []
    if io_bytes == FP32:
        ops.append(OpCost("cast_in", "cast", "move", 0.0, act_bytes=act * (FP32 + FP16)))
    conv = dict(
        op_type="conv",
        kind="conv",
        flops=2.0 * c * c * positions,
        weight_bytes=wbytes,
        operand_bytes=wbytes,
        act_bytes=2 * act * FP16,
    )
    if w8a8 and depth > 1:
        ops.append(OpCost("conv0", **conv))
        ops.append(
            OpCost(
                "quantize", "quantize", "vector", 2.0 * act, act_bytes=act * (FP16 + INT8), count=depth - 1
            )
        )
        ops.append(
            OpCost(
                "dequantize",
                "dequantize",
                "vector",
                2.0 * act,
                act_bytes=act * (FP16 + INT8),
                count=depth - 1,
            )
        )
        ops.append(OpCost("conv_q", **conv, int8_act=True, count=depth - 1))
    else:
        ops.append(OpCost("conv", **conv, count=depth))
    if io_bytes == FP32:
        ops.append(OpCost("cast_out", "cast", "move", 0.0, act_bytes=act * (FP32 + FP16)))
    return ProgramCost(tuple(ops), input_bytes=act * io_bytes, output_bytes=act * io_bytes)


def square_matmul(n: int) -> ProgramCost:
    """An `[n, n] @ [n, n]` fp16 matmul, one operand an input, one a constant (the blog's matmul,
    §4.2/§4.3; my reading: the blog's 24 MB working set at n=2048 is its three 8 MB matrices)."""
    b = n * n * FP16
    op = OpCost("matmul", "matmul", "matmul", 2.0 * n**3, weight_bytes=b, operand_bytes=b, act_bytes=2 * b)
    return ProgramCost((op,), input_bytes=b, output_bytes=b)


@dataclass(frozen=True)
class Transformer:
    """The model shape of a training benchmark (ane-private-api.md §5.1)."""

    dim: int
    hidden: int
    heads: int
    head_dim: int
    layers: int
    seq: int


STORIES110M = Transformer(dim=768, hidden=2048, heads=12, head_dim=64, layers=12, seq=256)


def _rmsnorm(x, dim: int, weight):
    """RMSNorm over channels as stories_mil.h writes it: mul, reduce_sum, mul, add, pow, mul, mul."""
    from ..mil import mb

    sq = mb.mul(x=x, y=x)
    ss = mb.reduce_sum(x=sq, axes=[1], keep_dims=True)
    ss = mb.add(x=mb.mul(x=ss, y=np.float16(1.0 / dim)), y=np.float16(1e-5))
    rrms = mb.pow(x=ss, y=np.float16(-0.5))
    return mb.mul(x=mb.mul(x=x, y=rrms), y=weight)


@lru_cache(maxsize=4)
def static_forward_kernels(m: Transformer = STORIES110M) -> tuple[tuple[str, ProgramCost], ...]:
    """The static pipeline's two forward kernels, built as MIL op for op and counted (§5.2).

    fwdAttn: RMSNorm, Q/K/V 1x1 convs, reshape+transpose to heads, QK^T matmul, scale, mask, softmax,
    matmul with V, transpose+reshape back, Wo conv, concat of six taps. fwdFFN: RMSNorm, W1/W3 convs,
    sigmoid, two muls, W2 conv, concat of five taps (maderix/ANE@d91c984 training/stories_mil.h).
    Weights are zeros: only shapes and dtypes matter here.
    """
    from ..mil import ct, mb, types
    from .count import count_ops

    d, hdn, s, h, hd = m.dim, m.hidden, m.seq, m.heads, m.head_dim
    f16 = np.float16
    spec = [mb.TensorSpec(shape=(1, d, 1, s), dtype=types.fp16)]

    @mb.program(input_specs=spec, opset_version=ct.target.iOS18)
    def fwd_attn(x):
        xn = _rmsnorm(x, d, np.zeros((1, d, 1, 1), f16))
        qf, kf, vf = (mb.conv(x=xn, weight=np.zeros((d, d, 1, 1), f16)) for _ in range(3))
        q, k, v = (
            mb.transpose(x=mb.reshape(x=t, shape=[1, h, hd, s]), perm=[0, 1, 3, 2]) for t in (qf, kf, vf)
        )
        sc = mb.matmul(x=q, y=k, transpose_x=False, transpose_y=True)
        sc = mb.add(x=mb.mul(x=sc, y=f16(1.0 / np.sqrt(hd))), y=np.zeros((1, 1, s, s), f16))
        aw = mb.softmax(x=sc, axis=-1)
        a = mb.matmul(x=aw, y=v)
        af = mb.reshape(x=mb.transpose(x=a, perm=[0, 1, 3, 2]), shape=[1, d, 1, s])
        oo = mb.conv(x=af, weight=np.zeros((d, d, 1, 1), f16))
        return mb.concat(values=(oo, qf, kf, vf, af, xn), axis=1)

    @mb.program(input_specs=spec, opset_version=ct.target.iOS18)
    def fwd_ffn(x):
        xn = _rmsnorm(x, d, np.zeros((1, d, 1, 1), f16))
        h1 = mb.conv(x=xn, weight=np.zeros((hdn, d, 1, 1), f16))
        h3 = mb.conv(x=xn, weight=np.zeros((hdn, d, 1, 1), f16))
        gate = mb.mul(x=mb.mul(x=h1, y=mb.sigmoid(x=h1)), y=h3)
        y = mb.conv(x=gate, weight=np.zeros((d, hdn, 1, 1), f16))
        return mb.concat(values=(y, h1, h3, gate, xn), axis=1)

    return (("fwdAttn", count_ops(fwd_attn)), ("fwdFFN", count_ops(fwd_ffn)))


def static_ane_flops(m: Transformer = STORIES110M) -> float:
    """maderix's ANE FLOP accounting per step, 2*fwd + sdpa (ane-private-api.md §5.4 last paragraph)."""
    d, hdn, s, h, hd, n = m.dim, m.hidden, m.seq, m.heads, m.head_dim, m.layers
    fwd = n * (4 * 2 * d * d * s + 2 * 2 * d * hdn * s + 2 * hdn * d * s)
    sdpa = n * 2 * h * 5 * s * s * hd
    return 2.0 * fwd + sdpa
