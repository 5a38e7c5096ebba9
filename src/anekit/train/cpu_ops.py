"""The CPU half of a training step (ane-private-api.md §5.4 "CPU side"): embedding, RMSNorm,
classifier + cross-entropy, and the backward pieces the engine does not do.

Activations are channel-major `[channels, tokens]`, the layout of the engine's `[1, C, 1, S]`
surfaces, so kernel inputs and outputs are used without transposes (§1.7: the channel-first CPU
layout was maderix's largest early speed-up). Every function is pure (inputs are never written)
except where an `out` argument says otherwise, and computes in `dtype` (float32 by default,
float64 for exact checks).
"""

from __future__ import annotations

import numpy as np

from ..kernels.rope import rope_channel_tables

__all__ = [
    "embedding_forward",
    "embedding_backward",
    "rmsnorm_forward",
    "rmsnorm_backward",
    "classifier_forward",
    "classifier_backward",
    "cross_entropy",
    "rope_forward",
    "rope_backward",
    "gqa_reduce",
    "silu_grad",
    "swiglu_backward",
    "IGNORE",
]

#: Target id meaning "no loss at this position" (padding).
IGNORE = -1


def _f(a, dtype) -> np.ndarray:
    return np.asarray(a, dtype=dtype)


# -- embedding ---------------------------------------------------------------------------------


def embedding_forward(embed: np.ndarray, tokens, dtype=np.float32) -> np.ndarray:
    """Gather rows of `embed` `[V, D]` for `tokens` `[N]` -> `[D, N]` (contiguous)."""
    tok = np.asarray(tokens).reshape(-1)
    return np.ascontiguousarray(_f(embed, dtype)[tok].T)


def embedding_backward(dx: np.ndarray, tokens, vocab_size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Scatter-add `dx` `[D, N]` into rows `tokens` of a `[V, D]` gradient (repeated ids add up).

    With `out`, adds into it in place and returns it."""
    tok = np.asarray(tokens).reshape(-1)
    if out is None:
        out = np.zeros((vocab_size, dx.shape[0]), dtype=dx.dtype)
    np.add.at(out, tok, dx.T)
    return out


# -- RMSNorm -----------------------------------------------------------------------------------


def rmsnorm_forward(x: np.ndarray, weight: np.ndarray, eps: float, dtype=np.float32):
    """`y = x · rrms · γ` over channels of `x` `[D, N]`; returns `(y, rrms)`, rrms `[N]` =
    1/√(mean(x²) + eps), kept for the backward pass."""
    x = _f(x, dtype)
    rrms = 1.0 / np.sqrt(np.einsum("dn,dn->n", x, x) / x.shape[0] + eps)
    y = x * rrms[None, :]
    y *= _f(weight, dtype)[:, None]
    return y, rrms


def rmsnorm_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, rrms: np.ndarray, dtype=np.float32):
    """Gradients of `rmsnorm_forward`: `(dx, dγ)`.

    With x̂ = x·r: dγ = Σ_n dy ⊙ x̂, and dx = r·(g - x̂·mean_d(g ⊙ x̂)) where g = dy ⊙ γ."""
    dy, x = _f(dy, dtype), _f(x, dtype)
    xhat = x * rrms[None, :]
    dweight = np.einsum("dn,dn->d", dy, xhat)
    g = dy * _f(weight, dtype)[:, None]
    proj = np.einsum("dn,dn->n", g, xhat) / x.shape[0]
    dx = (g - xhat * proj[None, :]) * rrms[None, :]
    return dx, dweight


# -- classifier and loss -----------------------------------------------------------------------


def classifier_forward(x: np.ndarray, weight: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Logits `[V, N]` = W `[V, D]` · x `[D, N]` (tied: W is the embedding). Materializes every
    logit: for sampling and small vocabularies; training uses `cross_entropy`."""
    return _f(weight, dtype) @ _f(x, dtype)


def classifier_backward(dlogits: np.ndarray, x: np.ndarray, weight: np.ndarray, dtype=np.float32):
    """`(dx, dW)` of `classifier_forward`: dx = Wᵀ·dlogits `[D, N]`, dW = dlogits·xᵀ `[V, D]`."""
    dl = _f(dlogits, dtype)
    return _f(weight, dtype).T @ dl, dl @ _f(x, dtype).T


def cross_entropy(
    x: np.ndarray,
    weight: np.ndarray,
    targets,
    *,
    grad_scale: float = 1.0,
    normalizer: int | None = None,
    chunk: int = 8192,
    need_grad: bool = True,
    dtype=np.float32,
):
    """Classifier + softmax cross-entropy, chunked over the vocabulary.

    x `[D, N]` (final-normed activations), weight `[V, D]`, targets `[N]` (IGNORE = no loss).
    Returns `(loss_sum, dx, dweight)`: the *sum* of the per-token losses (divide by the token
    count for the mean), and, if `need_grad`, the gradients of `grad_scale · loss_sum /
    normalizer` (`normalizer` defaults to the number of counted tokens; `grad_scale` is the loss
    scale that keeps fp16 gradients from flushing to zero, ane-private-api.md §5.4, §6).

    The `[V, N]` logits are never held whole: pass 1 computes a running log-sum-exp per token
    over vocabulary chunks of `chunk` rows, pass 2 recomputes each chunk's logits, turns them into
    `softmax - onehot` and accumulates dx and the chunk's rows of dW. With one chunk the logits
    are kept between the passes instead of recomputed.
    """
    x = _f(x, dtype)
    w = _f(weight, dtype)
    tgt = np.asarray(targets).reshape(-1)
    V, N = w.shape[0], x.shape[1]
    valid = tgt != IGNORE
    count = int(valid.sum())
    safe_tgt = np.where(valid, tgt, 0)
    if np.any(safe_tgt < 0) or np.any(safe_tgt >= V):
        raise ValueError(f"target ids must lie in [0, {V}) or be {IGNORE}")
    starts = range(0, V, chunk)
    m = np.full(N, -np.inf, dtype=dtype)
    s = np.zeros(N, dtype=dtype)
    target_logit = np.zeros(N, dtype=dtype)
    kept = None
    for v0 in starts:
        logits = w[v0 : v0 + chunk] @ x  # [Vc, N]
        m_new = np.maximum(m, logits.max(axis=0))
        s = s * np.exp(m - m_new) + np.exp(logits - m_new[None, :]).sum(axis=0)
        m = m_new
        inside = (safe_tgt >= v0) & (safe_tgt < v0 + logits.shape[0])
        cols = np.nonzero(inside)[0]
        target_logit[cols] = logits[safe_tgt[cols] - v0, cols]
        if len(starts) == 1:
            kept = logits
    lse = m + np.log(s)
    loss_sum = float(np.sum((lse - target_logit)[valid]))
    if not need_grad:
        return loss_sum, None, None
    coef = np.where(valid, grad_scale / (normalizer or max(count, 1)), 0.0).astype(dtype)
    dx = np.zeros_like(x)
    dweight = np.empty_like(w)
    for v0 in starts:
        logits = kept if kept is not None else w[v0 : v0 + chunk] @ x
        dl = np.exp(logits - lse[None, :])  # softmax rows of this chunk
        inside = (safe_tgt >= v0) & (safe_tgt < v0 + logits.shape[0]) & valid
        cols = np.nonzero(inside)[0]
        dl[safe_tgt[cols] - v0, cols] -= 1.0
        dl *= coef[None, :]
        wc = w[v0 : v0 + logits.shape[0]]
        dx += wc.T @ dl
        dweight[v0 : v0 + logits.shape[0]] = dl @ x.T
    return loss_sum, dx, dweight


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
