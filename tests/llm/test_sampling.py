"""`anekit.llm.sampling` against transformers' own logits processors and warpers (the oracle), on
random logits; the options' checks; the sampler's seed; stop strings held back while streaming."""

from __future__ import annotations

import math

import numpy as np
import pytest

from anekit.llm.errors import LLMError, OptionError
from anekit.llm.sampling import (
    Sampler,
    SamplingOptions,
    StopMatcher,
    apply_min_p,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    process_logits,
)

torch = pytest.importorskip("torch")
lp = pytest.importorskip("transformers.generation.logits_process")

V = 257


def _logits(seed: int, scale: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, V)


def _oracle(processor, scores: np.ndarray, input_ids=None) -> np.ndarray:
    ids = torch.tensor([input_ids if input_ids is not None else [0]], dtype=torch.long)
    return processor(ids, torch.tensor(scores[None], dtype=torch.float64))[0].numpy()


def _same(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert np.array_equal(np.isinf(ours), np.isinf(theirs)), "different tokens were filtered"
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 5, 50, 256, 257, 1000])
def test_top_k_matches_transformers(seed, k):
    s = _logits(seed)
    _same(apply_top_k(s, k), _oracle(lp.TopKLogitsWarper(top_k=k), s))


def test_top_k_keeps_ties_at_the_boundary_as_transformers_does():
    s = np.zeros(V)
    s[:3] = [5.0, 2.0, 2.0]
    _same(apply_top_k(s, 2), _oracle(lp.TopKLogitsWarper(top_k=2), s))
    assert np.isfinite(apply_top_k(s, 2)).sum() == 3


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p", [0.01, 0.3, 0.9, 0.95, 0.999, 1.0])
def test_top_p_matches_transformers(seed, p):
    s = _logits(seed)
    _same(apply_top_p(s, p), _oracle(lp.TopPLogitsWarper(top_p=p), s))


@pytest.mark.parametrize("scale", [0.3, 3.0, 10.0])
@pytest.mark.parametrize("p", [0.5, 0.95, 0.999])
def test_top_p_on_a_large_vocabulary_matches_transformers(scale, p):
    """50,000 ids: the nucleus is found among the most likely tokens without sorting them all."""
    s = np.random.default_rng(7).normal(0.0, scale, 50_000)
    _same(apply_top_p(s, p), _oracle(lp.TopPLogitsWarper(top_p=p), s))


@pytest.mark.parametrize("seed", range(3))
def test_top_p_after_top_k_matches_transformers(seed):
    s = apply_top_k(_logits(seed), 20)
    _same(apply_top_p(s, 0.8), _oracle(lp.TopPLogitsWarper(top_p=0.8), s))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("m", [0.0001, 0.05, 0.1, 0.5, 1.0])
def test_min_p_matches_transformers(seed, m):
    s = _logits(seed)
    _same(apply_min_p(s, m), _oracle(lp.MinPLogitsWarper(min_p=m), s))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("t", [0.1, 0.7, 1.0, 2.5])
def test_temperature_matches_transformers(seed, t):
    s = _logits(seed)
    _same(apply_temperature(s, t), _oracle(lp.TemperatureLogitsWarper(temperature=t), s))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.1, 1.3, 3.0])
def test_repetition_penalty_matches_transformers(seed, penalty):
    s = _logits(seed)
    ids = [int(i) for i in np.random.default_rng(100 + seed).integers(0, V, 40)]  # with repeats
    theirs = _oracle(lp.RepetitionPenaltyLogitsProcessor(penalty=penalty), s, ids)
    _same(apply_repetition_penalty(s, ids, penalty), theirs)
    mask = np.zeros(V, dtype=bool)
    mask[ids] = True
    _same(apply_repetition_penalty(s, mask, penalty), theirs)


