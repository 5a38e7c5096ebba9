"""The sample a training run prints at its end: KV-cache decoding of the parameters in memory with the
float64 reference model, choosing tokens with `anekit.llm.sampling` (the one sampler anekit has;
`anekit generate` / `anekit chat` / the server run pretrained models through `anekit.llm`)."""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import AnekitError
from ..model.config import ModelConfig
from ..model.reference import decode_step, new_cache


class GenerateError(AnekitError, ValueError):
    """Sampling options or a prompt that cannot be used; the message names the option."""


def _options(max_new_tokens: int, temperature: float, top_k: int, seed: int | None):
    from ..llm.errors import OptionError
    from ..llm.sampling import SamplingOptions

    try:
        return SamplingOptions(max_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed)
    except OptionError as e:
        raise GenerateError(e.for_flag()) from None


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, seed: int = 0) -> None:
    """Raise `GenerateError` naming the first sampling option out of range (as its command-line flag)."""
    _options(max_new_tokens, temperature, top_k, seed)


def generate_ids(
    params: dict,
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
    from ..llm.sampling import Sampler

    if not prompt:
        raise GenerateError("the prompt must hold at least one token (e.g. BOS)")
    opts = _options(max_new_tokens, temperature, top_k, seed)
    limit = config.seq_len
    if len(prompt) >= limit:
        raise GenerateError(
            f"the prompt has {len(prompt)} tokens; the model's context is {limit}: give a shorter --prompt"
        )
    sampler = Sampler(opts, config.vocab_size, prompt)
    cache = new_cache(config, batch=1, max_len=limit)
    logits = None
    for tok in prompt:
        logits = decode_step(params, config, [tok], cache)[0]
    for _ in range(min(max_new_tokens, limit - len(prompt))):
        nxt = sampler.choose(logits)
        if eos_id is not None and nxt == eos_id:
            return
        sampler.observe(nxt)
        yield nxt
        logits = decode_step(params, config, [nxt], cache)[0]


def generate_text(params, config, tokenizer, prompt: str = "", max_new_tokens: int = 80, **kw) -> str:
    """The prompt plus the model's continuation, decoded."""
    ids = tokenizer.encode(prompt, bos=True)
    new = list(generate_ids(params, config, ids, max_new_tokens, eos_id=tokenizer.eos_id, **kw))
    return (
        tokenizer.decode(ids[1:] + new) if ids and ids[0] == tokenizer.bos_id else tokenizer.decode(ids + new)
    )
