"""`anekit.llm.decoder.Decoder` on the reference backend (engine numerics: fp16 storage, fp32
accumulation) against independent oracles: `anekit.model.reference` (float64 NumPy) and, for the tiny
Hugging Face models of `conftest.py`, transformers in float32.

Tolerance (fp16): every logit within `TOL = 1e-2 x max(1, max |logit| of its row)` of the oracle
(measured: at most 3e-3 on these models). Greedy decoding: at every one of 32 steps the decoder's top-1
token equals the oracle's wherever the oracle's top-1 margin exceeds 2 x that tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

from anekit.kernels.quant import quantize
from anekit.llm.decoder import DECODE_WIDTH, Decoder, program_count
from anekit.llm.errors import ContextFull, LLMError
from anekit.llm.plan import DecoderPlan
from anekit.model import ModelConfig
from anekit.model import reference as ref

TOL = 1e-2
STEPS = 32


def tiny(**kw) -> ModelConfig:
    base = dict(
        name="tiny", dim=64, hidden_dim=96, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=97, seq_len=96,
        head_dim=16,
    )  # fmt: skip
    return ModelConfig(**(base | kw))


def params_for(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights wide enough that logits are far from uniform (so top-1 margins are meaningful),
    random norms and biases (so a misplaced vector shows)."""
    rng = np.random.default_rng(seed)
    p = {}
    for name, shape in cfg.param_shapes().items():
        kind = name.rsplit(".", 1)[-1]
        if kind.endswith("norm"):
            p[name] = rng.uniform(0.5, 1.5, shape)
        elif kind in ("bq", "bk", "bv"):
            p[name] = rng.standard_normal(shape) * 0.3
        elif kind in ("embed", "lm_head"):
            p[name] = rng.standard_normal(shape)
        else:
            p[name] = rng.standard_normal(shape) / np.sqrt(shape[1])
    return {k: v.astype(np.float32) for k, v in p.items()}


def check_logits(got, want):
    got, want = np.atleast_2d(got), np.atleast_2d(np.asarray(want, np.float64))
    assert got.shape == want.shape and got.dtype == np.float32
    scale = np.maximum(1.0, np.abs(want).max(axis=-1, keepdims=True))
    err = np.abs(got - want) / scale
    assert err.max() <= TOL, f"max logit error {err.max():.3g} of the row scale (tolerance {TOL})"
    return err.max()


def check_greedy(dec: Decoder, oracle_logits, prompt) -> int:
    """Greedy-decode STEPS tokens after `prompt`; at each step compare with `oracle_logits(prefix)`
    (the oracle's last-position logits on the decoder's own prefix). Returns the steps compared."""
    seq = list(prompt)
    logits = dec.prefill(prompt)
    compared = 0
    for _ in range(STEPS):
        want = np.asarray(oracle_logits(seq), np.float64)
        check_logits(logits, want)
        top2 = np.sort(want)[-2:]
        if top2[1] - top2[0] > 2 * TOL * max(1.0, np.abs(want).max()):
            assert int(np.argmax(logits)) == int(np.argmax(want))
            compared += 1
        seq.append(int(np.argmax(logits)))
        logits = dec.decode(seq[-1])
    return compared


PLANS = {
    "1-layer-fp32host-chunk32": DecoderPlan(1, "fp32-host", 40, 32),
    "2-layers-fp16-chunk64": DecoderPlan(2, "fp16", 97, 64),
    "3-layers-fp32host-chunk64": DecoderPlan(3, "fp32-host", 64, 50),
}


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_logits_prefill_and_decode_match_float64_reference(plan):
    cfg = tiny()
    p = params_for(cfg)
    toks = np.random.default_rng(1).integers(0, cfg.vocab_size, 45)
    want = ref.forward(p, cfg, toks)
    with Decoder(cfg, p, backend="reference", plan=PLANS[plan], max_len=80) as dec:
        assert dec.n_programs == program_count(cfg, PLANS[plan], 80, decode_width=1)
        check_logits(dec.logits(toks), want)
        assert dec.length == 45
        dec.reset()
        check_logits(dec.prefill(toks[:37]), want[36])
        cache = ref.new_cache(cfg, max_len=80)
        for t in toks[:37]:
            ref.decode_step(p, cfg, [int(t)], cache)
        for t in toks[37:45]:
            step = ref.decode_step(p, cfg, [int(t)], cache)[0]
            check_logits(dec.decode(int(t)), step)
        assert dec.length == 45


@pytest.mark.parametrize(
    "features",
    [
        dict(qkv_bias=True),
        dict(qk_norm=True, head_dim=24),
        dict(sliding_window=7),
        dict(tie_embeddings=False),
    ],
    ids=["qwen2-bias", "qwen3-qknorm", "mistral-window", "untied"],
)
def test_model_features_match_float64_reference(features):
    cfg = tiny(**features)
    p = params_for(cfg, seed=2)
    toks = np.random.default_rng(3).integers(0, cfg.vocab_size, 40)
    with Decoder(cfg, p, backend="reference", plan=DecoderPlan(2, "fp32-host", 64, 32), max_len=64) as dec:
        check_logits(dec.logits(toks), ref.forward(p, cfg, toks))
        dec.truncate(30)
        check_logits(dec.decode(int(toks[30])), ref.forward(p, cfg, toks[:31])[-1])


