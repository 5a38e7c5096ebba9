"""Choosing the next token: the sampling options and the logits processors, one implementation for
every caller (`anekit generate`, `anekit chat`, the server, the end-of-training sample).

The processors follow the rules transformers applies, in the order its `generate` applies them
(repetition penalty, then temperature, top-k, top-p, min-p; `GenerationMixin._get_logits_processor`,
https://github.com/huggingface/transformers/blob/main/src/transformers/generation/utils.py), so a
model gives here the distribution it gives there:

- repetition penalty (CTRL, https://arxiv.org/abs/1909.05858 eq. 2, as transformers'
  `RepetitionPenaltyLogitsProcessor`): for every token id seen in the prompt or the output so far,
  a positive logit is divided by the penalty and a negative one multiplied by it;
- temperature: logits / T; T = 0 means greedy (argmax of the penalised logits, as transformers'
  greedy search still applies the repetition penalty);
- top-k: keep the logits >= the k-th largest (ties at the boundary are kept);
- top-p (nucleus): sort ascending, drop the tokens whose cumulative probability is <= 1 - p, always
  keep the most likely one;
- min-p (https://arxiv.org/abs/2407.01082): drop the tokens whose probability is below
  min_p x the top token's.

Dropped tokens get -inf. Arithmetic is float64 whatever the logits' dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from .errors import OptionError

__all__ = [
    "SamplingOptions",
    "Sampler",
    "StopMatcher",
    "apply_repetition_penalty",
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "apply_min_p",
    "process_logits",
]


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        return False


#: The numeric options' checks, in the order `SamplingOptions` runs them: (name, ok(value), rule).
_RULES = (
    ("max_tokens", lambda v: _is_int(v) and v >= 1, "must be an integer >= 1"),
    ("temperature", lambda v: _is_number(v) and v >= 0, "must be a finite number >= 0 (0: greedy)"),
    ("top_k", lambda v: _is_int(v) and v >= 0, "must be an integer >= 0 (0: all tokens)"),
    ("top_p", lambda v: _is_number(v) and 0 < v <= 1, "must be a number in (0, 1] (1: off)"),
    ("min_p", lambda v: _is_number(v) and 0 <= v <= 1, "must be a number in [0, 1] (0: off)"),
    ("repetition_penalty", lambda v: _is_number(v) and v > 0, "must be a finite number > 0 (1: off)"),
)


def _seed_ok(seed) -> bool:
    return seed is None or (_is_int(seed) and seed >= 0)


def _stop_strings(stop) -> tuple[str, ...]:
    """`stop` (one string, None, or an iterable of strings) as a tuple of non-empty strings."""
    given = stop
    if isinstance(stop, str):
        stop = (stop,)
    if stop is None:
        stop = ()
    if not isinstance(stop, Iterable) or isinstance(stop, (bytes, dict)):
        raise OptionError("stop", "must be a string or a list of strings", given)
    stop = tuple(stop)
    if not all(isinstance(s, str) and s for s in stop):
        raise OptionError("stop", "must hold non-empty strings only", given)
    return stop


@dataclass(frozen=True)
class SamplingOptions:
    """How to pick tokens. Checked on construction: a value out of range raises `OptionError` (an
    `LLMError`) naming the option. `stop` may be given as one string or any sequence of strings."""

    max_tokens: int = 256
    temperature: float = 1.0  #: 0: greedy
    top_k: int = 0  #: 0: all tokens
    top_p: float = 1.0  #: 1: off
    min_p: float = 0.0  #: 0: off
    repetition_penalty: float = 1.0  #: 1: off
    stop: tuple[str, ...] = ()
    seed: int | None = None  #: None: fresh entropy each call

    def __post_init__(self) -> None:
        for name, ok, rule in _RULES:  # in this order: it decides which error a call reports
            if not ok(getattr(self, name)):
                raise OptionError(name, rule, getattr(self, name))
        object.__setattr__(self, "stop", _stop_strings(self.stop))
        if not _seed_ok(self.seed):
            raise OptionError("seed", "must be an integer >= 0 (or None: fresh entropy)", self.seed)
        for name in ("max_tokens", "top_k") + (("seed",) if self.seed is not None else ()):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def updated(self, **changes) -> SamplingOptions:
        """A copy with `changes` applied (and checked); unknown names are an `OptionError`."""
        known = {f.name for f in fields(self)}
        for name in changes:
            if name not in known:
                raise OptionError(name, f"is not a sampling option (known: {', '.join(sorted(known))})", None)
        return replace(self, **changes) if changes else self


# ---------------------------------------------------------------------------------------------
# processors
#
# The filters work on the candidate set: the scores still in play (`v`, float64) and return which of
# them stay (indices into `v`). A vocabulary of 150k ids is never sorted: top-k partitions, top-p
# looks at the most likely tokens only (64, more until they hold the mass p), so a
# token costs about a millisecond of sampling whatever the options. The `apply_*` functions give
# the same filters on whole score arrays (-inf for dropped tokens), as transformers' processors do.


def _keep_top_k(v: np.ndarray, k: int) -> np.ndarray | None:
    """The scores >= the k-th largest (ties at the boundary stay, as transformers keeps them);
    None (like every `_keep_*`) when all stay."""
    if k <= 0 or k >= v.size:
        return None
    kth = np.partition(v, v.size - k)[v.size - k]
    return np.flatnonzero(v >= kth)


def _softmax(v: np.ndarray) -> np.ndarray:
    z = np.exp(v - v.max())
    return z / z.sum()


def _keep_top_p(v: np.ndarray, p: float) -> np.ndarray | None:
    """transformers' rule: in ascending order, drop a token when the cumulative probability up to and
    including it is <= 1 - p; the most likely token stays. Equivalently a token stays when the mass
    of the tokens above it is < p, so only the most likely tokens need sorting: take the top m, and
    if they hold at least p every token outside them is dropped; else take 4m."""
    if p >= 1.0 or v.size <= 1:
        return None
    probs = _softmax(v)
    m = min(v.size, 64)
    while True:
        top = np.argpartition(probs, v.size - m)[v.size - m :] if m < v.size else np.arange(v.size)
        order = top[np.argsort(-probs[top], kind="stable")]
        sorted_p = probs[order]
        if m == v.size or sorted_p.sum() >= p:
            # ascending cumulative sums, as transformers computes them, over these m tokens: the
            # mass below them is 1 - their sum
            below = 1.0 - sorted_p.sum()
            cum_ascending = below + np.cumsum(sorted_p[::-1])[::-1]
            keep = ~(cum_ascending <= 1.0 - p)
            keep[0] = True
            return order[keep]
        m = min(v.size, 4 * m)


def _keep_min_p(v: np.ndarray, min_p: float) -> np.ndarray | None:
    """The tokens whose probability is at least min_p x the most likely one's."""
    if min_p <= 0.0:
        return None
    probs = _softmax(v)
    keep = probs >= min_p * probs.max()
    keep[np.argmax(v)] = True
    return np.flatnonzero(keep)