@pytest.mark.parametrize("seed", range(4))
def test_the_whole_chain_matches_transformers_in_its_order(seed):
    s = _logits(seed)
    ids = [int(i) for i in np.random.default_rng(seed).integers(0, V, 30)]
    opts = SamplingOptions(temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, repetition_penalty=1.2)
    chain = lp.LogitsProcessorList(
        [
            lp.RepetitionPenaltyLogitsProcessor(penalty=1.2),
            lp.TemperatureLogitsWarper(0.8),
            lp.TopKLogitsWarper(40),
            lp.TopPLogitsWarper(0.9),
            lp.MinPLogitsWarper(0.02),
        ]
    )
    mask = np.zeros(V, dtype=bool)
    mask[ids] = True
    _same(process_logits(s, opts, mask), _oracle(chain, s, ids))


def test_greedy_is_the_argmax_of_the_penalised_logits():
    s = _logits(0)
    top = int(np.argmax(s))
    assert Sampler(SamplingOptions(temperature=0), V).choose(s) == top
    penalised = Sampler(SamplingOptions(temperature=0, repetition_penalty=1e6), V, prompt=[top])
    others = s.copy()
    others[top] = -np.inf
    assert penalised.choose(s) == int(np.argmax(others))


def test_the_seed_makes_sampling_reproducible_and_follows_the_distribution():
    s = _logits(1, scale=1.0)
    opts = SamplingOptions(temperature=1.0, seed=7)
    a = [Sampler(opts, V).choose(s) for _ in range(3)]
    assert len(set(a)) == 1
    one = Sampler(opts, V)
    draws = np.array([one.choose(s) for _ in range(20_000)])
    p = np.exp(s - s.max())
    p /= p.sum()
    freq = np.bincount(draws, minlength=V) / draws.size
    # the 5 most likely tokens: observed frequency within 5 standard errors of the probability
    for t in np.argsort(p)[-5:]:
        assert abs(freq[t] - p[t]) < 5 * math.sqrt(p[t] * (1 - p[t]) / draws.size)


def test_sampling_never_picks_a_filtered_token():
    s = _logits(2)
    sampler = Sampler(SamplingOptions(temperature=1.5, top_k=3, seed=1), V)
    allowed = set(np.argsort(s)[-3:].tolist())
    assert {sampler.choose(s) for _ in range(200)} <= allowed


def test_masked_logits_are_never_sampled_and_match_transformers():
    s = _logits(3)
    s[::2] = -np.inf  # e.g. ids a model must not produce
    opts = SamplingOptions(temperature=0.9, top_k=30, top_p=0.9, min_p=0.01, seed=0)
    chain = lp.LogitsProcessorList(
        [
            lp.TemperatureLogitsWarper(0.9),
            lp.TopKLogitsWarper(30),
            lp.TopPLogitsWarper(0.9),
            lp.MinPLogitsWarper(0.01),
        ]
    )
    _same(process_logits(s, opts), _oracle(chain, s))
    sampler = Sampler(opts, V)
    assert all(sampler.choose(s) % 2 == 1 for _ in range(100))
    assert Sampler(opts, V).choose(np.full(V, -np.inf)) == 0  # nothing finite: the argmax, not a crash
    nan = s.copy()
    nan[0] = np.nan
    best = int(np.nanargmax(nan))
    assert Sampler(SamplingOptions(temperature=0), V).choose(nan) == best  # NaN is never the argmax
    assert Sampler(SamplingOptions(temperature=0, repetition_penalty=1.5), V).choose(nan) == best
    assert Sampler(opts, V).choose(nan) != 0


