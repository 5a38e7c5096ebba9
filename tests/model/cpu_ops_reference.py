"""CPU versions of what the training step does on the engine or never needs (classifier logits,
RoPE forward/backward, the GQA reduce, SwiGLU's backward): oracles for the tests, moved here from
`anekit.train.cpu_ops`, which keeps only what a step runs. Same conventions: channel-major
`[channels, tokens]`, pure, computing in `dtype`."""

from __future__ import annotations

import numpy as np

from anekit.kernels.rope import rope_channel_tables


def _f(a, dtype) -> np.ndarray:
    return np.asarray(a, dtype=dtype)


def classifier_forward(x: np.ndarray, weight: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Logits `[V, N]` = W `[V, D]` · x `[D, N]` (tied: W is the embedding). Materializes every
    logit: for sampling and small vocabularies; training uses `cross_entropy`."""
    return _f(weight, dtype) @ _f(x, dtype)


def classifier_backward(dlogits: np.ndarray, x: np.ndarray, weight: np.ndarray, dtype=np.float32):
    """`(dx, dW)` of `classifier_forward`: dx = Wᵀ·dlogits `[D, N]`, dW = dlogits·xᵀ `[V, D]`."""
    dl = _f(dlogits, dtype)
    return _f(weight, dtype).T @ dl, dl @ _f(x, dtype).T


# -- attention pieces --------------------------------------------------------------------------


def _rope_apply(
    t: np.ndarray, head_dim: int, seq_len: int, theta: float, scale: float, sign: float, dtype, scaling
):
    t = _f(t, dtype)
    c, n = t.shape
    if n % seq_len or c % head_dim:
        raise ValueError(f"[{c}, {n}] is not heads x {head_dim} channels by sequences of {seq_len} tokens")
    cos, sin = rope_channel_tables(head_dim, seq_len, theta, scaling)
    cos = np.tile(cos * scale, (c // head_dim, n // seq_len)).astype(dtype)
    sin = np.tile(sin * scale, (c // head_dim, n // seq_len)).astype(dtype)
    swapped = t.reshape(c // 2, 2, n)[:, ::-1].reshape(c, n)
    return t * cos + sign * swapped * sin


def rope_forward(
    t: np.ndarray, head_dim: int, seq_len: int, theta: float = 10000.0, dtype=np.float32, *, scaling=None
):
    """RoPE (interleaved pairs, `anekit.kernels.rope`) of channel-major `t` `[heads·hd, N]` whose
    N tokens are sequences of `seq_len` positions side by side. `scaling`: a config's
    `rope_scaling` (Llama 3 frequency scaling) or None."""
    return _rope_apply(t, head_dim, seq_len, theta, 1.0, 1.0, dtype, scaling)


def rope_backward(
    dt: np.ndarray,
    head_dim: int,
    seq_len: int,
    theta: float = 10000.0,
    scale: float = 1.0,
    dtype=np.float32,
    *,
    scaling=None,
):
    """Gradient through `scale · rope_forward`: the inverse (transposed) rotation of `dt`, times
    `scale` (the attention kernels fold 1/√hd into q's rotation). The attention backward kernel
    does this on the engine; this is the CPU version for pipelines that do not."""
    return _rope_apply(dt, head_dim, seq_len, theta, scale, -1.0, dtype, scaling)


def gqa_reduce(d_full: np.ndarray, n_heads: int, n_kv_heads: int) -> np.ndarray:
    """Sum per-q-head gradients `[n_heads·hd, N]` into kv heads `[n_kv_heads·hd, N]`: kv head j
    gets q heads j·r .. j·r+r-1, r = n_heads / n_kv_heads (the h // r mapping, §6)."""
    c, n = d_full.shape
    hd = c // n_heads
    return d_full.reshape(n_kv_heads, n_heads // n_kv_heads, hd, n).sum(axis=1).reshape(n_kv_heads * hd, n)


# -- SwiGLU ------------------------------------------------------------------------------------


def silu_grad(h: np.ndarray, dtype=np.float32) -> np.ndarray:
    """d silu(h) / dh = σ(h)·(1 + h·(1 - σ(h)))."""
    h = _f(h, dtype)
    sig = 1.0 / (1.0 + np.exp(-h))
    return sig * (1.0 + h * (1.0 - sig))


def swiglu_backward(dgate: np.ndarray, h1: np.ndarray, h3: np.ndarray, dtype=np.float32):
    """`(dh1, dh3)` for gate = silu(h1)·h3 (the FFN backward kernel does this on the engine)."""
    dgate, h1, h3 = _f(dgate, dtype), _f(h1, dtype), _f(h3, dtype)
    sig = 1.0 / (1.0 + np.exp(-h1))
    return dgate * h3 * sig * (1.0 + h1 * (1.0 - sig)), dgate * h1 * sig
