"""`Decoder` on the Neural Engine (`backend="ane"`) against the same decoder on the reference backend,
which emulates the engine's numerics (fp16 storage, fp32 accumulation, ane-private-api.md §10.4).

Needs a Mac with the engine: deselected elsewhere by the `requires_ane` marker (tests/conftest.py);
run with `python -m pytest -m requires_ane tests/llm/test_decoder_ane.py -ra`. Written without access
to hardware: none of these has run yet.

Tolerance: the engine and the emulation may round differently inside an op (accumulation order, the
transcendental tables of `exp`/`sigmoid`/`pow`), so logits must agree to `TOL = 2e-2 x max(1, max
|logit| of the row)`, twice the reference-vs-float64 tolerance of test_decoder.py, and the greedy
tokens must agree wherever the reference's top-1 margin exceeds twice that.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_decoder import params_for  # the same random weights as the reference-backend tests

from anekit.llm.decoder import Decoder
from anekit.llm.plan import DecoderPlan
from anekit.model import ModelConfig

pytestmark = pytest.mark.requires_ane

TOL = 2e-2


def tiny(**kw) -> ModelConfig:
    base = dict(
        name="tiny-ane", dim=128, hidden_dim=256, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=300,
        seq_len=128, head_dim=32,
    )  # fmt: skip
    return ModelConfig(**(base | kw))


def close(got, want):
    scale = np.maximum(1.0, np.abs(want).max(axis=-1, keepdims=True))
    err = np.abs(np.atleast_2d(got) - np.atleast_2d(want)) / scale
    assert err.max() <= TOL, f"engine vs reference: max logit error {err.max():.3g} of the row scale"


@pytest.mark.parametrize("quant", ["fp16", "int8", "int4"])
@pytest.mark.parametrize("plan", [DecoderPlan(2, "fp32-host", 160, 64), DecoderPlan(4, "fp16", 300, 32)])
def test_prefill_and_decode_on_the_engine_match_the_reference(quant, plan):
    cfg = tiny()
    p = params_for(cfg)
    prompt = list(np.random.default_rng(1).integers(0, cfg.vocab_size, 70))
    with (
        Decoder(cfg, p, backend="ane", quant=quant, plan=plan, max_len=128) as eng,
        Decoder(cfg, p, backend="reference", quant=quant, plan=plan, max_len=128) as ref,
    ):
        want = ref.prefill(prompt)
        close(eng.prefill(prompt), want)
        token = int(np.argmax(want))
        for _ in range(16):  # greedy, the reference choosing, both fed the same tokens
            want = ref.decode(token)
            got = eng.decode(token)
            close(got, want)
            top2 = np.sort(want)[-2:]
            if top2[1] - top2[0] > 2 * TOL * max(1.0, np.abs(want).max()):
                assert int(np.argmax(got)) == int(np.argmax(want))
            token = int(np.argmax(want))
        assert eng.length == ref.length == len(prompt) + 16


def test_engine_logits_and_programs():
    cfg = tiny(qkv_bias=True)
    p = params_for(cfg, seed=2)
    toks = list(np.random.default_rng(3).integers(0, cfg.vocab_size, 40))
    plan = DecoderPlan(2, "fp32-host", 160, 32)
    with (
        Decoder(cfg, p, backend="ane", plan=plan) as eng,
        Decoder(cfg, p, backend="reference", plan=plan) as ref,
    ):
        assert eng.n_programs == 3  # two groups at width 32 (prefill = decode width) + the classifier
        close(eng.logits(toks), ref.logits(toks))
        eng.truncate(20)
        ref.truncate(20)
        close(eng.decode(int(toks[20])), ref.decode(int(toks[20])))