def _penalised(logits: np.ndarray, seen, penalty: float) -> np.ndarray:
    """float64 scores [V] with CTRL's repetition penalty on the ids in `seen` (ids or a bool mask)."""
    out = np.array(logits, dtype=np.float64).reshape(-1)
    if penalty == 1.0 or seen is None:
        return out
    seen = np.asarray(seen)
    idx = np.flatnonzero(seen) if seen.dtype == bool else np.unique(seen.astype(np.int64))
    if idx.size:
        s = out[idx]
        out[idx] = np.where(s < 0, s * penalty, s / penalty)
    return out


def candidates(logits: np.ndarray, options: SamplingOptions, seen=None) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, their scores) the next token is drawn from (softmax of the scores): every processor
    of `options` in transformers' order. At temperature 0 only the repetition penalty applies and
    the one candidate is the argmax."""
    with np.errstate(over="ignore"):
        scores = _penalised(logits, seen, options.repetition_penalty)
    if options.greedy or np.isposinf(scores).any():
        # +inf: a logit that overflowed, or one a repetition penalty near 0 divided past float64's
        # range; it outweighs every finite score (softmax would be NaN), so it is the draw, as at T 0
        top = np.array([_argmax(scores)])
        return top, scores[top]
    finite = np.isfinite(scores)
    if not finite.any():  # nothing to sample from: `Sampler` falls back to the argmax
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    if finite.all():  # the usual case: no index array over the whole vocabulary
        live, v = None, scores
    else:
        live = np.flatnonzero(finite)
        v = scores[live]
    with np.errstate(over="ignore"):
        scaled = v / options.temperature
    if not np.isfinite(scaled).all():
        # a temperature so small (1e-320) that score / T overflows float64, where transformers'
        # softmax would give NaN probabilities: its limit T -> 0+, the best candidate (which every
        # later processor keeps)
        best = int(np.argmax(v))
        return np.array([best if live is None else live[best]]), v[best : best + 1]
    v = scaled
    for keep_of, value in (
        (_keep_top_k, options.top_k),
        (_keep_top_p, options.top_p),
        (_keep_min_p, options.min_p),
    ):
        keep = keep_of(v, value)
        if keep is not None:
            live, v = (keep if live is None else live[keep]), v[keep]
    return (np.arange(v.size) if live is None else live), v


def _argmax(scores: np.ndarray) -> int:
    """The index of the largest score, NaN counting as -inf (np.argmax would pick a NaN)."""
    i = int(np.argmax(scores))
    if not np.isnan(scores[i]):
        return i
    return int(np.argmax(np.where(np.isnan(scores), -np.inf, scores)))


def _on_full(scores: np.ndarray, keep_fn) -> np.ndarray:
    out = np.array(scores, dtype=np.float64).reshape(-1)
    live = np.flatnonzero(np.isfinite(out))
    keep = keep_fn(out[live])
    kept = live if keep is None else live[keep]
    filtered = np.full_like(out, -np.inf)
    filtered[kept] = out[kept]
    return filtered


def apply_repetition_penalty(scores: np.ndarray, seen, penalty: float) -> np.ndarray:
    """Divide the positive and multiply the negative scores of the ids in `seen` (ids or a bool mask
    [V]) by `penalty` (CTRL's rule, as transformers' `RepetitionPenaltyLogitsProcessor`)."""
    return _penalised(scores, seen, penalty)


def apply_temperature(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Scores / temperature (temperature > 0; 0 is greedy and never reaches here)."""
    return np.asarray(scores, dtype=np.float64) / temperature


