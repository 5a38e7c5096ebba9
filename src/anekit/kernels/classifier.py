"""The tied classifier and its softmax cross-entropy over one vocabulary chunk, forward and
backward, with the chunk's weights streamed through the input (ane-private-api.md §5.4: weights in
the input's spatial tail, compiled once; §5.3: maderix ran the classifier as a 32,000-channel conv
and its backward on the CPU; §1.7: a conv with 32,000 input channels is rejected, so both
directions are dynamic matmuls here).

The logits `[Vc, N]` of a chunk of `Vc` vocabulary rows never leave the engine. The host
(`anekit.train.classifier.EngineClassifier`) runs one call per chunk and combines them:

- `classifier_forward`: input `[x (D, N) | Wcᵀ (D, Vc)]` (D rows). Output (width N): per token
  `m`, the chunk's largest logit, and `s` = Σ_v exp(logit_v - m). The host's log-sum-exp is
  M + log Σ_c s_c·exp(m_c - M). exp(logit - m) <= 1, so nothing overflows fp16; the engine's
  reductions accumulate in fp32 (ane-private-api.md §10.4), so `s` carries one fp16 rounding.
- `classifier_backward`: input `[x | Wcᵀ]` as above plus three rows under x (channels D, D + 1,
  D + 2, columns 0:N): `shift` = the chunk's m (from the forward call, an fp16 value), `scale_w`
  and `scale_x`, per-token factors the host chooses. The kernel recomputes the logits and
  q = exp(logits - shift) in (0, 1] and outputs (width D) `dw` = q·(x ⊙ scale_w)ᵀ `[Vc, D]` and
  `dx_t` = scale_x ⊙ (qᵀ·Wc) `[N, D]`. With e = exp(m - lse) (0 for ignored tokens) q·e is the
  softmax, so with scale_w = ρ·e the chunk's rows of dW are coef/ρ · dw and its share of dxᵀ is
  coef·e/scale_x ⊙ dx_t, both applied by the host in fp32 (coef = loss_scale / normalizer). The
  one-hot part of softmax - onehot needs no kernel (the host subtracts coef·W[target] from dx and
  coef·x from dW[target], O(N·D)).

Layout choices:

- One output width per kernel (the output is a channel `concat`, `anekit.kernels.common`): dW comes
  out as `[Vc, D]`, the rows of the gradient as the host stores them, so the big block (Vc·D) is
  never transposed; dx comes out transposed, `[N, D]`, the small block (N·D), which the host sums
  over chunks and turns into `[D, N]` once per call (the one-hot correction W[target] joins before
  that single transpose). The transposes are matmul flags (`transpose_x`/`transpose_y`,
  mil-text.md §3.5), never transpose ops.
- The per-token rows sit under x as extra channels rather than in another column range: three
  rows of N + Vc elements instead of D rows of N.
- A last chunk of `valid` < Vc rows (V not a multiple of the chunk): its weight rows past `valid`
  are zero (the host never writes them) and a baked constant bias adds `MASK_VALUE / 2` to their
  logits, so they never win the max and exp gives exactly 0; half the mask value keeps logit - m
  finite in fp16 for |m| < 32,000 (`MASK_VALUE` itself would round to -inf once m > 16). Only the
  last chunk's programs carry the bias; the host compiles them separately.

fp16 range: the loss scale never enters a kernel. The scales multiply x and the product qᵀ·Wc,
never the small probabilities q (ane-private-api.md §6: fp16 gradients flush to zero), and the host
picks them per call so that every fp16 value stays below B = FP16_MAX / 4 (~2^14) while using as
much of the range as the bounds allow (`anekit.train.classifier`): with |x| <= X, |W| <= Wmax and
s = Σ q <= Vc, |x ⊙ scale_w| <= X·ρ·max e, |dw| <= X·ρ·Σ_n e_n (q <= 1), |qᵀ·Wc| <= s·Wmax, so
ρ = B / (max(X, 1)·Σ_n e_n) and scale_x = min(1, B / (s·Wmax)). qᵀ·Wc needs no upscaling: q = 1 at
the chunk's max, so it is of the size of W's entries. What fp16 still limits: a probability below
2^-24 of its chunk's largest (exp underflow) contributes nothing, and dW entries far below the
chunk's largest lose relative precision: below ~2^-28 of the bound (fp16's smallest normal, 2^-14,
against ~2^14) they are subnormals.

Shapes: D, N and Vc must be multiples of 32 (`ROW_ALIGN`: 64-byte rows, and matmul inner
dimensions, mil-text.md §5 #4); the host pads N and the last chunk. `default_vocab_chunk` picks Vc
from the engine's limits.
"""

from __future__ import annotations

import numpy as np

