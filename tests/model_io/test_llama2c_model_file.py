"""llama2.c legacy model files (ane-private-api.md §5.1): header, array order, classifier, round trips."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from anekit.model.config import ModelConfig
from anekit.model.io import ModelFileError, load_llama2c, load_pretrained, save_llama2c


def _cfg(**kw):
    base = dict(
        name="m", dim=12, hidden_dim=20, n_layers=2, n_heads=3, n_kv_heads=1, vocab_size=17, seq_len=6
    )
    return ModelConfig(**(base | kw))


def _params(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in cfg.param_shapes().items()}


@pytest.mark.parametrize("tied", [True, False])
def test_export_import_export_is_byte_exact(tmp_path, tied):
    cfg = _cfg(tie_embeddings=tied)
    params = _params(cfg)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    save_llama2c(a, cfg, params)
    cfg2, params2 = load_llama2c(a)
    assert cfg2 == cfg.__class__(**(cfg.to_dict() | {"name": "a"}))
    assert list(params2) == list(cfg.param_shapes())
    assert all(np.array_equal(params2[k], params[k]) for k in params)
    save_llama2c(b, cfg2, params2)
    assert a.read_bytes() == b.read_bytes()


def test_file_layout_matches_the_documented_order(tmp_path):
    cfg = _cfg(tie_embeddings=False)
    p = _params(cfg)
    save_llama2c(tmp_path / "m.bin", cfg, p)
    raw = (tmp_path / "m.bin").read_bytes()
    # header: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (negative: untied), seq_len
    assert struct.unpack_from("<7i", raw) == (12, 20, 2, 3, 1, -17, 6)
    f = np.frombuffer(raw, "<f4", offset=28)
    L = cfg.n_layers
    order = ["embed"]
    for field in ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"):
        order += [f"layers.{i}.{field}" for i in range(L)]
    order += ["final_norm"]
    pos = 0
    for name in order:
        n = p[name].size
        assert np.array_equal(f[pos : pos + n].reshape(p[name].shape), p[name]), name
        pos += n
    # legacy RoPE tables: cos, sin of pos * 10000^(-2i/hd), [seq_len, head_dim/2] each
    hd = cfg.head_dim
    ang = np.outer(np.arange(6), 10000.0 ** (-np.arange(0, hd, 2) / hd))
    assert np.allclose(f[pos : pos + ang.size], np.cos(ang).ravel(), atol=1e-7)
    pos += 2 * ang.size
    assert np.array_equal(f[pos:].reshape(17, 12), p["lm_head"])


def test_stories15m_shaped_header_infers_the_config(tmp_path):
    # the stories15M.bin header; 60,816,028 bytes is that file's published size, which only adds up
    # with the two legacy RoPE tables (so the body is written here without materialising 60 MB twice)
    header = struct.pack("<7i", 288, 768, 6, 6, 6, 32000, 256)
    path = tmp_path / "stories15M.bin"
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(60_816_028)
    cfg, params = load_llama2c(path)
    assert (cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads) == (288, 768, 6, 6, 6)
    assert (cfg.vocab_size, cfg.seq_len, cfg.tie_embeddings, cfg.name) == (32000, 256, True, "stories15M")
    assert (cfg.rope_theta, cfg.norm_eps) == (10000.0, 1e-5)
    assert params["embed"].shape == (32000, 288) and "lm_head" not in params


def test_file_without_the_legacy_tables_is_accepted(tmp_path):
    cfg = _cfg()
    params = _params(cfg)
    save_llama2c(tmp_path / "m.bin", cfg, params)
    raw = (tmp_path / "m.bin").read_bytes()
    tables = 4 * cfg.seq_len * cfg.head_dim
    (tmp_path / "short.bin").write_bytes(raw[: len(raw) - tables])
    _, p2 = load_llama2c(tmp_path / "short.bin")
    assert all(np.array_equal(p2[k], params[k]) for k in params)


def test_errors(tmp_path):
    cfg = _cfg()
    save_llama2c(tmp_path / "m.bin", cfg, _params(cfg))
    raw = (tmp_path / "m.bin").read_bytes()
    (tmp_path / "trunc.bin").write_bytes(raw[:-4])
    with pytest.raises(ModelFileError, match="does not match its header"):
        load_llama2c(tmp_path / "trunc.bin")
    (tmp_path / "tiny.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelFileError, match="too short"):
        load_llama2c(tmp_path / "tiny.bin")
    (tmp_path / "v1.bin").write_bytes(struct.pack("<Ii", 0x616B3432, 1) + b"\x00" * 248)
    with pytest.raises(ModelFileError, match="versioned llama2.c export"):
        load_llama2c(tmp_path / "v1.bin")
    (tmp_path / "bad.bin").write_bytes(struct.pack("<7i", 12, 20, 2, 5, 1, 17, 6))
    with pytest.raises(ModelFileError, match="not a valid llama2.c model header"):
        load_llama2c(tmp_path / "bad.bin")
    with pytest.raises(ModelFileError, match="head_dim = dim / n_heads"):
        c = _cfg(head_dim=8)
        save_llama2c(tmp_path / "x.bin", c, _params(c))
    with pytest.raises(ModelFileError, match="cannot record rope_theta"):
        c = _cfg(rope_theta=5e5)
        save_llama2c(tmp_path / "x.bin", c, _params(c))
    with pytest.raises(ModelFileError, match="missing tensor layers.1.w3"):
        save_llama2c(tmp_path / "x.bin", cfg, {k: v for k, v in _params(cfg).items() if k != "layers.1.w3"})


def test_load_pretrained_dispatches(tmp_path):
    cfg = _cfg()
    save_llama2c(tmp_path / "m.bin", cfg, _params(cfg))
    assert load_pretrained(tmp_path / "m.bin")[0].dim == 12
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "state.json").write_text("{}")
    with pytest.raises(ModelFileError, match="anekit checkpoint"):
        load_pretrained(tmp_path / "ck")
    with pytest.raises(ModelFileError, match="no such model"):
        load_pretrained(tmp_path / "nope.bin")
