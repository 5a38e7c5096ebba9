"""Reference semantics: recurrent ops (`lstm`, iOS15 definition; iOS17 adds fp16).

The definition is coremltools' `ops/defs/iOS15/recurrent.py` (docstring and `_validate_inputs`);
three points it leaves open are taken from coremltools' own checks of the op:
- `hard_sigmoid` and `scaled_tanh` take their standard defaults, min(max(0.2 x + 0.5, 0), 1) and
  1.0 * tanh(1.0 * x) (`ops/tests/iOS14/test_recurrent.py`, `test_numpy_numerical`);
- `clip` bounds the cell state c_t after its update, before the output gate's peephole reads it
  (same test; the TensorFlow `cell_clip` it is lowered from, `tf_lstm_to_core_lstm.py`);
- `direction="reverse"` runs the sequence from its end and emits hidden states in that processing
  order, while `bidirectional` emits the backward half aligned with the input position, as
  PyTorch does (`test_builder_to_backend_smoke_unilstm` / `_bidirlstm`).
Gates are laid out `[input, forget, output, cell]` ("ifoz"); peepholes `[input, forget, output]`.
The state is carried between steps in compute precision; only the three outputs are rounded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..registry import OpContext, UnsupportedOp, op

Array = np.ndarray


def _sigmoid(x: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-x))


_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "scaled_tanh": np.tanh,  # alpha = beta = 1 (module docstring)
    "hard_sigmoid": lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0),  # alpha 0.2, beta 0.5
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
}


def _activation(name: str, which: str) -> Callable[[Array], Array]:
    fn = _ACTIVATIONS.get(str(name).lower())
    if fn is None:
        raise UnsupportedOp(f"lstm {which} {name!r} is not one of {', '.join(_ACTIVATIONS)}")
    return fn


def _check_weights(w_ih: Array, w_hh: Array, input_size: int, suffix: str = "") -> int:
    """Hidden size H from weight_hh [4H, H]; weight_ih must be [4H, I]."""
    if w_hh.ndim != 2 or w_hh.shape[0] != 4 * w_hh.shape[1]:
        raise ValueError(f"lstm weight_hh{suffix} must be [4*H, H], got {w_hh.shape}")
    hidden = w_hh.shape[1]
    if w_ih.shape != (4 * hidden, input_size):
        want = [4 * hidden, input_size]
        raise ValueError(f"lstm weight_ih{suffix} must be [4*H, I] = {want}, got {list(w_ih.shape)}")
    return hidden


def _vector(ctx: OpContext, v: Array | None, size: int, what: str) -> Array:
    if v is None:
        return np.zeros(size, ctx.float)
    v = ctx.f(v).reshape(-1)
    if v.size != size:
        raise ValueError(f"lstm {what} must have {size} elements, got {v.size}")
    return v


def _run_direction(
    ctx: OpContext,
    x: Array,
    h: Array,
    c: Array,
    w_ih: Array,
    w_hh: Array,
    bias: Array,
    peep: Array,
    clip: float | None,
    acts: tuple[Callable, Callable, Callable],
    backward: bool,
) -> tuple[Array, Array, Array]:
    """Hidden states [s, b, H] in processing order, final h [b, H], final c [b, H]."""
    rec, cell, out_act = acts
    hidden = w_hh.shape[1]
    p_i, p_f, p_o = peep[:hidden], peep[hidden : 2 * hidden], peep[2 * hidden :]
    xw = np.matmul(x, w_ih.T)  # every step's input projection in one product: [s, b, 4H]
    xw += bias
    w_hh_t = w_hh.T
    steps = range(x.shape[0] - 1, -1, -1) if backward else range(x.shape[0])
    hs = np.empty((x.shape[0], x.shape[1], hidden), ctx.float)
    for k, t in enumerate(steps):
        g = xw[t] + h @ w_hh_t
        i = rec(g[:, :hidden] + p_i * c)
        f = rec(g[:, hidden : 2 * hidden] + p_f * c)
        z = cell(g[:, 3 * hidden :])
        c = f * c + i * z
        if clip is not None:
            c = np.clip(c, -clip, clip)
        o = rec(g[:, 2 * hidden : 3 * hidden] + p_o * c)
        h = o * out_act(c)
        hs[k] = h
    return hs, h, c


@op("lstm")
def lstm(
    ctx: OpContext,
    x: Array,
    initial_h: Array,
    initial_c: Array,
    weight_ih: Array,
    weight_hh: Array,
    bias: Array | None = None,
    peephole: Array | None = None,
    weight_ih_back: Array | None = None,
    weight_hh_back: Array | None = None,
    bias_back: Array | None = None,
    peephole_back: Array | None = None,
    direction: str = "forward",
    output_sequence: Array | bool = False,
    recurrent_activation: str = "sigmoid",
    cell_activation: str = "tanh",
    activation: str = "tanh",
    clip: Array | float | None = None,
) -> tuple[Array, Array, Array]:
    """x [s, b, I] -> (hidden states [s or 1, b, D*H], final h [b, D*H], final c [b, D*H])."""
    if direction not in ("forward", "reverse", "bidirectional"):
        raise UnsupportedOp(f"lstm direction {direction!r} is not forward, reverse or bidirectional")
    acts = (
        _activation(recurrent_activation, "recurrent_activation"),
        _activation(cell_activation, "cell_activation"),
        _activation(activation, "activation"),
    )
    if x.ndim != 3:
        raise ValueError(f"lstm x must be [seq, batch, input], got shape {x.shape}")
    xf = ctx.f(x)
    n_seq, batch, n_in = x.shape
    hidden = _check_weights(weight_ih, weight_hh, n_in)
    dirs = 2 if direction == "bidirectional" else 1
    want = (batch, dirs * hidden)
    for name, state in (("initial_h", initial_h), ("initial_c", initial_c)):
        if state.shape != want:
            raise ValueError(f"lstm {name} must be [batch, directions*H] = {list(want)}, got {state.shape}")
    h0, c0 = ctx.f(initial_h), ctx.f(initial_c)
    bound = None if clip is None else float(clip)
    ctx.check_size((n_seq, batch, dirs * hidden), "the lstm hidden-state sequence")
    fwd = _run_direction(
        ctx,
        xf,
        h0[:, :hidden],
        c0[:, :hidden],
        ctx.f(weight_ih),
        ctx.f(weight_hh),
        _vector(ctx, bias, 4 * hidden, "bias"),
        _vector(ctx, peephole, 3 * hidden, "peephole"),
        bound,
        acts,
        backward=direction == "reverse",
    )
    if dirs == 1:
        hs, h, c = fwd
        return (hs if bool(output_sequence) else hs[-1:]), h, c
    if weight_ih_back is None or weight_hh_back is None:
        raise ValueError("a bidirectional lstm needs weight_ih_back and weight_hh_back")
    _check_weights(weight_ih_back, weight_hh_back, n_in, "_back")
    if weight_hh_back.shape != weight_hh.shape:
        raise ValueError(f"lstm weight_hh_back {weight_hh_back.shape} is not weight_hh's {weight_hh.shape}")
    hs_b, h_b, c_b = _run_direction(
        ctx,
        xf,
        h0[:, hidden:],
        c0[:, hidden:],
        ctx.f(weight_ih_back),
        ctx.f(weight_hh_back),
        _vector(ctx, bias_back, 4 * hidden, "bias_back"),
        _vector(ctx, peephole_back, 3 * hidden, "peephole_back"),
        bound,
        acts,
        backward=True,
    )
    hs_b = hs_b[::-1]  # the backward half is aligned with input positions (module docstring)
    hs_f = fwd[0]
    if bool(output_sequence):
        seq = np.concatenate([hs_f, hs_b], axis=-1)
    else:  # each direction's last step: the forward one at the end, the backward one at position 0
        seq = np.concatenate([hs_f[-1:], hs_b[:1]], axis=-1)
    return seq, np.concatenate([fwd[1], h_b], axis=-1), np.concatenate([fwd[2], c_b], axis=-1)
