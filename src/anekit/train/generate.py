"""Text generation from a checkpoint: KV-cache decoding with temperature and top-k sampling."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from ..errors import AnekitError
from ..model.config import ModelConfig
from ..model.reference import decode_step, new_cache


class GenerateError(AnekitError, ValueError):
    """Sampling options or a prompt that cannot be used; the message names the option."""


def _finite_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        return False


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, seed: int = 0) -> None:
    """Raise `GenerateError` naming the first sampling option out of range."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise GenerateError(f"--max-tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not _finite_number(temperature) or temperature < 0:
        raise GenerateError(f"--temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise GenerateError(f"--top-k must be an integer >= 0 (0: all tokens), got {top_k!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise GenerateError(f"--seed must be an integer >= 0, got {seed!r}")


def sample_next(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    """One token id from `logits` [V]: greedy at temperature 0, else softmax(logits / T) over the
    `top_k` most likely ids (all ids when top_k <= 0)."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = np.asarray(logits, dtype=np.float64) / temperature
    if 0 < top_k < z.size:
        cut = np.partition(z, -top_k)[-top_k]
        z = np.where(z >= cut, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(rng.choice(z.size, p=p))


def generate_ids(
    params: dict[str, np.ndarray],
    config: ModelConfig,
    prompt: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.8,
    top_k: int = 40,
    eos_id: int | None = None,
    seed: int = 0,
) -> Iterator[int]:
    """Yield new token ids after `prompt` (which must be non-empty, e.g. [BOS]), one at a time;
    each step costs one position of attention against the cache, not a full forward."""
    if not prompt:
        raise GenerateError("the prompt must hold at least one token (e.g. BOS)")
    check_sampling(max_new_tokens, temperature, top_k, seed)
    limit = config.seq_len
    if len(prompt) >= limit:
        raise GenerateError(
            f"the prompt has {len(prompt)} tokens; the model's context is {limit}: give a shorter --prompt"
        )
    rng = np.random.default_rng(seed)
    cache = new_cache(config, batch=1, max_len=limit)
    logits = None
    for tok in prompt:
        logits = decode_step(params, config, [tok], cache)[0]
    for _ in range(min(max_new_tokens, limit - len(prompt))):
        nxt = sample_next(logits, temperature, top_k, rng)
        if eos_id is not None and nxt == eos_id:
            return
        yield nxt
        logits = decode_step(params, config, [nxt], cache)[0]


def generate_text(params, config, tokenizer, prompt: str = "", max_new_tokens: int = 80, **kw) -> str:
    """The prompt plus the model's continuation, decoded."""
    ids = tokenizer.encode(prompt, bos=True)
    new = list(generate_ids(params, config, ids, max_new_tokens, eos_id=tokenizer.eos_id, **kw))
    return (
        tokenizer.decode(ids[1:] + new) if ids and ids[0] == tokenizer.bos_id else tokenizer.decode(ids + new)
    )