from .._coreml import mb
from ..engine_limits import FP16_BYTES, MASK_VALUE, MAX_SPATIAL, OPERAND_BYTES, SRAM_BYTES
from .common import KernelSpec, build_program, float_const, input_block, matmul_block, matmul_flops
from .layout import ROW_ALIGN, Layout, Segment, round_up

__all__ = [
    "classifier_forward",
    "classifier_backward",
    "default_vocab_chunk",
    "vocab_chunks",
    "PAD_LOGIT",
    "MIN_CHUNK",
]

#: `default_vocab_chunk` keeps the logits tile under 2 MB only down to chunks of this many rows
#: (anekit's choice, from the cost model; see there).
MIN_CHUNK = 4096

#: Added to the logits of a last chunk's padding rows (see the module docstring): half the most
#: negative finite fp16, so that logit - max stays finite (docs/ane-facts.md#finite-masks).
PAD_LOGIT = MASK_VALUE / 2


def _check_dims(dim: int, n_tokens: int, vocab_chunk: int, valid: int | None) -> int:
    for what, v in (("dim", dim), ("n_tokens", n_tokens), ("vocab_chunk", vocab_chunk)):
        if v < ROW_ALIGN or v % ROW_ALIGN:
            raise ValueError(
                f"{what} must be a positive multiple of {ROW_ALIGN} (64-byte rows, ane-private-api.md "
                f"§1.7), got {v}"
            )
    if n_tokens + vocab_chunk > MAX_SPATIAL:
        raise ValueError(
            f"n_tokens + vocab_chunk = {n_tokens + vocab_chunk} exceeds the engine's spatial cap "
            f"{MAX_SPATIAL}; "
            + (
                "use a smaller vocab_chunk"
                if n_tokens + ROW_ALIGN <= MAX_SPATIAL
                else f"{n_tokens} tokens per call leave no room for the classifier's rows: train on fewer "
                "tokens per call (a smaller --batch, with --accum to keep the tokens per step)"
            )
        )
    valid = vocab_chunk if valid is None else valid
    if not 0 < valid <= vocab_chunk:
        raise ValueError(f"valid rows must lie in [1, {vocab_chunk}], got {valid}")
    return valid