def test_greedy_32_tokens_match_float64_reference():
    cfg = tiny(seq_len=64)
    p = params_for(cfg, seed=4)
    with Decoder(cfg, p, backend="reference", plan=DecoderPlan(2, "fp32-host", 64, 32)) as dec:
        compared = check_greedy(dec, lambda seq: ref.forward(p, cfg, seq)[-1], [1, 5, 9, 2, 7])
    assert compared >= STEPS // 2  # most steps are decisive, so the check means something


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_decoder_matches_reference_with_dequantized_weights(quant):
    """int8 / int4 logits equal the float64 model run with the dequantized weights (fp16 tolerance);
    against the fp16 weights they differ by the quantization error (reported, bounded loosely). An
    untied head, so the embedding lookup (exact, on the host) and the classifier (baked, quantized)
    are different tensors, as the oracle needs."""
    cfg = tiny(tie_embeddings=False)
    p = params_for(cfg, seed=5)
    deq = {k: (quantize(v, quant).dequantize() if v.ndim == 2 and k != "embed" else v) for k, v in p.items()}
    toks = np.random.default_rng(6).integers(0, cfg.vocab_size, 30)
    with Decoder(cfg, p, backend="reference", quant=quant, plan=DecoderPlan(3, "fp32-host", 97, 32)) as dec:
        got = dec.logits(toks)
    check_logits(got, ref.forward(deq, cfg, toks))
    exact = ref.forward(p, cfg, toks)
    rel = np.abs(got - exact).max() / np.abs(exact).max()
    print(f"{quant}: max logit error vs the fp16-weight model {rel:.4f} of the largest logit")
    assert rel < (0.05 if quant == "int8" else 0.3), rel


def test_cache_stays_in_the_binding_and_is_written_in_place():
    cfg = tiny()
    p = params_for(cfg)
    with Decoder(cfg, p, backend="reference", plan=DecoderPlan(3, "fp16", 97, 32), max_len=64) as dec:
        assert dec.decode_width == 1 and dec.prefill_width == DECODE_WIDTH and dec.n_programs == 3
        binding = dec._groups[0].bindings[DECODE_WIDTH]
        buf = binding._staged["x"]
        dec.prefill([3, 4, 5])
        dec.decode(6)
        assert binding._staged["x"] is buf  # the same array: rows written in place, never replaced
        assert dec._groups[0].bindings[1]._staged["x"] is not buf  # the decode program's own cache
        prog = dec._groups[0].programs[DECODE_WIDTH]
        k0 = prog.input_layout["k0"]
        cached = buf[0, k0.channels[0] : k0.channels[1], 0, k0.columns[0] : k0.columns[0] + 4]
        assert np.all(np.any(cached != 0, axis=0))  # the 4 tokens' keys are there
        assert not np.any(buf[0, k0.channels[0] : k0.channels[1], 0, k0.columns[0] + 4 :])


def test_context_full_and_errors():
    cfg = tiny()
    p = params_for(cfg)
    with Decoder(cfg, p, backend="reference", plan=DecoderPlan(3, "fp16", 97, 32), max_len=10) as dec:
        dec.prefill(list(range(9)))
        dec.decode(1)
        assert dec.length == 10
        with pytest.raises(ContextFull, match="context of 10"):
            dec.decode(2)
        with pytest.raises(ContextFull):
            dec.prefill([1, 2])
        with pytest.raises(LLMError, match="outside the vocabulary"):
            dec.logits([1, 97])
        with pytest.raises(LLMError, match="non-empty"):
            dec.prefill([])
        with pytest.raises(LLMError, match="truncate"):
            dec.truncate(11)
        dec.truncate(3)
        assert dec.length == 3
    with pytest.raises(LLMError, match="closed"):
        dec.decode(1)
    with pytest.raises(LLMError, match="not supported"):
        Decoder(cfg, p, backend="reference", quant="int2")
    with pytest.raises(LLMError, match="max_len"):
        Decoder(cfg, p, backend="reference", max_len=0)


# -- the tiny Hugging Face models of conftest.py, against transformers float32 ------------------


def _hf_oracle(tiny_model):
    import torch

    def logits(seq):
        with torch.no_grad():
            return tiny_model.model(torch.tensor([list(seq)])).logits[0].double().numpy()

    return logits


