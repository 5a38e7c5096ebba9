"""Causal grouped-query attention kernels: forward (QKV projections, RoPE, attention, output
projection) and backward (input gradient), with every weight streamed through the input.

Layout of the work (ane-private-api.md §5.4, changed where noted):

- `attention_forward` fuses §5.4's `sdpaFwd` and `woFwd`: one input
  `[xnorm | Wqᵀ | Wkᵀ | Wvᵀ | Wo]` (`D` rows; Wo `[D, Qd]` is stored as is, its rows are the
  output channels), one output `concat(o, attn, q_rope, k_rope, v)`. `o = Wo·attn` is the block's
  contribution to the residual; `attn` is what the CPU needs for dWo; `q_rope`, `k_rope`, `v` feed
  the backward kernel, which recomputes the probabilities from them (§5.4 sdpaBwd1). The CPU
  already holds `xnorm` (it wrote it into the input), so it is not echoed back.
- `attention_backward` fuses §5.4's `wotBwd`, `sdpaBwd1`, `sdpaBwd2`, `qBwd` and `kvBwd`: from
  `dy` (the gradient of `o`) it computes `da = Woᵀ·dy`, recomputes the softmax, backpropagates
  through it, rotates dQ and dK back (RoPE backward, on the engine), sums dK and dV over the query
  heads sharing a kv head (GQA reduce, on the engine) and returns
  `concat(dx, dq, dk, dv)` with `dx = Wqᵀ·dq + Wkᵀ·dk + Wvᵀ·dv`. The CPU computes the weight
  gradients from dq, dk, dv (with xnorm) and dy (with attn).

Numerics and engine constraints:

- one GQA mapping everywhere: query head h uses kv head h // ratio, by `concat(interleave=true)`
  (ane-private-api.md §3.4 "GQA tiling", §6: maderix's non-interleaved tiling was a bug);
- the causal mask is an additive constant of finite -65504 (mil-text.md §5 #17), applied with
  `matmul` + `add` + `softmax`, never `scaled_dot_product_attention`, whose mask the engine
  ignores (mil-text.md §5 #7);
- the RoPE tables are fp16 constants by default (`const_precision`), never an fp32 const
  followed by `cast`, which M1/M2 engines cannot run (ane-private-api.md §1.8, PR #6);
- RoPE pairs are interleaved (§3.4 "RoPE"); the pair swap splits the channel axis, never the
  innermost (token) axis, so every innermost dim stays the token count;
- the 1/√head_dim softmax scale is folded into q's RoPE tables: `q_rope` comes out pre-scaled,
  which saves a multiply over the largest tensor ([heads, S, S]);
- if head_dim is not a multiple of 32, Q, K (and dA, V) are zero-padded on the head-dim axis
  before the matmuls that contract over it (issue #47: such matmuls read zeros,
  ane-private-api.md §1.7);
- several sequences may share one call (`n_seq`): tokens are `n_seq` sequences of `seq_len`
  side by side on the spatial axis; attention is per sequence (heads of all sequences stacked on
  the batch axis), so one call of width `n_seq·seq_len` equals `n_seq` calls of width `seq_len`.
  With n_seq > 1 the head split uses `transpose(perm=[0, 2, 1, 3])` (maderix only ever ran
  `[0, 1, 3, 2]` on the engine, §3.3); with n_seq = 1 there is no transpose at all.
"""

from __future__ import annotations

import math

import numpy as np

from .._coreml import mb
from ..engine_limits import MAX_SPATIAL
from .common import (
    DEFAULT_CONST_PRECISION,
    MASK_VALUE,
    KernelSpec,
    Staged,
    TransformerShape,
    build_program,
    float_const,
    input_block,
    matmul_block,
    matmul_flops,
)
from .layout import ROW_ALIGN, Layout, Segment, round_up
from .rope import rope_channel_tables

__all__ = ["attention_forward", "attention_backward", "causal_mask", "STAGING"]

#: The weights of both attention kernels, staged alike: Wqᵀ, Wkᵀ, Wvᵀ (y = M·x takes Mᵀ,
#: ane-private-api.md §5.4) and Wo as is (its rows are the output channels).
STAGING = (
    Staged("wq_t", "wq", True),
    Staged("wk_t", "wk", True),
    Staged("wv_t", "wv", True),
    Staged("wo", "wo"),
)


