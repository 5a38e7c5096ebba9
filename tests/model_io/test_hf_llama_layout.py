"""Hugging Face Llama export/import: names, shapes, config.json, exact round trip, and an independent
check of the q/k row permutation: two float64 forwards written here — interleaved-pair RoPE on anekit
weights, rotate-half RoPE on the exported HF weights — must give the same logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anekit.model.config import ModelConfig
from anekit.model.io import (
    ModelFileError,
    half_to_interleaved,
    hf_name,
    interleaved_to_half,
    load_hf,
    load_pretrained,
    read_safetensors,
    save_hf,
)

GQA = ModelConfig(
    "gqa", dim=24, hidden_dim=40, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=33, seq_len=16
)
UNTIED = ModelConfig(
    "untied",
    dim=16,
    hidden_dim=24,
    n_layers=2,
    n_heads=2,
    n_kv_heads=2,
    vocab_size=29,
    seq_len=16,
    head_dim=12,
    rope_theta=500.0,
    norm_eps=1e-6,
    tie_embeddings=False,
)
TOKENS = [1, 5, 9, 2, 17, 3, 11, 8, 0, 13]


def _params(cfg, seed=0):
    rng = np.random.default_rng(seed)
    p = {k: (0.3 * rng.standard_normal(s)).astype(np.float32) for k, s in cfg.param_shapes().items()}
    for k in p:
        if k.endswith("norm"):
            p[k] = (1 + 0.1 * rng.standard_normal(p[k].shape)).astype(np.float32)
    return p


# ------------------------------------------------------------------------------------------------
# two independent reference forwards (float64)


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _attend(q, k, v, n_heads, n_kv):
    T, _, hd = q.shape
    out = np.zeros_like(q)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for h in range(n_heads):
        kv = h // (n_heads // n_kv)
        s = q[:, h] @ k[:, kv].T / np.sqrt(hd) + mask
        pr = np.exp(s - s.max(-1, keepdims=True))
        out[:, h] = (pr / pr.sum(-1, keepdims=True)) @ v[:, kv]
    return out.reshape(T, -1)


def _silu(x):
    return x / (1 + np.exp(-x))


def forward_interleaved(cfg: ModelConfig, p: dict, tokens: list[int]) -> np.ndarray:
    """anekit naming, RoPE on pairs (2i, 2i+1) of each head (llama2.c / Meta)."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    T, hd = len(tokens), cfg.head_dim
    ang = np.outer(np.arange(T), cfg.rope_theta ** (-np.arange(0, hd, 2) / hd))[:, None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(t):
        out = np.empty_like(t)
        a, b = t[..., 0::2], t[..., 1::2]
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
        return out

    x = p["embed"][tokens]
    for i in range(cfg.n_layers):
        w = {
            f: p[f"layers.{i}.{f}"]
            for f in ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3")
        }
        h = _rms(x, w["attn_norm"], cfg.norm_eps)
        q = rope((h @ w["wq"].T).reshape(T, cfg.n_heads, hd))
        k = rope((h @ w["wk"].T).reshape(T, cfg.n_kv_heads, hd))
        v = (h @ w["wv"].T).reshape(T, cfg.n_kv_heads, hd)
        x = x + _attend(q, k, v, cfg.n_heads, cfg.n_kv_heads) @ w["wo"].T
        h = _rms(x, w["ffn_norm"], cfg.norm_eps)
        x = x + (_silu(h @ w["w1"].T) * (h @ w["w3"].T)) @ w["w2"].T
    head = p["embed"] if cfg.tie_embeddings else p["lm_head"]
    return _rms(x, p["final_norm"], cfg.norm_eps) @ head.T


def forward_rotate_half(directory, tokens: list[int]) -> np.ndarray:
    """A Hugging Face Llama directory read with plain JSON + safetensors: RoPE on (i, i + hd/2)."""
    from safetensors.numpy import load_file

    c = json.loads((directory / "config.json").read_text())
    t = {k: v.astype(np.float64) for k, v in load_file(str(directory / "model.safetensors")).items()}
    T, hd, eps = len(tokens), c["head_dim"], c["rms_norm_eps"]
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    freqs = np.outer(np.arange(T), c["rope_theta"] ** (-np.arange(0, hd, 2) / hd))
    emb = np.concatenate([freqs, freqs], axis=-1)[:, None, :]
    cos, sin = np.cos(emb), np.sin(emb)

    def rotate_half(u):
        return np.concatenate([-u[..., hd // 2 :], u[..., : hd // 2]], axis=-1)

    x = t["model.embed_tokens.weight"][tokens]
    for i in range(c["num_hidden_layers"]):

        def g(n, i=i):
            return t[f"model.layers.{i}.{n}.weight"]

        h = _rms(x, g("input_layernorm"), eps)
        q = (h @ g("self_attn.q_proj").T).reshape(T, nh, hd)
        k = (h @ g("self_attn.k_proj").T).reshape(T, nkv, hd)
        v = (h @ g("self_attn.v_proj").T).reshape(T, nkv, hd)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        x = x + _attend(q, k, v, nh, nkv) @ g("self_attn.o_proj").T
        h = _rms(x, g("post_attention_layernorm"), eps)
        x = x + (_silu(h @ g("mlp.gate_proj").T) * (h @ g("mlp.up_proj").T)) @ g("mlp.down_proj").T
    head = t["model.embed_tokens.weight"] if c["tie_word_embeddings"] else t["lm_head.weight"]
    return _rms(x, t["model.norm.weight"], eps) @ head.T


# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [GQA, UNTIED], ids=["gqa-tied", "untied-headdim"])
def test_rotate_half_forward_on_export_equals_interleaved_forward_on_original(tmp_path, cfg):
    params = _params(cfg)
    save_hf(tmp_path, cfg, params)
    ref = forward_interleaved(cfg, params, TOKENS)
    got = forward_rotate_half(tmp_path, TOKENS)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    # and the test is sensitive: without the permutation the logits differ
    (tmp_path / "raw").mkdir()
    unpermuted = {
        k: (
            half_to_interleaved(v, cfg.n_heads if "wq" in k else cfg.n_kv_heads, cfg.head_dim)
            if k.split(".")[-1] in ("wq", "wk")
            else v
        )
        for k, v in params.items()
    }
    save_hf(tmp_path / "raw", cfg, unpermuted)  # export of "interleave-permuted" weights == raw rows
    assert not np.allclose(forward_rotate_half(tmp_path / "raw", TOKENS), ref, atol=1e-3)


@pytest.mark.parametrize("cfg", [GQA, UNTIED], ids=["gqa-tied", "untied-headdim"])
def test_export_then_import_is_exact(tmp_path, cfg):
    params = _params(cfg)
    save_hf(tmp_path, cfg, params)
    cfg2, params2 = load_hf(tmp_path)
    assert cfg2 == cfg
    assert list(params2) == list(cfg.param_shapes())
    assert all(np.array_equal(params2[k], params[k]) for k in params)
    assert load_pretrained(tmp_path)[0] == cfg and load_pretrained(tmp_path / "model.safetensors")[0] == cfg


def test_names_shapes_and_config_json(tmp_path):
    params = _params(UNTIED)
    save_hf(tmp_path, UNTIED, params)
    tensors = read_safetensors(tmp_path / "model.safetensors")
    L = UNTIED.n_layers
    expected = {"model.embed_tokens.weight": (29, 16), "model.norm.weight": (16,), "lm_head.weight": (29, 16)}
    for i in range(L):
        pre = f"model.layers.{i}."
        expected |= {
            pre + "self_attn.q_proj.weight": (24, 16),
            pre + "self_attn.k_proj.weight": (24, 16),
            pre + "self_attn.v_proj.weight": (24, 16),
            pre + "self_attn.o_proj.weight": (16, 24),
            pre + "mlp.gate_proj.weight": (24, 16),
            pre + "mlp.up_proj.weight": (24, 16),
            pre + "mlp.down_proj.weight": (16, 24),
            pre + "input_layernorm.weight": (16,),
            pre + "post_attention_layernorm.weight": (16,),
        }
    assert {k: v.shape for k, v in tensors.items()} == expected
    assert np.array_equal(tensors["model.layers.1.mlp.gate_proj.weight"], params["layers.1.w1"])
    assert np.array_equal(tensors["model.layers.1.mlp.up_proj.weight"], params["layers.1.w3"])
    assert np.array_equal(tensors["model.layers.1.mlp.down_proj.weight"], params["layers.1.w2"])
    assert hf_name("layers.3.ffn_norm") == "model.layers.3.post_attention_layernorm.weight"

    c = json.loads((tmp_path / "config.json").read_text())
    assert c["architectures"] == ["LlamaForCausalLM"] and c["model_type"] == "llama"
    assert {
        k: c[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    } == {
        "hidden_size": 16,
        "intermediate_size": 24,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    assert (c["num_key_value_heads"], c["head_dim"], c["vocab_size"], c["max_position_embeddings"]) == (
        2,
        12,
        29,
        16,
    )
    assert (c["rms_norm_eps"], c["rope_theta"], c["tie_word_embeddings"], c["torch_dtype"]) == (
        1e-6,
        500.0,
        False,
        "float32",
    )

    save_hf(tmp_path / "tied", GQA, _params(GQA))
    assert "lm_head.weight" not in read_safetensors(tmp_path / "tied" / "model.safetensors")


def test_permutation_is_per_head_even_then_odd_rows_and_inverts():
    w = np.arange(2 * 6 * 3).reshape(12, 3)  # 2 heads of head_dim 6, rows numbered
    half = interleaved_to_half(w, 2, 6)
    assert half[:, 0].tolist() == [r * 3 for r in (0, 2, 4, 1, 3, 5, 6, 8, 10, 7, 9, 11)]
    assert np.array_equal(half_to_interleaved(half, 2, 6), w)


def test_import_reads_fp16_bf16_and_sharded_checkpoints(tmp_path):
    import torch
    from safetensors.torch import save_file as torch_save

    params = _params(GQA)
    save_hf(tmp_path / "h", GQA, params, dtype="float16")
    assert json.loads((tmp_path / "h" / "config.json").read_text())["torch_dtype"] == "float16"
    _, p16 = load_hf(tmp_path / "h")
    assert all(np.array_equal(p16[k], params[k].astype(np.float16).astype(np.float32)) for k in params)

    # bf16, split over two shards with an index, as large HF checkpoints come
    save_hf(tmp_path / "f", GQA, params)
    fp32 = read_safetensors(tmp_path / "f" / "model.safetensors")
    d = tmp_path / "bf"
    d.mkdir()
    (d / "config.json").write_text((tmp_path / "f" / "config.json").read_text())
    names = sorted(fp32)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        torch_save({k: torch.from_numpy(fp32[k]).to(torch.bfloat16) for k in keys}, str(d / shard))
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: s for s, ks in shards.items() for k in ks}})
    )
    _, pbf = load_hf(d)
    ref = {k: torch.from_numpy(v).to(torch.bfloat16).float().numpy() for k, v in params.items()}
    assert all(np.array_equal(pbf[k], ref[k]) for k in params)


def test_import_errors(tmp_path):
    save_hf(tmp_path, GQA, _params(GQA))
    cfg = json.loads((tmp_path / "config.json").read_text())
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(tmp_path / "model.safetensors"))
    save_file(
        tensors | {"model.layers.0.self_attn.q_proj.bias": np.zeros(24, np.float32)},
        str(tmp_path / "model.safetensors"),
    )
    with pytest.raises(ModelFileError, match="unexpected tensor model.layers.0.self_attn.q_proj.bias"):
        load_hf(tmp_path)
    save_file(
        {k: v for k, v in tensors.items() if "layers.1.mlp.up_proj" not in k},
        str(tmp_path / "model.safetensors"),
    )
    with pytest.raises(ModelFileError, match="missing tensor model.layers.1.mlp.up_proj.weight"):
        load_hf(tmp_path)
    save_file(
        tensors | {"model.layers.0.self_attn.rotary_emb.inv_freq": np.zeros(2, np.float32)},
        str(tmp_path / "model.safetensors"),
    )
    load_hf(tmp_path)  # RoPE buffers of old exports are ignored

    for change, msg in (
        ({"model_type": "gemma"}, "model_type 'gemma' is not supported; anekit imports 'llama'"),
        ({"model_type": "qwen3"}, "missing tensor model.layers.0.self_attn.q_norm.weight"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
        ({"attention_bias": True}, "biases"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ):
        (tmp_path / "config.json").write_text(json.dumps(cfg | change))
        with pytest.raises(ModelFileError, match=msg):
            load_hf(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelFileError, match="no config.json"):
        load_hf(tmp_path)
    with pytest.raises(ModelFileError, match="not supported for export"):
        save_hf(tmp_path / "x", GQA, _params(GQA), dtype="bfloat16")


def test_hf_defaults_fill_absent_fields(tmp_path):
    save_hf(tmp_path, GQA, _params(GQA))
    c = json.loads((tmp_path / "config.json").read_text())
    for k in ("head_dim", "num_key_value_heads", "tie_word_embeddings", "anekit_name"):
        del c[k]
    c["num_key_value_heads"] = 2  # GQA must be stated; head_dim and tying fall back to HF defaults
    (tmp_path / "config.json").write_text(json.dumps(c))
    with pytest.raises(
        ModelFileError, match="missing tensor lm_head.weight, and tie_word_embeddings is false"
    ):
        load_hf(tmp_path)  # HF's default is untied
    c["tie_word_embeddings"] = True
    (tmp_path / "config.json").write_text(json.dumps(c))
    cfg, _ = load_hf(tmp_path)
    assert (
        cfg.head_dim == 24 // 6 and cfg.n_kv_heads == 2 and cfg.tie_embeddings and cfg.name == tmp_path.name
    )


def test_transformers_llama_gives_the_same_logits(tmp_path):
    pytest.importorskip("transformers")
    import torch
    from transformers import LlamaForCausalLM

    for cfg in (GQA, UNTIED):
        params = _params(cfg)
        d = tmp_path / cfg.name
        save_hf(d, cfg, params)
        model = LlamaForCausalLM.from_pretrained(
            d, torch_dtype=torch.float32, attn_implementation="eager"
        ).eval()
        with torch.no_grad():
            logits = model(torch.tensor([TOKENS])).logits[0].double().numpy()
        np.testing.assert_allclose(logits, forward_interleaved(cfg, params, TOKENS), atol=2e-4, rtol=1e-4)
