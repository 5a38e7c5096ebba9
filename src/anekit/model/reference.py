"""The CPU model: parameter initialisation, and a plain NumPy float64 forward pass and single-token
decoding with a KV cache (used by tests and by `anekit generate`).

Architecture (ane-private-api.md §5.1; `anekit.model.config`): token embedding; per layer
`x += Wo·attn(rope(Wq·n1(x)), rope(Wk·n1(x)), Wv·n1(x))` and
`x += W2·(silu(W1·n2(x)) ⊙ W3·n2(x))`, with RMSNorm `n(x) = x / sqrt(mean(x²) + eps) · γ`;
final RMSNorm; classifier = the embedding (tied) or `lm_head`. With `qkv_bias` the projections add
`bq`/`bk`/`bv`; with `qk_norm` each head of q and k is RMS-normalised over its head_dim (weights
`q_norm`/`k_norm`, eps = norm_eps) after the projection and before RoPE, as Qwen3 does; with
`sliding_window` W a query at position p sees keys at positions p-W+1 .. p (Mistral). Causal
attention with query head h reading kv head h // (n_heads / n_kv_heads) (§6: one GQA mapping
everywhere); RoPE on interleaved pairs (`anekit.kernels.rope`, with Llama 3 frequency scaling when
the config has it). Arrays here are token-major (`[batch, seq, dim]`), the natural orientation for
a reader; the training step works channel-major, as the engine does.

This module is not the gradient oracle of the tests (PyTorch autograd is); it is the model the
CPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernels.rope import rope_angles
from .config import ModelConfig

__all__ = ["INIT_SCHEMES", "init_params", "forward", "KVCache", "new_cache", "decode_step"]

INIT_SCHEMES = ("dynamic", "normal")
_BIASES = ("bq", "bk", "bv")
_LAYER_FIELDS = ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3")


def init_params(
    config: ModelConfig, rng: np.random.Generator | int | None = 0, scheme: str = "dynamic", dtype=np.float32
) -> dict[str, np.ndarray]:
    """Fresh parameters, by the names and shapes of `config.param_shapes()`.

    scheme "dynamic" (the default) is maderix's from-scratch initialisation of the dynamic pipeline
    (ane-private-api.md §5.1): uniform, Wq/Wk/Wv ~ U(±1/√D), Wo ~ U(±1/√Qd · 1/√(2L)),
    W1/W3 ~ U(±1/√H), W2 ~ U(±1/√D · 1/√(2L)), norms = 1, embedding (and an untied lm_head)
    ~ U(±0.02). Scheme "normal" is the GPT-2 style: N(0, 0.02²), with Wo and W2 scaled by
    1/√(2L), norms = 1. In both, q/k/v biases start at 0 and q/k norms at 1 (an identity start, as
    the norms).
    `rng`: a `np.random.Generator` or a seed, so runs are reproducible.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init scheme must be one of {', '.join(INIT_SCHEMES)}, not {scheme!r}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    D, H, Q = config.dim, config.hidden_dim, config.q_dim
    resid = 1.0 / np.sqrt(2.0 * config.n_layers)
    if scheme == "dynamic":
        bounds = {
            "embed": 0.02, "lm_head": 0.02, "wq": D**-0.5, "wk": D**-0.5, "wv": D**-0.5,
            "wo": Q**-0.5 * resid, "w1": H**-0.5, "w3": H**-0.5, "w2": D**-0.5 * resid,
        }  # fmt: skip
    else:
        std = {"wo": 0.02 * resid, "w2": 0.02 * resid}
    params = {}
    for name, shape in config.param_shapes().items():
        kind = name.rsplit(".", 1)[-1]
        if kind.endswith("norm"):
            params[name] = np.ones(shape, dtype=dtype)
        elif kind in _BIASES:
            params[name] = np.zeros(shape, dtype=dtype)
        elif scheme == "dynamic":
            b = bounds[kind]
            params[name] = gen.uniform(-b, b, size=shape).astype(dtype)
        else:
            params[name] = (gen.standard_normal(shape) * std.get(kind, 0.02)).astype(dtype)
    return params


# -- pieces ------------------------------------------------------------------------------------