def causal_mask(seq_len: int) -> np.ndarray:
    """`[seq_len, seq_len]`: 0 where key <= query, -65504 above the diagonal."""
    return np.triu(np.full((seq_len, seq_len), MASK_VALUE), k=1)


class _Dims:
    """The sizes one attention kernel is built for."""

    def __init__(self, cfg: TransformerShape, n_seq: int, seq_len: int | None):
        self.d = cfg.dim
        self.nh, self.nkv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.qd, self.kvd = self.nh * self.hd, self.nkv * self.hd
        if self.nh % self.nkv:
            raise ValueError(f"n_heads {self.nh} is not a multiple of n_kv_heads {self.nkv}")
        self.ratio = self.nh // self.nkv
        self.s = cfg.seq_len if seq_len is None else seq_len
        if n_seq < 1 or self.s < 1:
            raise ValueError(f"n_seq and seq_len must be positive, got {n_seq}, {self.s}")
        if self.s > MAX_SPATIAL:  # the scores' rows are seq_len wide (engine_limits.MAX_SPATIAL)
            raise ValueError(
                f"sequence length {self.s}: the attention kernels hold [seq_len, seq_len] score rows, and "
                f"the engine takes rows of at most {MAX_SPATIAL}; use a shorter seq_len"
            )
        self.n_seq = n_seq
        self.n = n_seq * self.s  # tokens per call
        self.hd_pad = round_up(self.hd, ROW_ALIGN)  # contracted head dim, padded (§1.7)
        self.theta = cfg.rope_theta
        self.rope_scaling = getattr(cfg, "rope_scaling", None)  # Llama 3 frequency scaling (rope.py)
        self.scale = 1.0 / math.sqrt(self.hd)


# -- graph pieces ------------------------------------------------------------------------------


def _rope_consts(dm: _Dims, prefix: str, precision: str):
    """cos/sin tables `[1, 1, hd, n]` for q (pre-scaled by 1/√hd) and k, tiled over sequences."""
    cos, sin = rope_channel_tables(dm.hd, dm.s, dm.theta, dm.rope_scaling)
    cos, sin = np.tile(cos, (1, dm.n_seq))[None, None], np.tile(sin, (1, dm.n_seq))[None, None]
    return {
        "q": (
            float_const(cos * dm.scale, f"{prefix}_cos_q", precision),
            float_const(sin * dm.scale, f"{prefix}_sin_q", precision),
        ),
        "k": (float_const(cos, f"{prefix}_cos_k", precision), float_const(sin, f"{prefix}_sin_k", precision)),
    }


