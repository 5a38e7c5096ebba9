"""Inference programs for a pretrained decoder: a group of consecutive transformer layers on a chunk of
`T` tokens against a KV cache, and the final RMSNorm + classifier in vocabulary chunks.

Unlike the training kernels (weights streamed through the input, so one program serves every layer),
these bake each layer's weights as constants (BLOBFILE; fp16, or int8 / int4 through
`constexpr_blockwise_shift_scale`, `anekit.kernels.quant`): a program is compiled once per model and
reused for every token, and baked weights are what the engine runs fastest (ane-private-api.md §10.6).

**One packed input `x` (`group_input_layout`).** The engine's safe form is one input per request
(docs/ane-facts.md#single-input; a `matmul` whose operands come from different input surfaces is the
reported failure, and attention multiplies q (from the activations) with the cached K), so the
activations, the RoPE rows, the masks and every layer's K/V cache share one `[1, C, 1, W]` tensor:

    columns [0, T)     rows [0, D)          "x"         the residual stream entering the group
                       rows [D, D+hd)       "cos"       RoPE rows of the T positions (interleaved pairs)
                       rows [D+hd, D+2hd)   "sin"       signed sines (kernels/rope.rope_channel_tables)
                       rows [D+2hd, +T)     "mask_new"  additive mask, chunk queries x chunk keys
    columns [T, T+M)   rows [2j·KVd, ...)   "k{j}", "v{j}"  layer j's cached keys (after RoPE) and
                                                        values, channel-major [KVd, M], position p in
                                                        column T+p
                       rows [2L·KVd, +T)    "mask_cache" additive mask, chunk queries x cached keys

(the per-call blocks stacked in the first T columns, so the padding the packing leaves is at most
C x T elements, never a multiple of the cache).

The host writes the cache once at reset and afterwards only the new rows (`Binding.write_slice`),
so a cache is never copied per token on the engine path. The masks are additive, finite -65504
(docs/ane-facts.md#finite-masks, never -inf) and made on the host: causal order, padding and any
sliding window are just different masks.

**Output `out`** `[1, D + 2·L·KVd, 1, T]`: the residual (or its change, see `residual`) followed by each
layer's new K (after RoPE) and V rows for the T positions (one output, as every anekit kernel).

**Per layer**: RMSNorm (max-prescaled: x² overflows fp16 past |x| = 256,
docs/ane-facts.md#square-overflow), q/k/v as one 1x1 conv (a 1x1 conv beats `matmul`,
docs/ane-facts.md#conv-beats-matmul) with optional biases, optional per-head q/k RMSNorm, RoPE,
1/√hd on q (q and k heads through one chain), attention of each query group against its kv head
directly (no head repeat: ane-private-api.md §10.4 measured the repeat at 72% of attention cost),
scores against the cache and against the chunk's own keys concatenated before one softmax (`matmul`
+ mask `add` + `softmax`, never `scaled_dot_product_attention`, whose mask the engine ignores,
docs/ane-facts.md#sdpa-mask-ignored),
output projection, SwiGLU FFN (W1 and W3 as one conv, sigmoid·mul), residual adds.

**`residual`** (`anekit.llm.plan.RESIDUALS`): ``"fp16"``: `x` is the residual stream and `out` starts
with the stream after the group. ``"fp32-host"``: the host keeps the stream in float32; `x` is its
fp16 rounding and `out` starts with the group's *change* to it, accumulated in its own fp16 tensor, so
the rounding error scales with the change rather than the stream (an fp16 stream between dispatches
failed past ~16 layers at dim 4096, ane-private-api.md §10.4).

Widths: every innermost dimension is T, M or M + T; the runner uses multiples of 32 (rows are 64
bytes, docs/ane-facts.md#rows-64-bytes), so decode runs at width 32 with one valid column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .._coreml import mb
from ..engine_limits import MAX_AXIS, MAX_SPATIAL, ROW_ALIGN
from ..errors import AnekitError
from .common import build_program, input_block
from .layout import Layout, Segment, round_up
from .quant import QuantizedWeight, quantize, weight_const
from .rope import rope_angles

__all__ = [
    "DecoderProgram",
    "ClassifierProgram",
    "group_input_layout",
    "group_input_shape",
    "group_program",
    "classifier_program",
    "rope_rows",
    "RESIDUAL_MODES",
    "DecoderKernelError",
]

RESIDUAL_MODES = ("fp32-host", "fp16")
#: Added to max|x| before dividing by it, so an all-zero column (chunk padding) stays finite.
_NORM_FLOOR = 2.0**-14


class DecoderKernelError(AnekitError, ValueError):
    """Arguments a program cannot be built for (shapes past the engine's limits); says which."""


@dataclass(frozen=True)
class DecoderProgram:
    """A group program: `program` with input `x` (`input_layout`) and output `out` (`output_layout`).

    layers: the model's layer indices it computes. width: T. max_len: M (cache positions).
    weight_bytes: bytes of its baked weights. flops: 2 x multiply-adds of its convs and matmuls.
    """

    program: object
    input_layout: Layout
    output_layout: Layout
    layers: tuple[int, ...]
    width: int
    max_len: int
    residual: str
    quant: str
    weight_bytes: int
    flops: int
    input_name: str = "x"
    output_name: str = "out"


@dataclass(frozen=True)
class ClassifierProgram:
    """Final RMSNorm + classifier: input `x` `[1, D, 1, T]`, output `out` `[1, chunk, 1, n·T]` where
    columns `[j·T, (j+1)·T)` hold vocabulary rows `[j·chunk, (j+1)·chunk)` (the last chunk padded
    with zero rows)."""

    program: object
    width: int
    vocab_size: int
    vocab_chunk: int
    n_chunks: int
    quant: str
    weight_bytes: int
    flops: int

    def logits(self, out: np.ndarray) -> np.ndarray:
        """`out` of one call -> logits `[T, vocab_size]` (float32)."""
        o = np.asarray(out, dtype=np.float32).reshape(self.vocab_chunk, self.n_chunks, self.width)
        return o.transpose(2, 1, 0).reshape(self.width, -1)[:, : self.vocab_size]


def rope_rows(config, positions) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) `[head_dim, len(positions)]` float64 in the channel-major head layout: `cos[d, t] =
    cos(angle[t, d // 2])`, `sin[d, t] = ∓sin(angle[t, d // 2])` (minus on even d), so that
    `rope(x) = x·cos + swap_pairs(x)·sin` (the interleaved-pair convention of `kernels/rope.py`)."""
    ang = rope_angles(config.head_dim, positions, config.rope_theta, getattr(config, "rope_scaling", None))
    cos = np.repeat(np.cos(ang).T, 2, axis=0)
    sin = np.repeat(np.sin(ang).T, 2, axis=0)
    sin[0::2] *= -1.0
    return cos, sin


def group_input_layout(config, n_layers: int, width: int, max_len: int) -> Layout:
    """The packed input of a group of `n_layers` layers (see the module docstring)."""
    t, m, d, hd, kvd = width, max_len, config.dim, config.head_dim, config.kv_dim
    segs = [
        Segment("x", (0, d), (0, t)),
        Segment("cos", (d, d + hd), (0, t)),
        Segment("sin", (d + hd, d + 2 * hd), (0, t)),
        Segment("mask_new", (d + 2 * hd, d + 2 * hd + t), (0, t)),
    ]
    c0 = t
    for j in range(n_layers):
        segs.append(Segment(f"k{j}", (2 * j * kvd, (2 * j + 1) * kvd), (c0, c0 + m)))
        segs.append(Segment(f"v{j}", ((2 * j + 1) * kvd, (2 * j + 2) * kvd), (c0, c0 + m)))
    rows = 2 * n_layers * kvd
    segs.append(Segment("mask_cache", (rows, rows + t), (c0, c0 + m)))
    return Layout(segs, width=round_up(c0 + m, ROW_ALIGN))


def group_input_shape(config, n_layers: int, width: int, max_len: int) -> tuple[int, int]:
    """(channels, width) of `group_input_layout` (the limits a plan must respect)."""
    channels = max(config.dim + 2 * config.head_dim + width, 2 * n_layers * config.kv_dim + width)
    return channels, round_up(width + max_len, ROW_ALIGN)


def _check_shapes(config, n_layers: int, width: int, max_len: int) -> None:
    if width < 1 or max_len < 1:
        raise DecoderKernelError(f"width and max_len must be positive, got {width}, {max_len}")
    channels, total_width = group_input_shape(config, n_layers, width, max_len)
    if channels > MAX_AXIS:
        raise DecoderKernelError(
            f"{n_layers} layers' caches need {channels} channels in one input, over the engine's axis "
            f"limit {MAX_AXIS} (docs/ane-facts.md#axis-cap); use fewer layers per program"
        )
    if total_width > MAX_SPATIAL:
        raise DecoderKernelError(
            f"max_len {max_len} + width {width} exceeds the engine's width limit {MAX_SPATIAL} "
            "(docs/ane-facts.md#spatial-cap); use a shorter max_len"
        )


# -- graph pieces ------------------------------------------------------------------------------


def _fp16(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32).astype(np.float16)


def _rmsnorm(x, weight: np.ndarray, eps: float, axis: int, name: str):
    """RMSNorm of `x` over `axis`, with `weight` (fp16 const, shaped to broadcast along `axis`).

    `x / sqrt(mean(x²) + eps)` equals `xs / sqrt(mean(xs²) + eps / m²)` with `xs = x / m` for any
    m > 0; with m = max|x| (+ a floor) the squares stay <= 1, so no fp16 overflow however large the
    residual stream grows (coremltools lowers RMSNorm the same way, docs/ane-facts.md#square-overflow).
    `pow(·, -0.5)`, never `rsqrt` (docs/ane-facts.md#rsqrt-inverse)."""
    n = x.shape[axis]
    a = mb.abs(x=x, name=f"{name}_abs")
    m = mb.reduce_max(x=a, axes=[axis], keep_dims=True, name=f"{name}_max")
    m = mb.add(x=m, y=np.float16(_NORM_FLOOR), name=f"{name}_m")
    xs = mb.real_div(x=x, y=m, name=f"{name}_xs")
    e = mb.real_div(x=np.float16(math.sqrt(eps)), y=m, name=f"{name}_e")
    e2 = mb.mul(x=e, y=e, name=f"{name}_e2")
    sq = mb.mul(x=xs, y=xs, name=f"{name}_sq")
    ss = mb.reduce_sum(x=sq, axes=[axis], keep_dims=True, name=f"{name}_ss")
    ms = mb.mul(x=ss, y=np.float16(1.0 / n), name=f"{name}_ms")
    ms = mb.add(x=ms, y=e2, name=f"{name}_mse")
    rr = mb.pow(x=ms, y=np.float16(-0.5), name=f"{name}_rr")
    xn = mb.mul(x=xs, y=rr, name=f"{name}_xn")
    return mb.mul(x=xn, y=mb.const(val=weight, name=f"{name}_w"), name=name)


class _Weights:
    """Quantizes and bakes one layer's matrices; counts the bytes."""

    def __init__(self, quant: str):
        self.quant = quant
        self.nbytes = 0
        self.flops_per_token = 0

    def conv(self, x, w: np.ndarray, name: str, bias: np.ndarray | None = None):
        qw: QuantizedWeight = quantize(w, self.quant, name)
        self.nbytes += qw.nbytes
        self.flops_per_token += 2 * qw.data.size
        y = mb.conv(x=x, weight=weight_const(qw, f"{name}_w"), name=name if bias is None else f"{name}_nb")
        if bias is None:
            return y
        b = mb.const(val=_fp16(bias).reshape(1, -1, 1, 1), name=f"{name}_b")
        return mb.add(x=y, y=b, name=name)


class _Attention:
    """Shapes and graph pieces of one group's attention."""

    def __init__(self, config, width: int, max_len: int):
        self.t, self.m = width, max_len
        self.nh, self.nkv, self.hd = config.n_heads, config.n_kv_heads, config.head_dim
        self.ratio = self.nh // self.nkv
        self.hd_pad = round_up(self.hd, ROW_ALIGN)  # contracted dim of q·k (docs/ane-facts.md#rows-64-bytes)

    def rope(self, t, heads: int, cos, sin, name: str):
        """`t` `[1, heads, hd, T]` -> `t·cos + swap_pairs(t)·sin` (pairs split on the channel axis,
        the innermost axis stays T)."""
        c = heads * self.hd
        pairs = mb.reshape(x=t, shape=[1, c // 2, 2, self.t], name=f"{name}_pairs")
        even = mb.slice_by_size(x=pairs, begin=[0, 0, 0, 0], size=[1, c // 2, 1, self.t], name=f"{name}_even")
        odd = mb.slice_by_size(x=pairs, begin=[0, 0, 1, 0], size=[1, c // 2, 1, self.t], name=f"{name}_odd")
        swapped = mb.concat(values=[odd, even], axis=2, interleave=False, name=f"{name}_swap")
        swapped = mb.reshape(x=swapped, shape=[1, heads, self.hd, self.t], name=f"{name}_swap4")
        a = mb.mul(x=t, y=cos, name=f"{name}_cos")
        b = mb.mul(x=swapped, y=sin, name=f"{name}_sin")
        return mb.add(x=a, y=b, name=name)

    def pad(self, t, width: int, name: str):
        """Zero-pad axis 2 (head_dim) of `[1, nkv, hd, width]` to a multiple of 32."""
        if self.hd_pad == self.hd:
            return t
        z = mb.const(val=np.zeros((1, self.nkv, self.hd_pad - self.hd, width), np.float16), name=f"{name}_z")
        return mb.concat(values=[t, z], axis=2, interleave=False, name=name)

    def group_queries(self, q4, name: str):
        """`[1, nh, hd, T]` -> `[1, nkv, hd, ratio·T]`: the `ratio` query heads of kv head j side by
        side on the token axis, so each group meets its kv head in one matmul without repeating K or
        V (ane-private-api.md §10.4). Query head h = j·ratio + r (kv head h // ratio, as everywhere)."""
        if self.ratio == 1:
            return q4
        g = mb.reshape(x=q4, shape=[1, self.nkv, self.ratio, self.hd, self.t], name=f"{name}_5d")
        g = mb.transpose(x=g, perm=[0, 1, 3, 2, 4], name=f"{name}_perm")
        return mb.reshape(x=g, shape=[1, self.nkv, self.hd, self.ratio * self.t], name=name)

    def ungroup(self, o, name: str):
        """`[1, nkv, hd, ratio·T]` -> `[1, nh·hd, 1, T]` (inverse of `group_queries`)."""
        if self.ratio > 1:
            o = mb.reshape(x=o, shape=[1, self.nkv, self.hd, self.ratio, self.t], name=f"{name}_5d")
            o = mb.transpose(x=o, perm=[0, 1, 3, 2, 4], name=f"{name}_perm")
        return mb.reshape(x=o, shape=[1, self.nh * self.hd, 1, self.t], name=name)

    def tile_mask(self, mask, name: str):
        """`[1, 1, T, K]` -> `[1, 1, ratio·T, K]`: the mask of each query row repeated for the
        `ratio` query heads grouped on the token axis (once per program, shared by its layers)."""
        if self.ratio == 1:
            return mask
        return mb.concat(values=[mask] * self.ratio, axis=2, interleave=False, name=name)

    def attend(self, q4, k4, v4, kc, vc, mask_cache, mask_new, name: str):
        """q4 `[1, nh, hd, T]` (RoPE'd, scaled), k4, v4 `[1, nkv, hd, T]` (this chunk), kc, vc
        `[1, nkv, hd, M]` (the cache) -> attention output `[1, nh·hd, 1, T]`."""
        t, m = self.t, self.m
        qg = self.pad(self.group_queries(q4, f"{name}_qg"), self.ratio * t, f"{name}_qpad")
        s_c = mb.matmul(
            x=qg, y=self.pad(kc, m, f"{name}_kcpad"), transpose_x=True, transpose_y=False, name=f"{name}_sc"
        )
        s_n = mb.matmul(
            x=qg, y=self.pad(k4, t, f"{name}_knpad"), transpose_x=True, transpose_y=False, name=f"{name}_sn"
        )
        # scores [1, nkv, ratio·T, ·]; the masks come tiled to ratio·T rows (`tile_mask`)
        s_c = mb.add(x=s_c, y=mask_cache, name=f"{name}_scm")
        s_n = mb.add(x=s_n, y=mask_new, name=f"{name}_snm")
        s = mb.concat(values=[s_c, s_n], axis=3, interleave=False, name=f"{name}_s")
        p = mb.softmax(x=s, axis=-1, name=f"{name}_p")
        rows = [1, self.nkv, self.ratio * t]
        p_c = mb.slice_by_size(x=p, begin=[0, 0, 0, 0], size=rows + [m], name=f"{name}_pc")
        p_n = mb.slice_by_size(x=p, begin=[0, 0, 0, m], size=rows + [t], name=f"{name}_pn")
        o_c = mb.matmul(x=vc, y=p_c, transpose_x=False, transpose_y=True, name=f"{name}_oc")
        o_n = mb.matmul(x=v4, y=p_n, transpose_x=False, transpose_y=True, name=f"{name}_on")
        o = mb.add(x=o_c, y=o_n, name=f"{name}_og")
        return self.ungroup(o, f"{name}_o")


def _slice_channels(t, start: int, size: int, width: int, name: str):
    """Channels `[start, start + size)` of a `[1, C, 1, width]` tensor."""
    return mb.slice_by_size(x=t, begin=[0, start, 0, 0], size=[1, size, 1, width], name=name)


def _layer(cfg, lp: Mapping[str, np.ndarray], j: int, x, h, state: dict, w: _Weights, att: _Attention):
    """One layer. `state["d"]` is the residual change so far (fp32-host) or None; `h` the stream.
    Returns (h after the layer, k rows, v rows).

    q, k and v come from one 1x1 conv (Wq, Wk, Wv stacked on output channels), and W1, W3 from
    another: fewer, larger convs (a program of many small ops wastes the engine,
    docs/ane-facts.md#single-op-waste), the same weight bytes, and per-row quantization unchanged.
    q and k heads then share one RMSNorm chain, one RoPE and one scale (1/√hd on q heads, 1 on k)."""
    t, nh, nkv, hd, eps = att.t, att.nh, att.nkv, att.hd, cfg.norm_eps
    qd, kvd, hid = nh * hd, nkv * hd, cfg.hidden_dim
    p = f"l{j}"
    hn = _rmsnorm(h, _fp16(lp["attn_norm"]).reshape(1, -1, 1, 1), eps, 1, f"{p}_attn_norm")
    wqkv = np.concatenate([np.asarray(lp[n], np.float32) for n in ("wq", "wk", "wv")])
    bqkv = None
    if getattr(cfg, "qkv_bias", False):
        bqkv = np.concatenate([np.asarray(lp[n], np.float32) for n in ("bq", "bk", "bv")])
    qkv = w.conv(hn, wqkv, f"{p}_qkv", bqkv)
    qk = mb.reshape(
        x=_slice_channels(qkv, 0, qd + kvd, t, f"{p}_qk2"), shape=[1, nh + nkv, hd, t], name=f"{p}_qk"
    )
    v = _slice_channels(qkv, qd + kvd, kvd, t, f"{p}_v")
    v4 = mb.reshape(x=v, shape=[1, nkv, hd, t], name=f"{p}_v4")
    if getattr(cfg, "qk_norm", False):
        gains = np.concatenate([np.tile(lp["q_norm"], (nh, 1)), np.tile(lp["k_norm"], (nkv, 1))])
        qk = _rmsnorm(qk, _fp16(gains).reshape(1, nh + nkv, hd, 1), eps, 2, f"{p}_qk_norm")
    qk = att.rope(qk, nh + nkv, state["cos"], state["sin"], f"{p}_rope")
    scale = np.concatenate([np.full(nh, 1.0 / math.sqrt(hd)), np.ones(nkv)]).reshape(1, nh + nkv, 1, 1)
    qk = mb.mul(x=qk, y=mb.const(val=_fp16(scale), name=f"{p}_qk_scale"), name=f"{p}_qk_scaled")
    q4 = mb.slice_by_size(x=qk, begin=[0, 0, 0, 0], size=[1, nh, hd, t], name=f"{p}_q4")
    k4 = mb.slice_by_size(x=qk, begin=[0, nh, 0, 0], size=[1, nkv, hd, t], name=f"{p}_k4")
    kc = input_block(x, state["layout"], f"k{j}", [1, nkv, hd, att.m])
    vc = input_block(x, state["layout"], f"v{j}", [1, nkv, hd, att.m])
    o = att.attend(q4, k4, v4, kc, vc, state["mask_cache"], state["mask_new"], f"{p}_attn")
    a = w.conv(o, lp["wo"], f"{p}_o")
    h = _residual_add(x=state["x"], h=h, delta=a, state=state, name=f"{p}_r1")
    hn = _rmsnorm(h, _fp16(lp["ffn_norm"]).reshape(1, -1, 1, 1), eps, 1, f"{p}_ffn_norm")
    w13 = np.concatenate([np.asarray(lp["w1"], np.float32), np.asarray(lp["w3"], np.float32)])
    h13 = w.conv(hn, w13, f"{p}_h13")
    h1 = _slice_channels(h13, 0, hid, t, f"{p}_h1")
    h3 = _slice_channels(h13, hid, hid, t, f"{p}_h3")
    silu = mb.mul(x=h1, y=mb.sigmoid(x=h1, name=f"{p}_sig"), name=f"{p}_silu")
    gate = mb.mul(x=silu, y=h3, name=f"{p}_gate")
    f = w.conv(gate, lp["w2"], f"{p}_ffn")
    h = _residual_add(x=state["x"], h=h, delta=f, state=state, name=f"{p}_r2")
    return h, k4, v  # build_program reshapes each output block to [1, rows, 1, T]


def _residual_add(x, h, delta, state: dict, name: str):
    """fp16: h + delta. fp32-host: accumulate the change d += delta and return x + d."""
    if state["residual"] == "fp16":
        return mb.add(x=h, y=delta, name=name)
    d = delta if state["d"] is None else mb.add(x=state["d"], y=delta, name=f"{name}_d")
    state["d"] = d
    return mb.add(x=x, y=d, name=name)


def group_program(
    config,
    layers: Iterable[Mapping[str, np.ndarray]],
    *,
    width: int,
    max_len: int,
    n_layers: int,
    first_layer: int = 0,
    quant: str = "fp16",
    residual: str = "fp32-host",
) -> DecoderProgram:
    """The program of `n_layers` consecutive layers (`first_layer`, ...) on `width` tokens against a
    cache of `max_len` positions (see the module docstring).

    layers: one mapping per layer, in order, of its parameters by their names inside the layer
    (`wq`, `attn_norm`, ... as `ModelConfig.param_shapes` names them after `layers.{i}.`). It is
    iterated once while the program is built, so a lazy source reads one layer at a time.
    """
    if residual not in RESIDUAL_MODES:
        raise DecoderKernelError(f"residual must be one of {', '.join(RESIDUAL_MODES)}, not {residual!r}")
    _check_shapes(config, n_layers, width, max_len)
    d, kvd, t = config.dim, config.kv_dim, width
    inp = group_input_layout(config, n_layers, width, max_len)
    outs = [("h", d)] + [(f"{kind}{j}", kvd) for j in range(n_layers) for kind in ("k", "v")]
    out = Layout.stacked(outs, width=t)
    w = _Weights(quant)
    att = _Attention(config, width, max_len)
    it = iter(layers)

    def body(x):
        xs = input_block(x, inp, "x", [1, d, 1, t])
        state = {
            "layout": inp,
            "x": xs,
            "d": None,
            "residual": residual,
            "cos": input_block(x, inp, "cos", [1, 1, config.head_dim, t]),
            "sin": input_block(x, inp, "sin", [1, 1, config.head_dim, t]),
            "mask_new": att.tile_mask(input_block(x, inp, "mask_new", [1, 1, t, t]), "mask_new_g"),
            "mask_cache": att.tile_mask(
                input_block(x, inp, "mask_cache", [1, 1, t, max_len]), "mask_cache_g"
            ),
        }
        h, rows = xs, []
        for j in range(n_layers):
            try:
                lp = next(it)
            except StopIteration:
                raise DecoderKernelError(f"group_program: {n_layers} layers asked for, fewer given") from None
            h, k_rows, v_rows = _layer(config, lp, j, x, h, state, w, att)
            rows += [k_rows, v_rows]
        first = h if residual == "fp16" else state["d"]
        return [first] + rows

    program = build_program(inp, out, body)
    flops = w.flops_per_token * t + _attention_flops(config, n_layers, t, max_len)
    layers_idx = tuple(range(first_layer, first_layer + n_layers))
    return DecoderProgram(program, inp, out, layers_idx, t, max_len, residual, quant, w.nbytes, flops)


def _attention_flops(config, n_layers: int, t: int, m: int) -> int:
    """2 x multiply-adds of the score and value matmuls (padded head dim)."""
    hd_pad = round_up(config.head_dim, ROW_ALIGN)
    per_head = 2 * t * (m + t) * (hd_pad + config.head_dim)
    return n_layers * config.n_heads * per_head


def classifier_program(
    config,
    final_norm: np.ndarray,
    classifier: np.ndarray,
    *,
    width: int,
    vocab_chunk: int,
    quant: str = "fp16",
) -> ClassifierProgram:
    """Final RMSNorm + classifier on `[1, D, 1, width]` (see `ClassifierProgram`).

    classifier: `[V, D]` (the embedding when tied, else lm_head), read one chunk of rows at a time.
    Each chunk is one 1x1 conv of at most `vocab_chunk` output channels (axis cap 65536,
    docs/ane-facts.md#axis-cap; its weight sized to the SRAM by `anekit.llm.plan`); the chunks'
    results are concatenated on the token axis, so one output carries the whole vocabulary without
    any axis passing the caps."""
    v, d, t = config.vocab_size, config.dim, width
    if not 1 <= vocab_chunk <= MAX_AXIS:
        raise DecoderKernelError(f"vocab_chunk must be from 1 to {MAX_AXIS}, got {vocab_chunk}")
    n = -(-v // vocab_chunk)
    if n * t > MAX_SPATIAL:
        raise DecoderKernelError(
            f"{n} vocabulary chunks x width {t} exceed the width limit {MAX_SPATIAL}; "
            "use a larger vocab_chunk"
        )
    inp = Layout.spatial([("x", d, t)], align=1)  # the caller picks t (a multiple of 32 for the engine)
    out = Layout.stacked([("logits", vocab_chunk)], width=n * t)
    w = _Weights(quant)

    def body(x):
        xs = input_block(x, inp, "x", [1, d, 1, t])
        hn = _rmsnorm(xs, _fp16(final_norm).reshape(1, -1, 1, 1), config.norm_eps, 1, "final_norm")
        parts = []
        for j in range(n):
            rows = np.asarray(classifier[j * vocab_chunk : (j + 1) * vocab_chunk], dtype=np.float32)
            if rows.shape[0] < vocab_chunk:
                rows = np.concatenate([rows, np.zeros((vocab_chunk - rows.shape[0], d), np.float32)])
            parts.append(w.conv(hn, rows, f"cls{j}"))
        return [parts[0] if n == 1 else mb.concat(values=parts, axis=3, interleave=False, name="logits")]

    program = build_program(inp, out, body)
    return ClassifierProgram(program, t, v, vocab_chunk, n, quant, w.nbytes, w.flops_per_token * t)
