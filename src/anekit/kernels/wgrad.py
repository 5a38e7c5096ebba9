"""Weight-gradient kernels: every dW = dy·xᵀ of a layer on the engine (issue 12), where §5.4's
dynamic pipeline runs them as cblas calls on the CPU (ane-private-api.md §5.4 "async cblas dW").

- `attention_wgrad`: dWq = dq·xnormᵀ, dWk = dk·xnormᵀ, dWv = dv·xnormᵀ and dWoᵀ = attn·dyᵀ, from
  the attention kernels' own outputs: `dq`, `dk`, `dv` of `attention_backward` are already the
  gradients of the projections Wq·xnorm, Wk·xnorm, Wv·xnorm (RoPE rotated back, the 1/√hd scale
  applied, kv heads reduced), `attn` is `attention_forward`'s, `dy` the gradient of its output `o`.
- `ffn_wgrad`: dW1 = dh1·xnormᵀ, dW3 = dh3·xnormᵀ (`ffn_backward`'s dh1, dh3) and
  dW2ᵀ = gate·dyᵀ (`ffn_forward`'s gate, `dy` the gradient of the FFN output).

Every result is `[rows, D]` (dWo and dW2 come out transposed, `GradOut.transposed`), so the output
is one `concat` on channels of width D (padded to a multiple of 32, ane-private-api.md §1.7: the
x operands carry zero rows up to it, so the padding columns of the output are zeros). Both
operands are activations: the input stacks them on channels over the token axis (the
channel-packed inputs of §5.4's sdpaBwd kernels), and each product is one `matmul` with
`transpose_y` contracting over tokens, no explicit transpose (mil-text.md §3.5). The engine
accumulates a matmul in fp32 (§10.4) and rounds the result to fp16 once; the host adds the
fp16 results into its fp32 gradients (accumulation across micro-batches stays fp32, §10.4).

Limits (`anekit.engine_limits`): the input is `[1, C, 1, W]` with W the token count, at most
`MAX_SPATIAL`; more tokens are split into tiles of at most that width (outside the M4 0x1d
width band), stacked on channels, whose products are added in the graph. Matmul operands and
results have at most `MAX_SPATIAL` rows: larger outputs (hidden_dim > 16384) are split into row
chunks concatenated on channels. The kernels take no weights (`staging = ()`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .._coreml import mb
from ..engine_limits import MAX_AXIS, MAX_SPATIAL, WIDTH_0X1D_BAND
from .common import DEFAULT_CONST_PRECISION, KernelSpec, TransformerShape, build_program, matmul_flops
from .layout import ROW_ALIGN, Layout, Segment, round_up

__all__ = [
    "attention_wgrad",
    "ffn_wgrad",
    "GradOut",
    "ATTENTION_GRADS",
    "FFN_GRADS",
    "GRADS",
    "token_tiles",
]

# Bound to private names so a test can lower one limit to exercise the tiled paths
# (anekit.engine_limits: "a module binds a constant to its own private name").
_MAX_WIDTH = MAX_SPATIAL  # input width = tokens per tile (docs/ane-facts.md#spatial-cap)
_MAX_ROWS = MAX_SPATIAL  # height of a matmul operand / result `[1, 1, rows, cols]`
_MAX_CHANNELS = MAX_AXIS  # channels of the stacked input
_BAND = WIDTH_0X1D_BAND  # widths that fail with status 0x1d on M4 (mil-text.md §5 #13)


@dataclass(frozen=True)
class GradOut:
    """One weight gradient in a kernel's output: output segment `segment` holds the gradient of
    the layer parameter `param` (its name inside a layer), transposed or not."""

    segment: str
    param: str
    transposed: bool = False

    def value(self, outputs: Mapping[str, np.ndarray], dim: int) -> np.ndarray:
        """The gradient, shaped like the parameter (a view of `outputs`, width padding dropped)."""
        block = outputs[self.segment][:, :dim]
        return block.T if self.transposed else block


ATTENTION_GRADS = (GradOut("wq", "wq"), GradOut("wk", "wk"), GradOut("wv", "wv"), GradOut("wo_t", "wo", True))
FFN_GRADS = (GradOut("w1", "w1"), GradOut("w3", "w3"), GradOut("w2_t", "w2", True))
#: Kernel name -> the weight gradients in its output.
GRADS = {"attention_wgrad": ATTENTION_GRADS, "ffn_wgrad": FFN_GRADS}


def _in_band(width: int) -> bool:
    return _BAND[0] <= width <= _BAND[1]


def token_tiles(n: int) -> tuple[int, ...]:
    """Widths of the token tiles of `n` tokens (a multiple of 32): as few as fit `_MAX_WIDTH`,
    each a multiple of 32 (§1.7), none in the 0x1d band, as equal as the alignment allows."""
    if n < ROW_ALIGN or n % ROW_ALIGN:
        raise ValueError(f"the token count must be a positive multiple of {ROW_ALIGN}, got {n}")
    units = n // ROW_ALIGN
    for t in range(-(-n // _MAX_WIDTH), units + 1):
        base, extra = divmod(units, t)
        widths = (base + 1,) * extra + (base,) * (t - extra)
        widths = tuple(w * ROW_ALIGN for w in widths)
        if widths[0] <= _MAX_WIDTH and not any(_in_band(w) for w in widths):
            return widths
    raise ValueError(f"{n} tokens cannot be tiled under a width limit of {_MAX_WIDTH}")


def _row_chunks(rows: int) -> list[tuple[int, int]]:
    """(start, stop) of `rows` split into the fewest equal chunks of at most `_MAX_ROWS`."""
    k = -(-rows // _MAX_ROWS)
    size = -(-rows // k)
    return [(r, min(r + size, rows)) for r in range(0, rows, size)]


class _Plan:
    """The stacked input of one weight-gradient kernel: per token tile, each operand's segment.

    `operands`: (name, rows, padded rows); a padded operand's slice reads its zero rows too (the
    rows no segment covers, never written, so zero)."""

    def __init__(self, kernel: str, operands: Sequence[tuple[str, int, int]], n: int):
        self.tiles = token_tiles(n)
        self.operands = {name: (rows, padded) for name, rows, padded in operands}
        segs, c = [], 0
        for j, w in enumerate(self.tiles):
            for name, rows, padded in operands:
                segs.append(Segment(self.tile_name(name, j), (c, c + rows), (0, w)))
                c += padded
        if c > _MAX_CHANNELS:
            raise ValueError(
                f"{kernel}: the stacked input needs {c} channels, above the engine's {_MAX_CHANNELS}; "
                "run fewer sequences per call"
            )
        self.layout = Layout(segs, channels=c, width=self.tiles[0])
        self._blocks: dict[tuple, object] = {}  # each slice built once (op names are unique)

    def tile_name(self, name: str, j: int) -> str:
        return name if len(self.tiles) == 1 else f"{name}@{j}"

    def block(self, x, name: str, j: int, r0: int = 0, r1: int | None = None, padded: bool = False):
        """`[1, 1, r, w]` rows r0:r1 of operand `name` in tile j (all its padded rows if `padded`)."""
        seg = self.layout[self.tile_name(name, j)]
        rows, padded_rows = self.operands[name]
        if r1 is None:
            r1 = padded_rows if padded else rows
        key = (name, j, r0, r1)
        if key not in self._blocks:
            w = seg.shape[1]
            tag = f"{name}_t{j}" if r0 == 0 and r1 in (rows, padded_rows) else f"{name}_t{j}_r{r0}"
            s = mb.slice_by_size(
                x=x, begin=[0, seg.channels[0] + r0, 0, 0], size=[1, r1 - r0, 1, w], name=f"{tag}_slice"
            )
            self._blocks[key] = mb.reshape(x=s, shape=[1, 1, r1 - r0, w], name=tag)
        return self._blocks[key]

    def outer(self, x, a: str, b: str, name: str):
        """Σ over token tiles of a·bᵀ (`[rows_a, padded rows_b]`), row-chunked to `_MAX_ROWS`."""
        rows_a, _ = self.operands[a]
        chunks = _row_chunks(rows_a)
        parts = []
        for r0, r1 in chunks:
            tag = name if len(chunks) == 1 else f"{name}_r{r0}"
            acc = None
            for j in range(len(self.tiles)):
                prod = mb.matmul(
                    x=self.block(x, a, j, r0, r1),
                    y=self.block(x, b, j, padded=True),
                    transpose_x=False,
                    transpose_y=True,
                    name=tag if len(self.tiles) == 1 else f"{tag}_t{j}",
                )
                acc = prod if acc is None else mb.add(x=acc, y=prod, name=f"{tag}_sum{j}")
            parts.append(acc)
        if len(parts) == 1:
            return parts[0]
        cols = self.operands[b][1]
        flat = [
            mb.reshape(x=p, shape=[1, r1 - r0, 1, cols], name=f"{name}_r{r0}_c")
            for p, (r0, r1) in zip(parts, chunks)
        ]
        return mb.concat(values=flat, axis=1, interleave=False, name=name)


def _tokens(cfg: TransformerShape, n_seq: int, seq_len: int | None) -> int:
    s = cfg.seq_len if seq_len is None else seq_len
    if n_seq < 1 or s < 1:
        raise ValueError(f"n_seq and seq_len must be positive, got {n_seq}, {s}")
    return n_seq * s


def _check_dim(d_pad: int) -> None:
    if d_pad > _MAX_ROWS:
        raise ValueError(f"dim {d_pad} is above the engine's {_MAX_ROWS} rows for a matmul operand")


def attention_wgrad(
    cfg: TransformerShape,
    n_seq: int = 1,
    seq_len: int | None = None,
    const_precision: str = DEFAULT_CONST_PRECISION,
) -> KernelSpec:
    """The attention block's weight gradients (see the module docstring). `const_precision` is
    unused (no float tables); every layer kernel takes it, so they share one signature.

    Input, per token tile (stacked on channels, width = tile tokens): `xnorm` [D] (the input of
    the projections), `dy` [D] (gradient of `o`), `attn` [Qd], `dq` [Qd], `dk` [KVd], `dv` [KVd]
    (`attention_backward`'s). Output (width D padded to 32): `wq` [Qd] = dWq, `wk` [KVd] = dWk,
    `wv` [KVd] = dWv, `wo_t` [Qd] = dWoᵀ.
    """
    d, qd, kvd, n = cfg.dim, cfg.q_dim, cfg.kv_dim, _tokens(cfg, n_seq, seq_len)
    dp = round_up(d, ROW_ALIGN)
    _check_dim(dp)
    plan = _Plan(
        "attention_wgrad",
        [
            ("xnorm", d, dp),
            ("dy", d, dp),
            ("attn", qd, qd),
            ("dq", qd, qd),
            ("dk", kvd, kvd),
            ("dv", kvd, kvd),
        ],
        n,
    )
    out = Layout.stacked([("wq", qd), ("wk", kvd), ("wv", kvd), ("wo_t", qd)], width=dp)

    def body(x):
        return [
            plan.outer(x, "dq", "xnorm", "wq"),
            plan.outer(x, "dk", "xnorm", "wk"),
            plan.outer(x, "dv", "xnorm", "wv"),
            plan.outer(x, "attn", "dy", "wo_t"),
        ]

    program = build_program(plan.layout, out, body)
    return KernelSpec(program, plan.layout, out, "attention_wgrad", matmul_flops(program))


def ffn_wgrad(
    cfg: TransformerShape,
    n_seq: int = 1,
    seq_len: int | None = None,
    const_precision: str = DEFAULT_CONST_PRECISION,
) -> KernelSpec:
    """The SwiGLU block's weight gradients (see the module docstring); `const_precision` unused.

    Input, per token tile: `xnorm` [D] (the FFN input), `dy` [D] (gradient of y), `gate` [H]
    (`ffn_forward`'s), `dh1` [H], `dh3` [H] (`ffn_backward`'s). Output (width D padded to 32):
    `w1` [H] = dW1, `w3` [H] = dW3, `w2_t` [H] = dW2ᵀ.
    """
    d, h, n = cfg.dim, cfg.hidden_dim, _tokens(cfg, n_seq, seq_len)
    dp = round_up(d, ROW_ALIGN)
    _check_dim(dp)
    plan = _Plan(
        "ffn_wgrad", [("xnorm", d, dp), ("dy", d, dp), ("gate", h, h), ("dh1", h, h), ("dh3", h, h)], n
    )
    out = Layout.stacked([("w1", h), ("w3", h), ("w2_t", h)], width=dp)

    def body(x):
        return [
            plan.outer(x, "dh1", "xnorm", "w1"),
            plan.outer(x, "dh3", "xnorm", "w3"),
            plan.outer(x, "gate", "dy", "w2_t"),
        ]

    program = build_program(plan.layout, out, body)
    return KernelSpec(program, plan.layout, out, "ffn_wgrad", matmul_flops(program))
