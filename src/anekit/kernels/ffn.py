"""SwiGLU feed-forward kernels, `y = W2·(silu(W1·x) ⊙ W3·x)`, with weights streamed through the
input (ane-private-api.md §5.4 `ffnFused`, `ffnBwdW2t`, `ffnBwdW13t`).

- `ffn_forward`: input `[xnorm | W1ᵀ | W3ᵀ | W2]` (`D` rows; W2 `[D, H]` stored as is), output
  `concat(y, h1, h3, gate)`. The residual `x + y` stays on the CPU in fp32 (§5.4 adds it on the
  engine, which rounds the residual stream to fp16 every layer, §1.8).
- `ffn_backward`: one kernel where §5.4 uses two with the CPU computing SiLU' between them: the
  input stacks `dy`, `h1`, `h3` and the raw `[H, D]` blocks `W1`, `W3`, `W2ᵀ` in `max(D, H)`
  rows; the engine computes dgate = W2ᵀ·dy, the SiLU derivative, dh1, dh3 and
  dx = W1ᵀ·dh1 + W3ᵀ·dh3. Output `concat(dx, dh1, dh3)`; the CPU computes dW1 = dh1·xnormᵀ,
  dW3 = dh3·xnormᵀ and dW2 = dy·gateᵀ.

SiLU is `h·sigmoid(h)` (sigmoid + mul, the ops maderix runs on the engine, §3.3).
"""

from __future__ import annotations

import numpy as np

from .._coreml import mb
from .common import (
    DEFAULT_CONST_PRECISION,
    KernelSpec,
    Staged,
    TransformerShape,
    build_program,
    input_block,
    matmul_block,
    matmul_flops,
)
from .layout import ROW_ALIGN, Layout, Segment, round_up

__all__ = ["ffn_forward", "ffn_backward", "FORWARD_STAGING", "BACKWARD_STAGING"]

#: The forward kernel's weights: W1ᵀ, W3ᵀ (y = M·x takes Mᵀ, ane-private-api.md §5.4) and W2 as is.
FORWARD_STAGING = (Staged("w1_t", "w1", True), Staged("w3_t", "w3", True), Staged("w2", "w2"))
#: The backward kernel's weights: W1, W3 as they are and W2ᵀ (its matmuls contract the other way).
BACKWARD_STAGING = (Staged("w1", "w1"), Staged("w3", "w3"), Staged("w2_t", "w2", True))


def _tokens(cfg: TransformerShape, n_seq: int, seq_len: int | None) -> int:
    s = cfg.seq_len if seq_len is None else seq_len
    if n_seq < 1 or s < 1:
        raise ValueError(f"n_seq and seq_len must be positive, got {n_seq}, {s}")
    return n_seq * s


def ffn_forward(
    cfg: TransformerShape,
    n_seq: int = 1,
    seq_len: int | None = None,
    const_precision: str = DEFAULT_CONST_PRECISION,
) -> KernelSpec:
    """SwiGLU forward on RMS-normed activations. `const_precision` is unused (the FFN bakes no
    float tables); every layer kernel takes it, so they share one signature.

    Input (`D` rows): `xnorm` [D, N] | `w1_t` = W1ᵀ [D, H] | `w3_t` = W3ᵀ [D, H] | `w2` = W2 [D, H].
    Output (width N): `y` [D], `h1` [H] = W1·x, `h3` [H] = W3·x, `gate` [H] = silu(h1)·h3.
    """
    d, h, n = cfg.dim, cfg.hidden_dim, _tokens(cfg, n_seq, seq_len)
    inp = Layout.spatial([("xnorm", d, n), ("w1_t", d, h), ("w3_t", d, h), ("w2", d, h)])
    out = Layout.stacked([("y", d), ("h1", h), ("h3", h), ("gate", h)], width=n)

    def body(x):
        xn = input_block(x, inp, "xnorm")
        h1 = matmul_block(input_block(x, inp, "w1_t"), xn, True, "h1")
        h3 = matmul_block(input_block(x, inp, "w3_t"), xn, True, "h3")
        sig = mb.sigmoid(x=h1, name="h1_sigmoid")
        silu = mb.mul(x=h1, y=sig, name="h1_silu")
        gate = mb.mul(x=silu, y=h3, name="gate")
        y = matmul_block(input_block(x, inp, "w2"), gate, False, "y")
        return [y, h1, h3, gate]

    program = build_program(inp, out, body)
    return KernelSpec(program, inp, out, "ffn_forward", matmul_flops(program), staging=FORWARD_STAGING)


def _backward_input_layout(d: int, h: int, n: int) -> Layout:
    c = max(d, h)
    segs = [
        Segment("dy", (0, d), (0, n)),
        Segment("h1", (0, h), (n, 2 * n)),
        Segment("h3", (0, h), (2 * n, 3 * n)),
    ]
    w = 3 * n
    for name in ("w1", "w3", "w2_t"):
        segs.append(Segment(name, (0, h), (w, w + d)))
        w += d
    return Layout(segs, channels=c, width=round_up(w, ROW_ALIGN))


def ffn_backward(
    cfg: TransformerShape,
    n_seq: int = 1,
    seq_len: int | None = None,
    const_precision: str = DEFAULT_CONST_PRECISION,
) -> KernelSpec:
    """SwiGLU input gradient, SiLU' on the engine. `const_precision` is unused, as in `ffn_forward`.

    Input (`max(D, H)` rows): `dy` [D, N] (gradient of y) | `h1` [H, N] | `h3` [H, N] (forward
    outputs) | `w1` = W1 [H, D] | `w3` = W3 [H, D] | `w2_t` = W2ᵀ [H, D].
    Output (width N): `dx` [D] (gradient of xnorm), `dh1` [H], `dh3` [H].
    """
    d, h, n = cfg.dim, cfg.hidden_dim, _tokens(cfg, n_seq, seq_len)
    inp = _backward_input_layout(d, h, n)
    out = Layout.stacked([("dx", d), ("dh1", h), ("dh3", h)], width=n)

    def body(x):
        dy = input_block(x, inp, "dy")
        h1 = input_block(x, inp, "h1")
        h3 = input_block(x, inp, "h3")
        dgate = matmul_block(input_block(x, inp, "w2_t"), dy, False, "dgate")  # W2ᵀ·dy
        sig = mb.sigmoid(x=h1, name="h1_sigmoid")
        silu = mb.mul(x=h1, y=sig, name="h1_silu")
        dh3 = mb.mul(x=dgate, y=silu, name="dh3")
        # silu'(h) = σ(h)·(1 + h·(1 - σ(h)))
        one_minus = mb.sub(x=np.float16(1.0), y=sig, name="sig_complement")
        t = mb.mul(x=h1, y=one_minus, name="dsilu_t")
        t = mb.add(x=t, y=np.float16(1.0), name="dsilu_t1")
        dsilu = mb.mul(x=sig, y=t, name="dsilu")
        dh1 = mb.mul(x=mb.mul(x=dgate, y=h3, name="dgate_h3"), y=dsilu, name="dh1")
        dx1 = matmul_block(input_block(x, inp, "w1"), dh1, True, "dx_1")  # W1ᵀ·dh1
        dx3 = matmul_block(input_block(x, inp, "w3"), dh3, True, "dx_3")  # W3ᵀ·dh3
        dx = mb.add(x=dx1, y=dx3, name="dx")
        return [dx, dh1, dh3]

    program = build_program(inp, out, body)
    return KernelSpec(program, inp, out, "ffn_backward", matmul_flops(program), staging=BACKWARD_STAGING)