def _rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rope(x: np.ndarray, positions: np.ndarray, config: ModelConfig) -> np.ndarray:
    """Rotate interleaved pairs of `x` `[..., seq, heads, head_dim]` at `positions` `[seq]` (RoPE
    theta and any Llama 3 scaling from `config`)."""
    ang = rope_angles(x.shape[-1], positions, config.rope_theta, config.rope_scaling)[:, None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = a * sin + b * cos
    return out


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _classifier(params: dict[str, np.ndarray], config: ModelConfig) -> np.ndarray:
    return params["embed"] if config.tie_embeddings else params["lm_head"]


def _layer_params(params, i: int, config: ModelConfig) -> dict[str, np.ndarray]:
    p = f"layers.{i}."
    names = _LAYER_FIELDS + (_BIASES if config.qkv_bias else ())
    names += ("q_norm", "k_norm") if config.qk_norm else ()
    return {k: np.asarray(params[p + k], dtype=np.float64) for k in names}


def _attend(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, config: ModelConfig
) -> np.ndarray:
    """q `[B, Sq, nh, hd]` against k, v `[B, Sk, nkv, hd]` (keys at positions 0..Sk-1); query i sits
    at position q_pos[i] and sees keys at positions <= it (and, with a sliding window W, > q_pos[i] - W).
    Returns `[B, Sq, nh·hd]`."""
    ratio = config.gqa_ratio
    k = np.repeat(k, ratio, axis=2)  # kv head j serves q heads j·ratio .. j·ratio+ratio-1 (h // ratio)
    v = np.repeat(v, ratio, axis=2)
    qh, kh, vh = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)
    scores = (qh @ kh) / np.sqrt(config.head_dim)  # [B, nh, Sq, Sk]
    key_pos = np.arange(k.shape[1])[None, :]
    hidden = key_pos > q_pos[:, None]
    if config.sliding_window is not None:
        hidden |= key_pos <= q_pos[:, None] - config.sliding_window
    scores = np.where(hidden, -np.inf, scores)
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    out = (p @ vh).transpose(0, 2, 1, 3)  # [B, Sq, nh, hd]
    return out.reshape(out.shape[0], out.shape[1], -1)


def _block(x, lp, config: ModelConfig, positions, cache_kv=None):
    """One transformer block on `x` `[B, S, D]`; `cache_kv` = (k_cache, v_cache, start) to append."""
    B, S, _ = x.shape
    h = _rmsnorm(x, lp["attn_norm"], config.norm_eps)
    q, k, v = h @ lp["wq"].T, h @ lp["wk"].T, h @ lp["wv"].T
    if config.qkv_bias:
        q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
    q = q.reshape(B, S, config.n_heads, config.head_dim)
    k = k.reshape(B, S, config.n_kv_heads, config.head_dim)
    v = v.reshape(B, S, config.n_kv_heads, config.head_dim)
    if config.qk_norm:  # per head, over head_dim; weights in the same interleaved order as the rows
        q, k = _rmsnorm(q, lp["q_norm"], config.norm_eps), _rmsnorm(k, lp["k_norm"], config.norm_eps)
    q, k = _rope(q, positions, config), _rope(k, positions, config)
    if cache_kv is not None:
        kc, vc, start = cache_kv
        kc[:, start : start + S], vc[:, start : start + S] = k, v
        k, v = kc[:, : start + S], vc[:, : start + S]
    x = x + _attend(q, k, v, positions, config) @ lp["wo"].T
    h = _rmsnorm(x, lp["ffn_norm"], config.norm_eps)
    return x + (_silu(h @ lp["w1"].T) * (h @ lp["w3"].T)) @ lp["w2"].T


def forward(params: dict[str, np.ndarray], config: ModelConfig, tokens) -> np.ndarray:
    """Logits `[B, S, V]` (float64) for token ids `tokens` `[B, S]` (or `[S]`, giving `[S, V]`)."""
    tok = np.asarray(tokens)
    single = tok.ndim == 1
    tok = np.atleast_2d(tok)
    x = np.asarray(params["embed"], dtype=np.float64)[tok]
    positions = np.arange(tok.shape[1])
    for i in range(config.n_layers):
        x = _block(x, _layer_params(params, i, config), config, positions)
    x = _rmsnorm(x, np.asarray(params["final_norm"], dtype=np.float64), config.norm_eps)
    logits = x @ np.asarray(_classifier(params, config), dtype=np.float64).T
    return logits[0] if single else logits


@dataclass
class KVCache:
    """Keys and values of the tokens decoded so far: `k`, `v` `[layers, B, max_len, nkv, hd]`."""

    k: np.ndarray
    v: np.ndarray
    length: int = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


def new_cache(config: ModelConfig, batch: int = 1, max_len: int | None = None) -> KVCache:
    """An empty cache for `batch` sequences of up to `max_len` (default `config.seq_len`) tokens."""
    shape = (config.n_layers, batch, max_len or config.seq_len, config.n_kv_heads, config.head_dim)
    return KVCache(np.zeros(shape), np.zeros(shape))


def decode_step(params: dict[str, np.ndarray], config: ModelConfig, tokens, cache: KVCache) -> np.ndarray:
    """Feed one token per sequence (`tokens` `[B]` or an int) at position `cache.length`; returns
    the next-token logits `[B, V]` (float64) and advances the cache. Equivalent to the last row
    of `forward` over the whole prefix, at O(prefix) cost per token."""
    tok = np.atleast_1d(np.asarray(tokens))
    if tok.shape[0] != cache.k.shape[1]:
        raise ValueError(f"{tok.shape[0]} tokens for a cache of batch {cache.k.shape[1]}")
    pos = cache.length
    if pos >= cache.max_len:
        raise ValueError(f"the KV cache is full ({cache.max_len} positions); make a longer one")
    x = np.asarray(params["embed"], dtype=np.float64)[tok][:, None, :]
    positions = np.array([pos])
    for i in range(config.n_layers):
        x = _block(x, _layer_params(params, i, config), config, positions, (cache.k[i], cache.v[i], pos))
    cache.length = pos + 1
    x = _rmsnorm(x[:, 0], np.asarray(params["final_norm"], dtype=np.float64), config.norm_eps)
    return x @ np.asarray(_classifier(params, config), dtype=np.float64).T
