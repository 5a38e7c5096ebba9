"""The NumPy CPU model: initialisation, forward pass (against the PyTorch model of
test_train_step_torch.py) and KV-cache decoding (against the full forward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train_step_torch import GQA4, one_torch_thread, torch_loss

from anekit.model import ModelConfig, preset
from anekit.model.reference import decode_step, forward, init_params, new_cache
from anekit.train.blas import blas_threads


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with blas_threads(1):  # multi-threaded BLAS on small matrices crawls on a busy 2-core machine
        yield


def test_init_shapes_dtype_and_reproducibility():
    cfg = preset("tiny")
    a = init_params(cfg, 3)
    assert {k: v.shape for k, v in a.items()} == cfg.param_shapes()
    assert all(v.dtype == np.float32 for v in a.values())
    b = init_params(cfg, np.random.default_rng(3))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = init_params(cfg, 4)
    assert not np.array_equal(a["layers.0.wq"], c["layers.0.wq"])
    assert init_params(cfg, 3, dtype=np.float64)["embed"].dtype == np.float64


def test_dynamic_init_bounds():
    cfg = preset("tiny")
    p = init_params(cfg, 0, scheme="dynamic")
    D, H, Q, L = cfg.dim, cfg.hidden_dim, cfg.q_dim, cfg.n_layers
    bounds = {"wq": D**-0.5, "wk": D**-0.5, "wv": D**-0.5, "wo": Q**-0.5 / np.sqrt(2 * L),
              "w1": H**-0.5, "w3": H**-0.5, "w2": D**-0.5 / np.sqrt(2 * L)}  # fmt: skip
    for kind, b in bounds.items():
        w = p[f"layers.1.{kind}"]
        assert np.abs(w).max() <= b and np.abs(w).max() > 0.9 * b, kind
    assert np.abs(p["embed"]).max() <= 0.02
    assert np.all(p["layers.2.attn_norm"] == 1) and np.all(p["final_norm"] == 1)


def test_normal_init_and_untied_head():
    cfg = ModelConfig(
        "u",
        dim=64,
        hidden_dim=128,
        n_layers=2,
        n_heads=2,
        n_kv_heads=1,
        vocab_size=50,
        seq_len=32,
        tie_embeddings=False,
    )
    p = init_params(cfg, 0, scheme="normal")
    assert "lm_head" in p
    assert np.std(p["layers.0.wq"]) == pytest.approx(0.02, rel=0.1)
    assert np.std(p["layers.0.w2"]) == pytest.approx(0.02 / 2, rel=0.1)
    with pytest.raises(ValueError, match="init scheme"):
        init_params(cfg, scheme="xavier")


@pytest.mark.parametrize("cfg", [preset("tiny"), GQA4], ids=["tiny", "gqa4-untied"])
def test_forward_matches_torch(cfg):
    p = init_params(cfg, 1, dtype=np.float64)
    rng = np.random.default_rng(2)
    tok, tgt = (
        rng.integers(0, cfg.vocab_size, (2, cfg.seq_len)),
        rng.integers(0, cfg.vocab_size, (2, cfg.seq_len)),
    )
    logits = forward(p, cfg, tok)
    assert logits.shape == (2, cfg.seq_len, cfg.vocab_size) and logits.dtype == np.float64
    tp = {k: torch.from_numpy(v) for k, v in p.items()}
    with one_torch_thread():
        want = torch_loss(tp, cfg, torch.from_numpy(tok), torch.from_numpy(tgt)).item()
    got = F.cross_entropy(
        torch.from_numpy(logits.reshape(-1, cfg.vocab_size)), torch.from_numpy(tgt.reshape(-1))
    ).item()
    assert got == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(forward(p, cfg, tok[1]), logits[1], rtol=1e-12)


def test_decode_step_matches_forward():
    cfg = GQA4
    p = init_params(cfg, 5)
    rng = np.random.default_rng(6)
    tok = rng.integers(0, cfg.vocab_size, (3, 12))
    full = forward(p, cfg, tok)
    cache = new_cache(cfg, batch=3, max_len=12)
    for i in range(12):
        step = decode_step(p, cfg, tok[:, i], cache)
        np.testing.assert_allclose(step, full[:, i], rtol=1e-9, atol=1e-12)
    assert cache.length == 12
    with pytest.raises(ValueError, match="full"):
        decode_step(p, cfg, tok[:, 0], cache)
    with pytest.raises(ValueError, match="tokens for a cache"):
        decode_step(p, cfg, 1, new_cache(cfg, batch=3))
    one = new_cache(cfg)  # batch 1, an int token
    assert decode_step(p, cfg, int(tok[0, 0]), one).shape == (1, cfg.vocab_size)
