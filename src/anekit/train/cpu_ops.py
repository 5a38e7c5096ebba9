"""The CPU half of a training step (ane-private-api.md §5.4 "CPU side"): embedding, RMSNorm,
classifier + cross-entropy, and the backward pieces the engine does not do. (CPU versions of what
the kernels do on the engine, RoPE, the GQA reduce and SwiGLU's backward, live with the tests that
check the kernels against them: tests/model/cpu_ops_reference.py.)

Activations are channel-major `[channels, tokens]`, the layout of the engine's `[1, C, 1, S]`
surfaces, so kernel inputs and outputs are used without transposes (§1.7: the channel-first CPU
layout was maderix's largest early speed-up). Every function is pure (inputs are never written)
except where an `out` argument says otherwise, and computes in `dtype` (float32 by default,
float64 for exact checks).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "embedding_forward",
    "embedding_backward",
    "rmsnorm_forward",
    "rmsnorm_backward",
    "cross_entropy",
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
