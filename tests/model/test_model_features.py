"""The config options of imported families (qkv_bias, qk_norm, sliding_window): validation, parameter
names, initial values, the reference model's decode path against its full forward, and `anekit
train` refusing them before any work. (The numerics against transformers: tests/llm/test_source.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from anekit.model import ModelConfig
from anekit.model.config import ConfigError
from anekit.model.reference import decode_step, forward, init_params, new_cache

BASE = dict(name="m", dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40, seq_len=16)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"qkv_bias": 1}, "qkv_bias must be true or false, got 1"),
        ({"qk_norm": "yes"}, "qk_norm must be true or false, got 'yes'"),
        ({"sliding_window": 0}, r"sliding_window must be an integer in \[1, "),
        ({"sliding_window": 4.0}, "sliding_window must be an integer, got 4.0"),
        ({"sliding_window": True}, "sliding_window must be an integer, got True"),
    ],
)
def test_new_fields_are_checked(change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**(BASE | change))


def test_new_fields_from_a_file(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text("dim = 32\nhidden_dim = 48\nn_layers = 2\nn_heads = 4\nn_kv_heads = 2\nvocab_size = 40\n"
                 "seq_len = 16\nqk_norm = true\nsliding_window = 8\n")  # fmt: skip
    cfg = ModelConfig.from_file(p)
    assert cfg.qk_norm and not cfg.qkv_bias and cfg.sliding_window == 8
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    p.write_text(p.read_text() + "qkv_bias = 3\n")
    with pytest.raises(ConfigError, match=r"m.toml: qkv_bias must be true or false"):
        ModelConfig.from_file(p)


def test_param_shapes_and_init():
    cfg = ModelConfig(**(BASE | {"qkv_bias": True, "qk_norm": True, "head_dim": 6}))
    shapes = cfg.param_shapes()
    assert shapes["layers.1.bq"] == (24,) and shapes["layers.1.bk"] == shapes["layers.1.bv"] == (12,)
    assert shapes["layers.0.q_norm"] == shapes["layers.0.k_norm"] == (6,)
    plain = ModelConfig(**BASE).param_shapes()
    assert not any(k.endswith(("bq", "bk", "bv", "q_norm", "k_norm")) for k in plain)
    assert cfg.n_params() - ModelConfig(**(BASE | {"head_dim": 6})).n_params() == 2 * (24 + 12 + 12 + 6 + 6)
    for scheme in ("dynamic", "normal"):
        p = init_params(cfg, 0, scheme)
        assert list(p) == list(shapes)
        assert not p["layers.0.bq"].any() and not p["layers.1.bv"].any()
        assert (p["layers.0.q_norm"] == 1).all() and (p["layers.1.k_norm"] == 1).all()


def _random_params(cfg, seed=0):
    rng = np.random.default_rng(seed)
    params = init_params(cfg, seed)
    for name in params:  # make biases and norms matter
        if name.endswith(("bq", "bk", "bv")):
            params[name] = rng.normal(0, 0.5, params[name].shape)
        elif name.endswith(("q_norm", "k_norm")):
            params[name] = rng.uniform(0.5, 1.5, params[name].shape)
    return params


@pytest.mark.parametrize(
    "change",
    [{"qkv_bias": True}, {"qk_norm": True}, {"sliding_window": 3}, {"qkv_bias": True, "qk_norm": True}],
)
def test_decode_steps_equal_the_full_forward(change):
    cfg = ModelConfig(**(BASE | change))
    params = _random_params(cfg)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, 12)
    full = forward(params, cfg, tokens)
    cache = new_cache(cfg)
    steps = np.stack([decode_step(params, cfg, t, cache)[0] for t in tokens])
    np.testing.assert_allclose(steps, full, rtol=1e-10, atol=1e-10)


def test_sliding_window_masks_exactly_the_old_keys():
    cfg = ModelConfig(**BASE)
    params = _random_params(cfg)
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, 10)
    full = forward(params, cfg, tokens)
    # a window at least the sequence length changes nothing
    np.testing.assert_array_equal(
        forward(params, ModelConfig(**(BASE | {"sliding_window": 10})), tokens), full
    )
    # with one layer and window W, the logits at position p depend only on tokens p-W+1 .. p
    one = ModelConfig(**(BASE | {"n_layers": 1, "sliding_window": 3}))
    p1 = init_params(one, 3)
    a = forward(p1, one, tokens)
    changed = tokens.copy()
    changed[2] = (changed[2] + 1) % one.vocab_size
    b = forward(p1, one, changed)
    same = [p for p in range(10) if not np.allclose(a[p], b[p])]
    assert same == [2, 3, 4]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"qkv_bias": True}, "uses qkv_bias, which anekit train does not implement"),
        ({"qk_norm": True}, "uses qk_norm, which anekit train does not implement"),
        ({"sliding_window": 8}, r"uses sliding_window 8 \(< seq_len 16\)"),
    ],
)
def test_train_refuses_them_before_any_work(tmp_path, monkeypatch, change, message):
    import anekit.train.data as data_mod
    from anekit.train.loop import Trainer
    from anekit.train.options import TrainOptions

    monkeypatch.setattr(data_mod, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({k: v for k, v in BASE.items() if k != "name"} | {"vocab_size": 512} | change))
    with pytest.raises(ConfigError, match=message):
        Trainer(TrainOptions(config_file=cfg, out=tmp_path / "run", backend="reference"))
    assert not (tmp_path / "run").exists()


def test_train_accepts_a_window_that_covers_the_sequence(tmp_path):
    from anekit.train.loop import _check_trainable

    _check_trainable(ModelConfig(**(BASE | {"sliding_window": 16})))