def default_vocab_chunk(dim: int, n_tokens: int, vocab: int) -> int:
    """The largest chunk (a multiple of 32) the engine's limits allow for N = `n_tokens` tokens,
    then evened out over the chunks `vocab` needs (so the last chunk is not a sliver):

    - the input row `[x | Wcᵀ]` is at most `MAX_SPATIAL` wide (mil-text.md §5 #12);
    - the weight block `[D, Vc]` takes at most half the SRAM (`SRAM_BYTES`, 32 MB on M4,
      ane-private-api.md §4.3), leaving the rest to x, the logits and the outputs;
    - the logits tile `[Vc, N]` fp16, which the exp and both reductions re-read, fits one operand
      held on chip (`OPERAND_BYTES`, 2 MB; larger operands stream from DRAM, mil-text.md §5 #14),
      unless that leaves fewer than `MIN_CHUNK` rows: for many tokens per call (N = 2048 would get
      512-row chunks) more dispatches (~0.1 ms each, ane-private-api.md §6) and more copies of x
      (one per chunk and direction) cost more than streaming the logits (the cost model, Stories110M
      N = 2048 on M4: 63 x 512-row chunks 123 ms, 8 x 4,000 79 ms).

    Stories110M, N = 256: the logits bound gives 4,096, so 32,000 rows go in 8 chunks of 4,000."""
    n = round_up(n_tokens, ROW_ALIGN)
    d = round_up(dim, ROW_ALIGN)
    by_width = MAX_SPATIAL - n
    by_logits = max(OPERAND_BYTES // (FP16_BYTES * n), MIN_CHUNK)
    by_weights = SRAM_BYTES // 2 // (FP16_BYTES * d)
    cap = max(ROW_ALIGN, min(by_width, by_logits, by_weights) // ROW_ALIGN * ROW_ALIGN)
    chunks = -(-vocab // cap)
    return min(cap, round_up(-(-vocab // chunks), ROW_ALIGN))


def vocab_chunks(vocab: int, vocab_chunk: int) -> list[tuple[int, int]]:
    """`(start, rows)` of each chunk of `vocab` rows: full chunks, then the remainder."""
    if vocab < 1 or vocab_chunk < 1:
        raise ValueError(f"vocab and vocab_chunk must be positive, got {vocab}, {vocab_chunk}")
    return [(v0, min(vocab_chunk, vocab - v0)) for v0 in range(0, vocab, vocab_chunk)]


def _logits(x, inp: Layout, vocab_chunk: int, valid: int):
    """`(x, Wcᵀ, logits)`: the input's `x` [1, 1, D, N] and `w_t` [1, 1, D, Vc] blocks and
    `[1, 1, Vc, N]` = Wc·x (+ the padding bias)."""
    xb = input_block(x, inp, "x")
    wt = input_block(x, inp, "w_t")
    logits = matmul_block(wt, xb, True, "logits")  # (Wcᵀ)ᵀ·x
    if valid < vocab_chunk:
        bias = np.zeros((1, 1, vocab_chunk, 1), dtype=np.float32)
        bias[0, 0, valid:, 0] = PAD_LOGIT
        logits = mb.add(x=logits, y=float_const(bias, "pad_bias"), name="logits_masked")
    return xb, wt, logits


def _forward_layouts(dim: int, n: int, vc: int) -> tuple[Layout, Layout]:
    inp = Layout.spatial([("x", dim, n), ("w_t", dim, vc)])
    out = Layout.stacked([("m", 1), ("s", 1)], width=n)
    return inp, out


def classifier_forward(dim: int, n_tokens: int, vocab_chunk: int, valid: int | None = None) -> KernelSpec:
    """Per-token max and Σ exp(logit - max) of one vocabulary chunk's logits.

    Input (D rows): `x` [D, N] (final-normed activations) | `w_t` = Wcᵀ [D, Vc] (the chunk's
    classifier rows, transposed, staged once per update). Output (width N): `m` [1], `s` [1].
    valid: rows of the chunk that exist (default all); the rest are masked (module docstring).
    """
    valid = _check_dims(dim, n_tokens, vocab_chunk, valid)
    inp, out = _forward_layouts(dim, n_tokens, vocab_chunk)

    def body(x):
        _, _, logits = _logits(x, inp, vocab_chunk, valid)
        m = mb.reduce_max(x=logits, axes=[2], keep_dims=True, name="m")
        z = mb.sub(x=logits, y=m, name="shifted")
        e = mb.exp(x=z, name="e")
        s = mb.reduce_sum(x=e, axes=[2], keep_dims=True, name="s")  # fp32 accumulation, §10.4
        return [m, s]

    program = build_program(inp, out, body)
    return KernelSpec(program, inp, out, "classifier_forward", matmul_flops(program))


def _backward_input_layout(dim: int, n: int, vc: int) -> Layout:
    segs = [
        Segment("x", (0, dim), (0, n)),
        Segment("w_t", (0, dim), (n, n + vc)),
        Segment("shift", (dim, dim + 1), (0, n)),
        Segment("scale_w", (dim + 1, dim + 2), (0, n)),
        Segment("scale_x", (dim + 2, dim + 3), (0, n)),
    ]
    return Layout(segs, channels=dim + 3, width=round_up(n + vc, ROW_ALIGN))


def classifier_backward(dim: int, n_tokens: int, vocab_chunk: int, valid: int | None = None) -> KernelSpec:
    """One vocabulary chunk's share of the cross-entropy gradient, softmax part.

    Input (D + 3 rows): `x` [D, N] | `w_t` = Wcᵀ [D, Vc] in rows 0:D, as in `classifier_forward`;
    `shift` [1, N] (row D) = the chunk's max m from the forward call; `scale_w`, `scale_x` [1, N]
    (rows D + 1, D + 2). With q = exp(Wc·x - shift), output (width D): `dw` [Vc, D] =
    q·(x ⊙ scale_w)ᵀ, `dx_t` [N, D] = scale_x ⊙ (qᵀ·Wc) (module docstring: what they are).
    """
    valid = _check_dims(dim, n_tokens, vocab_chunk, valid)
    n = n_tokens
    inp = _backward_input_layout(dim, n, vocab_chunk)
    out = Layout.stacked([("dw", vocab_chunk), ("dx_t", n)], width=dim)

    def body(x):
        xb, wt, logits = _logits(x, inp, vocab_chunk, valid)
        shift = input_block(x, inp, "shift")  # [1, 1, 1, N]
        q = mb.exp(x=mb.sub(x=logits, y=shift, name="shifted"), name="q")  # (0, 1]
        xr = mb.mul(x=xb, y=input_block(x, inp, "scale_w"), name="x_scaled")  # [1, 1, D, N]
        dw = mb.matmul(x=q, y=xr, transpose_x=False, transpose_y=True, name="dw")  # [Vc, D]
        qw = mb.matmul(x=q, y=wt, transpose_x=True, transpose_y=True, name="qt_w")  # qᵀ·Wc: [N, D]
        col = mb.reshape(x=input_block(x, inp, "scale_x"), shape=[1, 1, n, 1], name="scale_x_col")
        dx_t = mb.mul(x=qw, y=col, name="dx_t")
        return [dw, dx_t]

    program = build_program(inp, out, body)
    return KernelSpec(program, inp, out, "classifier_backward", matmul_flops(program))