def apply_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Keep the scores >= the k-th largest (k <= 0 or >= V: all); the rest -inf."""
    return _on_full(scores, lambda v: _keep_top_k(v, k))


def apply_top_p(scores: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filtering as transformers' `TopPLogitsWarper` (see `_keep_top_p`); the rest -inf."""
    return _on_full(scores, lambda v: _keep_top_p(v, p))


def apply_min_p(scores: np.ndarray, min_p: float) -> np.ndarray:
    """Drop (-inf) the tokens whose probability is below `min_p` x the most likely token's."""
    return _on_full(scores, lambda v: _keep_min_p(v, min_p))


def process_logits(logits: np.ndarray, options: SamplingOptions, seen=None) -> np.ndarray:
    """`candidates` as a whole score array [V]: the processed scores, -inf for the dropped tokens
    (at temperature 0: the penalised logits, nothing dropped)."""
    if options.greedy:
        return _penalised(logits, seen, options.repetition_penalty)
    ids, v = candidates(logits, options, seen)
    out = np.full(np.asarray(logits).size, -np.inf)
    out[ids] = v
    return out


class Sampler:
    """Picks tokens for one generation: the options, the random generator (`seed`) and the ids seen
    so far (for the repetition penalty: the prompt's, then each one `observe`d)."""

    def __init__(self, options: SamplingOptions, vocab_size: int, prompt: Sequence[int] = ()):
        self.options = options
        self.vocab_size = vocab_size
        self.rng = np.random.default_rng(options.seed)
        self.seen = np.zeros(vocab_size, dtype=bool)
        ids = np.asarray(list(prompt), dtype=np.int64)
        self.seen[ids[(ids >= 0) & (ids < vocab_size)]] = True

    def observe(self, token: int) -> None:
        if 0 <= token < self.vocab_size:
            self.seen[token] = True

    def choose(self, logits: np.ndarray) -> int:
        """The next token id from `logits` [V] (not yet observed: call `observe` once it is kept)."""
        logits = np.asarray(logits).reshape(-1)
        if logits.size != self.vocab_size:
            raise ValueError(f"{logits.size} logits for a vocabulary of {self.vocab_size}")
        opts = self.options
        if opts.greedy and opts.repetition_penalty == 1.0:
            return _argmax(logits)
        seen = self.seen if opts.repetition_penalty != 1.0 else None
        ids, v = candidates(logits, opts, seen)
        if ids.size == 0:  # every logit non-finite: nothing to sample from, take the argmax
            return _argmax(logits)
        if ids.size == 1:
            return int(ids[0])
        cdf = np.cumsum(np.exp(v - v.max()))  # unnormalised: the draw scales by the total
        pick = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return int(ids[min(pick, ids.size - 1)])


# ---------------------------------------------------------------------------------------------
# stop strings


class StopMatcher:
    """Holds generated text back until it cannot be the start of a stop string.

    `feed(text)` takes the next decoded text and returns (safe_text, stopped): `safe_text` is what may
    be shown now; once a stop string appears, `stopped` is True and the text before the stop string
    is returned (the stop string and anything after it never are). `flush()` returns what is still
    held at the end. Text already returned is never taken back: a stop string can only start in the
    part not yet returned, since any part that could begin one is held.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = self._held_suffix()
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def _held_suffix(self) -> int:
        """Length of the longest suffix of the pending text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
