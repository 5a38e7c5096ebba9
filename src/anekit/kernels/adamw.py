"""AdamW's moment update on the engine: one block of gradients and fp16 moments in, the new moments
and the normalised step out (`anekit.train.engine_adamw.EngineAdamW` runs it over every parameter).

Input `[1, 3R + 1, 1, W]` fp16 (kernels/common.py conventions; W a multiple of 32, 64-byte rows,
ane-private-api.md §1.7), stacked on channels:

- `g` [R, W]: the gradient times the block's scale S (a power of two the host picks so the block's
  largest gradient or moment sits near 2^14: fp16's range is used, nothing overflows);
- `m` [R, W]: the first moment times the previous scale S';
- `r` [R, W]: √v, the square root of the second moment, times S'. √v has the range of |g|, so it
  neither underflows nor overflows where g² would (fp16's smallest normal is 6e-5, its largest
  65504: g² of a gradient of 1e-3·S would flush to zero below S = 8 and overflow above S = 256);
- `coef` [1, W], columns 0-5: ρ = S/S' (a power of two), β1, 1-β1, √β2, √(1-β2), ε·S·√c2 (c2 =
  1-β2^t). The step counter and the learning rate enter here and on the host, never baked, so one
  compile serves every step and every block.

Computed (each op rounds to fp16, as the engine's elementwise units do; §10.4):

    m' = β1·(ρ·m) + (1-β1)·g
    r' = hypot(√β2·ρ·r, √(1-β2)·g) = a·√(1 + (b/a)²), a = max, b = min of the two magnitudes
    q  = m' / max(r' + ε·S·√c2, 2^-14)

hypot never forms a square larger than 1, so r' is exact to fp16 rounding for every |g| < 65504;
the 2^-14 floor (fp16's smallest normal) keeps 0/0 out where m' = r' = 0 on an engine that flushes
subnormals, and sits 2^-28 below the block's largest value: an effective ε of at most
max(ε, 2^-28·max|g|/√c2), far below the gradients fp16 can hold anyway.

Output `[1, 3R + 1, 1, W]`: `q` [R] (the step divided by the host's k = lr·√c2/c1: AdamW's update
is k·q), `m` [R] and `r` [R] (the new moments at scale S), `stats` [1]: column 0 max|m'|, column 1
max r' (the host's next choice of S; reduce_max is exact).
"""

from __future__ import annotations

import numpy as np

from .._coreml import mb
from ..engine_limits import FP16_BYTES, OPERAND_BYTES, ROW_ALIGN
from .common import KernelSpec, build_program, input_block
from .layout import Layout

__all__ = ["ADAMW_COEFFICIENTS", "DEFAULT_ROWS", "DEFAULT_WIDTH", "adamw_update"]

#: Rows and width of one block: each of g, m, r, q is 256 x 2048 fp16 = 1 MB, under the 2 MB operand
#: size past which operands stream from DRAM (engine_limits.OPERAND_BYTES), and a block's dozen
#: intermediates stay inside the 32 MB SRAM (engine_limits.SRAM_BYTES).
DEFAULT_ROWS = 256
DEFAULT_WIDTH = OPERAND_BYTES // (2 * DEFAULT_ROWS * FP16_BYTES)  # 2048: a block is half the operand size
#: The columns of the `coef` row, in order.
ADAMW_COEFFICIENTS = ("rho", "beta1", "one_minus_beta1", "sqrt_beta2", "sqrt_one_minus_beta2", "eps_scaled")
#: fp16's smallest normal number: the floor of both divisors (see the module docstring).
_FLOOR = np.float16(2.0**-14)


def adamw_update(rows: int = DEFAULT_ROWS, width: int = DEFAULT_WIDTH) -> KernelSpec:
    """The moment-update kernel for blocks of `rows` x `width` elements (see the module docstring)."""
    if rows < 1 or width < len(ADAMW_COEFFICIENTS) or width % ROW_ALIGN:
        raise ValueError(
            f"adamw_update: rows must be >= 1 and width a multiple of {ROW_ALIGN} of at least "
            f"{len(ADAMW_COEFFICIENTS)}, got rows {rows}, width {width}"
        )
    r = rows
    inp = Layout.stacked([("g", r), ("m", r), ("r", r), ("coef", 1)], width=width)
    out = Layout.stacked([("q", r), ("m", r), ("r", r), ("stats", 1)], width=width)
    block = [1, r, 1, width]

    def body(x):
        g = input_block(x, inp, "g", block)
        m = input_block(x, inp, "m", block)
        rr = input_block(x, inp, "r", block)
        coef = input_block(x, inp, "coef", [1, 1, 1, width])
        c = {
            name: mb.slice_by_size(x=coef, begin=[0, 0, 0, i], size=[1, 1, 1, 1], name=f"c_{name}")
            for i, name in enumerate(ADAMW_COEFFICIENTS)
        }
        # first moment
        m_rho = mb.mul(x=m, y=c["rho"], name="m_rho")
        m_old = mb.mul(x=m_rho, y=c["beta1"], name="m_decayed")
        g_m = mb.mul(x=g, y=c["one_minus_beta1"], name="g_m")
        m_new = mb.add(x=m_old, y=g_m, name="m_new")
        # √v as a hypot of √β2·ρ·r and √(1-β2)·|g|
        r_rho = mb.mul(x=rr, y=c["rho"], name="r_rho")
        r_old = mb.mul(x=r_rho, y=c["sqrt_beta2"], name="r_decayed")
        g_v = mb.abs(x=mb.mul(x=g, y=c["sqrt_one_minus_beta2"], name="g_v_signed"), name="g_v")
        hi = mb.maximum(x=r_old, y=g_v, name="hyp_hi")
        lo = mb.minimum(x=r_old, y=g_v, name="hyp_lo")
        ratio = mb.real_div(x=lo, y=mb.maximum(x=hi, y=_FLOOR, name="hyp_hi_floor"), name="hyp_ratio")
        ratio2 = mb.mul(x=ratio, y=ratio, name="hyp_ratio2")
        root = mb.sqrt(x=mb.add(x=ratio2, y=np.float16(1.0), name="hyp_one_plus"), name="hyp_root")
        r_new = mb.mul(x=hi, y=root, name="r_new")
        # the normalised step
        den = mb.add(x=r_new, y=c["eps_scaled"], name="den_eps")
        den = mb.maximum(x=den, y=_FLOOR, name="den")
        q = mb.real_div(x=m_new, y=den, name="q")
        # the block's largest moments, for the host's next scale (two exact reductions)
        m_abs = mb.abs(x=m_new, name="m_abs")
        m_max = mb.reduce_max(
            x=mb.reduce_max(x=m_abs, axes=[3], keep_dims=True, name="m_max_w"),
            axes=[1],
            keep_dims=True,
            name="m_max",
        )
        r_max = mb.reduce_max(
            x=mb.reduce_max(x=r_new, axes=[3], keep_dims=True, name="r_max_w"),
            axes=[1],
            keep_dims=True,
            name="r_max",
        )
        pad = mb.const(val=np.zeros((1, 1, 1, width - 2), np.float16), name="stats_pad")
        stats = mb.concat(values=[m_max, r_max, pad], axis=3, interleave=False, name="stats")
        return [q, m_new, r_new, stats]

    program = build_program(inp, out, body)
    return KernelSpec(program, inp, out, "adamw_update", 0)