def _rope(t, heads: int, dm: _Dims, tables, backward: bool, name: str):
    """Interleaved-pair rotation of `t` (`heads·hd` channels x n tokens, channel-major) ->
    `[1, heads, hd, n]`. Forward: `t·cos + swap(t)·sin_signed`; backward (the transpose):
    `t·cos - swap(t)·sin_signed` (rope.rope_channel_tables)."""
    c = heads * dm.hd
    pairs = mb.reshape(x=t, shape=[1, c // 2, 2, dm.n], name=f"{name}_pairs")
    even = mb.slice_by_size(x=pairs, begin=[0, 0, 0, 0], size=[1, c // 2, 1, dm.n], name=f"{name}_even")
    odd = mb.slice_by_size(x=pairs, begin=[0, 0, 1, 0], size=[1, c // 2, 1, dm.n], name=f"{name}_odd")
    swapped = mb.concat(values=[odd, even], axis=2, interleave=False, name=f"{name}_swap")
    swapped = mb.reshape(x=swapped, shape=[1, heads, dm.hd, dm.n], name=f"{name}_swap4")
    t4 = mb.reshape(x=t, shape=[1, heads, dm.hd, dm.n], name=f"{name}_x4")
    cos, sin = tables
    a = mb.mul(x=t4, y=cos, name=f"{name}_cos")
    b = mb.mul(x=swapped, y=sin, name=f"{name}_sin")
    if backward:
        return mb.sub(x=a, y=b, name=name)
    return mb.add(x=a, y=b, name=name)


def _to_heads(t, heads: int, dm: _Dims, name: str):
    """Channel-major `heads·hd` x (n_seq·s) -> `[1, n_seq·heads, hd, s]` (sequence-major)."""
    if dm.n_seq == 1:
        return mb.reshape(x=t, shape=[1, heads, dm.hd, dm.s], name=name)
    t = mb.reshape(x=t, shape=[1, heads * dm.hd, dm.n_seq, dm.s], name=f"{name}_split")
    t = mb.transpose(x=t, perm=[0, 2, 1, 3], name=f"{name}_perm")
    return mb.reshape(x=t, shape=[1, dm.n_seq * heads, dm.hd, dm.s], name=name)


def _from_heads(t, heads: int, dm: _Dims, name: str):
    """`[1, n_seq·heads, hd, s]` -> `[1, 1, heads·hd, n]` channel-major (inverse of `_to_heads`)."""
    c = heads * dm.hd
    if dm.n_seq == 1:
        return mb.reshape(x=t, shape=[1, 1, c, dm.n], name=name)
    t = mb.reshape(x=t, shape=[1, dm.n_seq, c, dm.s], name=f"{name}_split")
    t = mb.transpose(x=t, perm=[0, 2, 1, 3], name=f"{name}_perm")
    return mb.reshape(x=t, shape=[1, 1, c, dm.n], name=name)


def _tile_kv(t, dm: _Dims, name: str):
    """`[1, n_seq·nkv, hd, s]` -> `[1, n_seq·nh, hd, s]`, kv head j repeated for q heads
    j·ratio .. j·ratio+ratio-1, i.e. q head h reads kv head h // ratio (§3.4, §6)."""
    if dm.ratio == 1:
        return t
    return mb.concat(values=[t] * dm.ratio, axis=1, interleave=True, name=name)


def _reduce_kv(t, dm: _Dims, name: str):
    """Transpose of `_tile_kv`: sum the gradients of the `ratio` q heads sharing a kv head. The
    heads of one group are adjacent, so `[1, n_seq·nh, hd, s]` is viewed as
    `[1, n_seq·nkv, ratio·hd, s]` and its `ratio` channel slices are added (rank 4, innermost
    axis s, no axis longer than the tensors already have)."""
    if dm.ratio == 1:
        return t
    g = mb.reshape(x=t, shape=[1, dm.n_seq * dm.nkv, dm.ratio * dm.hd, dm.s], name=f"{name}_groups")
    size = [1, dm.n_seq * dm.nkv, dm.hd, dm.s]
    acc = mb.slice_by_size(x=g, begin=[0, 0, 0, 0], size=size, name=f"{name}_0")
    for r in range(1, dm.ratio):
        part = mb.slice_by_size(x=g, begin=[0, 0, r * dm.hd, 0], size=size, name=f"{name}_{r}")
        acc = mb.add(x=acc, y=part, name=name if r == dm.ratio - 1 else f"{name}_sum{r}")
    return acc


def _pad_hd(t, heads: int, dm: _Dims, name: str):
    """Zero-pad the head-dim axis (2) of `[1, n_seq·heads, hd, s]` to a multiple of 32."""
    if dm.hd_pad == dm.hd:
        return t
    zeros = np.zeros((1, dm.n_seq * heads, dm.hd_pad - dm.hd, dm.s), dtype=np.float16)
    z = mb.const(val=zeros, name=f"{name}_zeros")
    return mb.concat(values=[t, z], axis=2, interleave=False, name=name)


def _probs(qh, kh, mask, dm: _Dims, name: str):
    """softmax(q̃ᵀk + mask) per head and sequence, `[1, n_seq·nh, s_q, s_k]` (q̃ is pre-scaled)."""
    scores = mb.matmul(
        x=_pad_hd(qh, dm.nh, dm, f"{name}_qpad"),
        y=_pad_hd(kh, dm.nh, dm, f"{name}_kpad"),
        transpose_x=True,
        transpose_y=False,
        name=f"{name}_scores",
    )
    masked = mb.add(x=scores, y=mask, name=f"{name}_masked")
    return mb.softmax(x=masked, axis=-1, name=name)


# -- kernels -----------------------------------------------------------------------------------


def attention_forward(
    cfg: TransformerShape,
    n_seq: int = 1,
    seq_len: int | None = None,
    const_precision: str = DEFAULT_CONST_PRECISION,
) -> KernelSpec:
    """Attention block forward on RMS-normed activations (see the module docstring).

    Input (`D` rows): `xnorm` [D, N] | `wq_t` = Wqᵀ [D, Qd] | `wk_t` = Wkᵀ [D, KVd] |
    `wv_t` = Wvᵀ [D, KVd] | `wo` = Wo [D, Qd], N = n_seq·seq_len.
    Output (channels, width N): `o` [D] = Wo·attn, `attn` [Qd], `q_rope` [Qd] (RoPE'd and
    scaled by 1/√head_dim), `k_rope` [KVd], `v` [KVd].
    """
    dm = _Dims(cfg, n_seq, seq_len)
    d, qd, kvd, n = dm.d, dm.qd, dm.kvd, dm.n
    inp = Layout.spatial(
        [("xnorm", d, n), ("wq_t", d, qd), ("wk_t", d, kvd), ("wv_t", d, kvd), ("wo", d, qd)]
    )
    out = Layout.stacked([("o", d), ("attn", qd), ("q_rope", qd), ("k_rope", kvd), ("v", kvd)], width=n)

    def body(x):
        xn = input_block(x, inp, "xnorm")
        q = matmul_block(input_block(x, inp, "wq_t"), xn, True, "q")
        k = matmul_block(input_block(x, inp, "wk_t"), xn, True, "k")
        v = matmul_block(input_block(x, inp, "wv_t"), xn, True, "v")
        tables = _rope_consts(dm, "rope", const_precision)
        q_rope = _rope(q, dm.nh, dm, tables["q"], False, "q_rope")
        k_rope = _rope(k, dm.nkv, dm, tables["k"], False, "k_rope")
        qh = _to_heads(q_rope, dm.nh, dm, "qh")
        kh = _tile_kv(_to_heads(k_rope, dm.nkv, dm, "kh"), dm, "kh_tiled")
        vh = _tile_kv(_to_heads(v, dm.nkv, dm, "vh"), dm, "vh_tiled")
        mask = mb.const(val=causal_mask(dm.s).astype(np.float16)[None, None], name="mask")
        p = _probs(qh, kh, mask, dm, "probs")
        oh = mb.matmul(x=vh, y=p, transpose_x=False, transpose_y=True, name="attn_heads")
        attn = _from_heads(oh, dm.nh, dm, "attn")
        o = matmul_block(input_block(x, inp, "wo"), attn, False, "o")
        return [o, attn, q_rope, k_rope, v]

    program = build_program(inp, out, body)
    return KernelSpec(program, inp, out, "attention_forward", matmul_flops(program), staging=STAGING)


def _backward_input_layout(dm: _Dims) -> Layout:
    """`dy`, `q_rope`, `k_rope`, `v` activations, then the weights, as in the forward kernel.

    Channels = max(D, Qd, ...): q_rope has Qd rows; K and V (KVd rows each) share one column range
    stacked on channels when they fit, which keeps the input narrow under GQA."""
    d, qd, kvd, n = dm.d, dm.qd, dm.kvd, dm.n
    c = max(d, qd, kvd)
    segs = [Segment("dy", (0, d), (0, n)), Segment("q_rope", (0, qd), (n, 2 * n))]
    if 2 * kvd <= c:
        segs += [Segment("k_rope", (0, kvd), (2 * n, 3 * n)), Segment("v", (kvd, 2 * kvd), (2 * n, 3 * n))]
        w = 3 * n
    else:
        segs += [Segment("k_rope", (0, kvd), (2 * n, 3 * n)), Segment("v", (0, kvd), (3 * n, 4 * n))]
        w = 4 * n
    for name, cols in (("wq_t", qd), ("wk_t", kvd), ("wv_t", kvd), ("wo", qd)):
        segs.append(Segment(name, (0, d), (w, w + cols)))
        w += cols
    return Layout(segs, channels=c, width=round_up(w, ROW_ALIGN))


def attention_backward(
    cfg: TransformerShape,
    n_seq: int = 1,
    seq_len: int | None = None,
    const_precision: str = DEFAULT_CONST_PRECISION,
) -> KernelSpec:
    """Attention block input gradient (see the module docstring).

    Input: `dy` [D, N] (gradient of the block output o) | `q_rope` [Qd, N] | `k_rope` [KVd, N] |
    `v` [KVd, N] (the forward kernel's outputs) | `wq_t`, `wk_t`, `wv_t`, `wo` staged exactly as
    for the forward kernel. Output (width N): `dx` [D] (gradient of xnorm), `dq` [Qd], `dk`
    [KVd], `dv` [KVd]: gradients of the projections Wq·xnorm, Wk·xnorm, Wv·xnorm (before RoPE,
    kv heads reduced), so that dWq = dq·xnormᵀ etc. (`anekit.kernels.wgrad.attention_wgrad`).
    """
    dm = _Dims(cfg, n_seq, seq_len)
    d, qd, kvd, n = dm.d, dm.qd, dm.kvd, dm.n
    inp = _backward_input_layout(dm)
    out = Layout.stacked([("dx", d), ("dq", qd), ("dk", kvd), ("dv", kvd)], width=n)

    def body(x):
        dy = input_block(x, inp, "dy")
        da = matmul_block(input_block(x, inp, "wo"), dy, True, "da")  # Woᵀ·dy  (§5.4 wotBwd)
        qh = _to_heads(input_block(x, inp, "q_rope"), dm.nh, dm, "qh")
        kh = _tile_kv(_to_heads(input_block(x, inp, "k_rope"), dm.nkv, dm, "kh"), dm, "kh_tiled")
        vh = _tile_kv(_to_heads(input_block(x, inp, "v"), dm.nkv, dm, "vh"), dm, "vh_tiled")
        dah = _to_heads(da, dm.nh, dm, "dah")
        mask = mb.const(val=causal_mask(dm.s).astype(np.float16)[None, None], name="mask")
        p = _probs(qh, kh, mask, dm, "probs")  # recomputed (§5.4 sdpaBwd1)
        # attn[d, q] = Σ_k V[d, k] P[q, k]:  dV = dA·P,  dP = dAᵀ·V
        dvh = mb.matmul(x=dah, y=p, transpose_x=False, transpose_y=False, name="dvh")
        dp = mb.matmul(
            x=_pad_hd(dah, dm.nh, dm, "dah_pad"),
            y=_pad_hd(vh, dm.nh, dm, "vh_pad"),
            transpose_x=True,
            transpose_y=False,
            name="dp",
        )
        # softmax backward (§5.4 sdpaBwd2): dS = P ⊙ (dP - Σ_k P⊙dP)
        pdp = mb.mul(x=p, y=dp, name="pdp")
        rowsum = mb.reduce_sum(x=pdp, axes=[-1], keep_dims=True, name="pdp_sum")
        centred = mb.sub(x=dp, y=rowsum, name="dp_centred")
        ds = mb.mul(x=p, y=centred, name="ds")
        # scores[q, k] = Σ_d Q̃[d, q] K[d, k]:  dQ̃ = K·dSᵀ,  dK = Q̃·dS
        dqh = mb.matmul(x=kh, y=ds, transpose_x=False, transpose_y=True, name="dqh")
        dkh = mb.matmul(x=qh, y=ds, transpose_x=False, transpose_y=False, name="dkh")
        dkh = _reduce_kv(dkh, dm, "dkh_reduced")
        dvh = _reduce_kv(dvh, dm, "dvh_reduced")
        tables = _rope_consts(dm, "rope", const_precision)
        dq = _rope(_from_heads(dqh, dm.nh, dm, "dq_rope"), dm.nh, dm, tables["q"], True, "dq4")
        dk = _rope(_from_heads(dkh, dm.nkv, dm, "dk_rope"), dm.nkv, dm, tables["k"], True, "dk4")
        dv = _from_heads(dvh, dm.nkv, dm, "dv")
        dq = mb.reshape(x=dq, shape=[1, 1, qd, n], name="dq")
        dk = mb.reshape(x=dk, shape=[1, 1, kvd, n], name="dk")
        # dx = Wqᵀ·dq + Wkᵀ·dk + Wvᵀ·dv  (§5.4 qBwd + kvBwd)
        dxq = matmul_block(input_block(x, inp, "wq_t"), dq, False, "dx_q")
        dxk = matmul_block(input_block(x, inp, "wk_t"), dk, False, "dx_k")
        dxv = matmul_block(input_block(x, inp, "wv_t"), dv, False, "dx_v")
        dx = mb.add(x=mb.add(x=dxq, y=dxk, name="dx_qk"), y=dxv, name="dx")
        return [dx, dq, dk, dv]

    program = build_program(inp, out, body)
    return KernelSpec(program, inp, out, "attention_backward", matmul_flops(program), staging=STAGING)