@pytest.mark.parametrize(
    "kw, option",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 2.0}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": 10**400}, "temperature"),
        ({"temperature": "1"}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"min_p": 2}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": math.inf}, "repetition_penalty"),
        ({"stop": [""]}, "stop"),
        ({"stop": [1]}, "stop"),
        ({"stop": 3}, "stop"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_options_are_errors_naming_the_option(kw, option):
    with pytest.raises(OptionError) as info:
        SamplingOptions(**kw)
    assert isinstance(info.value, LLMError)
    assert info.value.option == option and str(info.value).startswith(option + " must")
    assert info.value.for_flag().startswith("--" + option.replace("_", "-") + " must")


def test_options_normalise_and_update():
    o = SamplingOptions(stop="END", temperature=1, top_k=np.int64(3))
    assert o.stop == ("END",) and isinstance(o.temperature, float) and type(o.top_k) is int
    assert SamplingOptions(stop=["a", "b"]).stop == ("a", "b")
    assert o.updated(top_k=5).top_k == 5
    with pytest.raises(OptionError, match="not a sampling option"):
        o.updated(top_q=1)
    with pytest.raises(OptionError, match="top_p"):
        o.updated(top_p=2)


# ---------------------------------------------------------------------------------------------
# stop strings


def _run(stops, pieces):
    m = StopMatcher(stops)
    shown, stopped = [], False
    for piece in pieces:
        out, stopped = m.feed(piece)
        shown.append(out)
        if stopped:
            break
    if not stopped:
        shown.append(m.flush())
    return shown, stopped


def test_a_stop_string_split_across_pieces_is_never_shown():
    shown, stopped = _run(["</end>"], ["Hello <", "/e", "nd> more"])
    assert stopped and "".join(shown) == "Hello "
    assert shown == ["Hello ", "", ""]  # "<" and "</e" held until resolved


def test_held_text_that_turns_out_not_to_stop_is_released():
    shown, stopped = _run(["</end>"], ["a <", "/x", "y"])
    assert not stopped and "".join(shown) == "a </xy"
    assert shown[0] == "a "


def test_the_earliest_of_several_stop_strings_wins():
    shown, stopped = _run(["world", "lo w"], ["hello world"])
    assert stopped and "".join(shown) == "hel"


@pytest.mark.parametrize("seed", range(30))
def test_stop_matching_equals_find_on_the_whole_text(seed):
    rng = np.random.default_rng(seed)
    alphabet = "ab c"
    text = "".join(rng.choice(list(alphabet), 60))
    stops = ["".join(rng.choice(list(alphabet), int(rng.integers(1, 4)))) for _ in range(2)]
    cuts = sorted(rng.choice(np.arange(1, 60), 10, replace=False).tolist())
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, 60])]
    shown, stopped = _run(stops, pieces)
    hits = [text.find(s) for s in stops if s in text]
    expected = text[: min(hits)] if hits else text
    assert "".join(shown) == expected and stopped == bool(hits)


@pytest.mark.parametrize("temperature", [1e-320, 5e-324, 1e-310])
def test_a_temperature_so_small_that_logits_overflow_samples_the_argmax(temperature):
    """Found by the serve fuzz target: logits / 1e-320 overflow to inf and the draw ran on NaNs
    (a token that was not the best); the limit of T -> 0+ is the argmax."""
    import warnings

    rng = np.random.default_rng(3)
    for top_k in (0, 5):
        s = rng.standard_normal(64) * 3
        s[7] = -np.inf
        opts = SamplingOptions(temperature=temperature, top_k=top_k, seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            assert Sampler(opts, 64).choose(s) == int(np.argmax(s))


def test_a_logit_of_plus_infinity_is_the_draw_not_dropped():
    """Found by the serve fuzz target: repetition_penalty 1e-320 divides a seen token's positive logit
    to +inf, which the sampler dropped as non-finite (the penalty's opposite); +inf outweighs every
    finite logit, so it is the token drawn."""
    import warnings

    s = np.linspace(-1, 1, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        opts = SamplingOptions(temperature=1.0, repetition_penalty=1e-320, seed=0)
        assert all(Sampler(opts.updated(seed=i), 32, prompt=[5, 20]).choose(s) == 20 for i in range(20))
        s2 = s.copy()
        s2[3] = np.inf
        assert Sampler(SamplingOptions(temperature=0.8, top_p=0.5, seed=1), 32).choose(s2) == 3