@pytest.mark.parametrize("arch", ["llama3", "llama_tied", "qwen2", "qwen3", "mistral", "llama3_bf16"])
def test_hf_models_match_transformers(tiny_hf, arch):
    from anekit.model.io import open_hf

    t = tiny_hf(arch)
    cfg, weights = open_hf(t.directory)
    oracle = _hf_oracle(t)
    prompt = [1, 17, 40, 99, 3, 250, 8, 61, 12, 5, 77, 300, 21, 9]
    plan = DecoderPlan(2, "fp32-host", 128, 32)
    with Decoder(cfg, weights, backend="reference", plan=plan, max_len=64) as dec:
        check_logits(dec.logits(prompt), oracle(prompt))
        dec.reset()
        compared = check_greedy(dec, lambda seq: oracle(seq)[-1], prompt)
    assert compared >= STEPS // 2


# -- the ane backend's runtime, off a Mac: the stand-in bridge of tests/ane (NumPy underneath) ----


@pytest.fixture
def fake_engine(tmp_path, monkeypatch):
    """`Decoder` programs compiled by the ane runtime (`AneKernel`, `AneBinding` with IOSurface-like
    buffers) on the stand-in bridge, which evaluates with the reference backend."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "ane"))
    try:
        from ane_fake_bridge import FakeBridge, Report
    finally:
        sys.path.pop(0)
    from anekit.backends.ane import runtime

    bridge = FakeBridge(tmp_path, report=Report())
    monkeypatch.setattr(runtime, "_bridge", lambda: bridge)
    monkeypatch.setattr(runtime, "CACHE", runtime.ModelCache())
    monkeypatch.setattr(runtime, "COMPILES", runtime.CompileCounter())
    monkeypatch.setattr(Decoder, "_compile", lambda self, program: runtime.compile_model(program))
    return bridge


def test_decoder_on_the_ane_runtime_writes_the_cache_into_the_surface(fake_engine):
    """The engine path's bookkeeping: AneBinding.write_slice writes the new K/V rows straight into the
    bound input surface, and the results equal the reference backend's (same numerics underneath)."""
    from anekit.backends.ane.runtime import AneBinding

    cfg = tiny()
    p = params_for(cfg, seed=7)
    toks = [int(t) for t in np.random.default_rng(8).integers(0, cfg.vocab_size, 76)]
    plan = DecoderPlan(2, "fp32-host", 64, 64)
    with Decoder(cfg, p, backend="ane", plan=plan, max_len=96) as eng:
        binding = eng._groups[0].bindings[DECODE_WIDTH]
        assert isinstance(binding, AneBinding)
        surface = binding._surfaces[0]
        # 70 prompt tokens: 64 in the prefill program, the last 6 in the 32-wide decode program
        got = [eng.prefill(toks[:70])] + [eng.decode(t) for t in toks[70:]]
        assert binding._surfaces[0] is surface  # the same surface throughout
        assert len(fake_engine.models) == eng.n_programs == 2 * 2 + 1
    with Decoder(cfg, p, backend="reference", plan=plan, max_len=96, decode_width=DECODE_WIDTH) as ref_dec:
        want = [ref_dec.prefill(toks[:70])] + [ref_dec.decode(t) for t in toks[70:]]
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    seq = np.asarray(toks)
    check_logits(np.stack(got), ref.forward(p, cfg, seq)[69:])


def test_limits_are_llm_errors():
    """Shapes past the engine's limits and unquantizable widths are refused as LLMError, by name."""
    cfg = tiny(dim=48, hidden_dim=80, n_heads=3, n_kv_heads=3)
    p = params_for(cfg)
    with pytest.raises(LLMError, match="int4 weights use blocks of 32"):
        Decoder(cfg, p, backend="reference", quant="int4", max_len=32)
    with pytest.raises(LLMError, match="width limit"):
        Decoder(cfg, p, backend="reference", max_len=20000, plan=DecoderPlan(3, "fp16", 97, 32))
    long = tiny(seq_len=100_000)
    assert program_count(long, DecoderPlan(3, "fp16", 97, 32)) == 2


def test_weights_read_one_layer_at_a_time():
    """The decoder reads the (lazy) mapping layer by layer while it builds each program: all of layer
    i's tensors before any of layer i+1's, never a tensor of a layer outside the program being built."""
    from collections.abc import Mapping

    cfg = tiny(n_layers=4)
    p = params_for(cfg)
    reads: list[str] = []

    class Lazy(Mapping):
        def __getitem__(self, name):
            reads.append(name)
            return p[name]

        def __iter__(self):
            return iter(p)

        def __len__(self):
            return len(p)

    with Decoder(cfg, Lazy(), backend="reference", plan=DecoderPlan(2, "fp16", 97, 32)):
        pass
    layers = [int(n.split(".")[1]) for n in reads if n.startswith("layers.")]
    # two groups x two programs (widths 1 and 32), each reading its two layers in order
    assert layers == [0] * 9 + [1] * 9 + [0] * 9 + [1] * 9 + [2] * 9 + [3] * 9 + [2] * 9 + [3] * 9
