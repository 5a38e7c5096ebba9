"""anekit.llm.source.open_model and the Hugging Face import under it (anekit.model.io): tiny random
models of each architecture saved by transformers (tests/llm/conftest.py), loaded by anekit, and the
float64 reference model (anekit.model.reference) compared with transformers in float32.

Tolerance: |anekit float64 - transformers float32| <= 1e-4 on every logit. The oracle computes in
float32 (24-bit mantissa) through 2-3 layers of width 64-96 with logits of magnitude ~3, which leaves
differences of ~1e-6 (measured: 1e-6 .. 1.4e-6); 1e-4 is far below what a wrong permutation, bias,
norm, RoPE scaling or mask changes (1e-2 and more), so a bug cannot hide in it."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from anekit.errors import AnekitError
from anekit.llm.errors import LLMError
from anekit.llm.source import ModelSource, ModelSourceError, open_model
from anekit.model import ModelConfig
from anekit.model.io import HFWeights, SafetensorsFile, load_hf, save_hf
from anekit.model.reference import decode_step, forward, init_params, new_cache
from llm_fixtures import llm_fixtures as _llm_fixtures

ARCHS, BOS_ID, IM_END_ID, MISTRAL_WINDOW, VOCAB = (
    getattr(_llm_fixtures(), n) for n in ("ARCHS", "BOS_ID", "IM_END_ID", "MISTRAL_WINDOW", "VOCAB")
)
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
SEQ = 20  # longer than Mistral's window (5) and Llama 3 scaling's original context (16)


def _tokens(seed=0, n=SEQ):
    return np.random.default_rng(seed).integers(0, VOCAB, n)


def _hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens)[None]).logits[0].double().numpy()


# -- what each architecture becomes ----------------------------------------------------------------


EXPECTED = {
    "llama3": dict(qkv_bias=False, qk_norm=False, sliding_window=None, tie_embeddings=False, n_layers=3),
    "llama3_bf16": dict(qkv_bias=False, qk_norm=False, sliding_window=None, tie_embeddings=False, n_layers=3),
    "llama_tied": dict(qkv_bias=False, qk_norm=False, sliding_window=None, tie_embeddings=True, n_kv_heads=4),
    "qwen2": dict(qkv_bias=True, qk_norm=False, sliding_window=None, rope_theta=1e6),
    "qwen3": dict(qkv_bias=False, qk_norm=True, sliding_window=None, head_dim=24, tie_embeddings=True),
    "mistral": dict(qkv_bias=False, qk_norm=False, sliding_window=MISTRAL_WINDOW),
}


def test_open_model_reads_the_config_and_files(tiny_hf_model):
    src = open_model(tiny_hf_model.directory)
    assert isinstance(src, ModelSource) and src.kind == "hf"
    assert src.name == tiny_hf_model.directory.resolve().name and src.directory == tiny_hf_model.directory
    cfg = src.config
    assert (cfg.dim, cfg.hidden_dim, cfg.n_heads, cfg.vocab_size, cfg.norm_eps) == (64, 96, 4, VOCAB, 1e-5)
    for key, value in EXPECTED[tiny_hf_model.arch].items():
        assert getattr(cfg, key) == value, key
    assert (cfg.rope_scaling is not None) == tiny_hf_model.arch.startswith("llama3")
    assert isinstance(src.weights, HFWeights) and list(src.weights) == list(cfg.param_shapes())
    assert all(src.weights[k].shape == s for k, s in cfg.param_shapes().items())
    assert src.tokenizer_file == (tiny_hf_model.directory / "tokenizer.json").resolve()
    assert src.tokenizer_config["eos_token"] == "<|im_end|>" and "chat_template" in src.tokenizer_config
    assert src.generation_config["eos_token_id"] == IM_END_ID
    assert src.generation_config["bos_token_id"] == BOS_ID


def test_forward_matches_transformers(tiny_hf_model):
    src = open_model(tiny_hf_model.directory)
    for seed in (0, 1):
        tokens = _tokens(seed)
        ours = forward(src.weights, src.config, tokens)
        ref = _hf_logits(tiny_hf_model.model, tokens)
        assert np.abs(ours - ref).max() <= TOL
        assert np.abs(ref).max() > 1.0  # logits that are not near zero, so the comparison means something


def test_decode_steps_match_transformers_with_its_kv_cache(tiny_hf_model):
    from transformers import DynamicCache

    src = open_model(tiny_hf_model.directory)
    params = src.weights.materialize()  # read once, not on every step
    tokens = _tokens(2)
    cache, hf_cache = new_cache(src.config, max_len=SEQ), DynamicCache(config=tiny_hf_model.config)
    worst = 0.0
    for t in tokens:
        ours = decode_step(params, src.config, int(t), cache)[0]
        with torch.no_grad():
            out = tiny_hf_model.model(torch.tensor([[int(t)]]), cache=hf_cache, use_cache=True)
        worst = max(worst, np.abs(ours - out.logits[0, -1].double().numpy()).max())
    assert worst <= TOL and cache.length == SEQ


def test_the_mistral_window_matters(hf_mistral):
    """The oracle really applies the window: without it the logits past the window differ."""
    src = open_model(hf_mistral.directory)
    tokens = _tokens(3)
    ref = _hf_logits(hf_mistral.model, tokens)
    from dataclasses import replace

    unwindowed = forward(src.weights, replace(src.config, sliding_window=None), tokens)
    assert np.abs(unwindowed[:MISTRAL_WINDOW] - ref[:MISTRAL_WINDOW]).max() <= TOL
    assert np.abs(unwindowed[MISTRAL_WINDOW:] - ref[MISTRAL_WINDOW:]).max() > 100 * TOL


def test_greedy_continuation_is_transformers(hf_qwen3):
    src = open_model(hf_qwen3.directory)
    prompt = _tokens(4, 6).tolist()
    with torch.no_grad():
        hf = hf_qwen3.model.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(prompt) :].tolist()
    params = src.weights.materialize()
    cache = new_cache(src.config, max_len=32)
    for t in prompt[:-1]:
        decode_step(params, src.config, t, cache)
    ours, t = [], prompt[-1]
    for _ in range(12):
        t = int(np.argmax(decode_step(params, src.config, t, cache)[0]))
        ours.append(t)
    assert ours == hf


# -- memory mapping ----------------------------------------------------------------------------------


def _mapped_file(weights: HFWeights, name: str) -> SafetensorsFile:
    return weights._sources[name][0]


def test_weights_are_views_of_the_mapped_files(hf_llama3, hf_qwen2):
    w = open_model(hf_llama3.directory).weights
    assert len({_mapped_file(w, n).path for n in w}) >= 2  # sharded: several files, each mapped once
    for name in ("embed", "lm_head", "layers.0.wv", "layers.2.w2", "layers.1.attn_norm"):
        a, f = w[name], _mapped_file(w, name)
        assert w.stored_dtype(name) == "F32" and a.dtype == np.float32
        assert np.shares_memory(a, f._raw) and not a.flags.writeable, name
    for name in ("layers.0.wq", "layers.0.wk"):  # permuted into interleaved RoPE order: a new array
        assert not np.shares_memory(w[name], _mapped_file(w, name)._raw)
    q = open_model(hf_qwen2.directory).weights
    assert np.shares_memory(q["layers.0.bv"], _mapped_file(q, "layers.0.bv")._raw)
    assert not np.shares_memory(q["layers.0.bq"], _mapped_file(q, "layers.0.bq")._raw)
    # the permutation is the one of anekit.model.io (HF row order: even rows, then odd rows, per head)
    hf_bq = hf_qwen2.model.model.layers[0].self_attn.q_proj.bias.detach().numpy().reshape(4, 2, 8)
    assert np.array_equal(q["layers.0.bq"], hf_bq.transpose(0, 2, 1).reshape(-1))


def test_release_drops_pages_but_keeps_the_data(hf_llama3):
    w = open_model(hf_llama3.directory).weights
    before = {k: np.array(w[k]) for k in w}
    for k in w:
        w.release(k)
    assert all(np.array_equal(w[k], before[k]) for k in w)


def test_bf16_is_widened_on_access(hf_llama3_bf16):
    w = open_model(hf_llama3_bf16.directory).weights
    assert w.stored_dtype("embed") == "BF16" and w["embed"].dtype == np.float32
    assert w["embed"].flags.writeable  # a new array, not the mapping
    ref = hf_llama3_bf16.model.model.embed_tokens.weight.detach().numpy()
    assert np.array_equal(w["embed"], ref)
    assert w.nbytes == 2 * sum(int(np.prod(s)) for s in w.config.param_shapes().values())


def test_opening_reads_no_tensor_data(hf_llama3, monkeypatch):
    calls = []
    real = SafetensorsFile.array
    monkeypatch.setattr(SafetensorsFile, "array", lambda self, name: calls.append(name) or real(self, name))
    src = open_model(hf_llama3.directory)
    assert calls == []
    src.weights["layers.1.w1"]
    assert calls == ["model.layers.1.mlp.gate_proj.weight"]


def test_load_hf_materialises_every_family(tiny_hf_model):
    cfg, params = load_hf(tiny_hf_model.directory)
    w = open_model(tiny_hf_model.directory).weights
    assert list(params) == list(w) and all(params[k].dtype == np.float32 for k in params)
    assert all(np.array_equal(params[k], w[k]) for k in params)


@pytest.mark.parametrize(
    "change,arch",
    [
        ({"qkv_bias": True}, "qwen2"),
        ({"qk_norm": True, "head_dim": 24}, "qwen3"),
        ({"sliding_window": 4}, "mistral"),
    ],
)
def test_export_writes_the_family_transformers_reads(tmp_path, change, arch):
    cfg = ModelConfig("x", dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=100,
                      seq_len=64, tie_embeddings=False, **change)  # fmt: skip
    params = init_params(cfg, 0, "normal")
    rng = np.random.default_rng(0)
    for k in params:
        if k.endswith(("bq", "bk", "bv")):
            params[k] = rng.normal(0, 0.3, params[k].shape).astype(np.float32)
        elif k.endswith("norm"):
            params[k] = rng.uniform(0.5, 1.5, params[k].shape).astype(np.float32)
    save_hf(tmp_path, cfg, params)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == arch
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    tokens = _tokens(5, 12) % 100
    assert np.abs(forward(params, cfg, tokens) - _hf_logits(model, tokens)).max() <= TOL
    assert load_hf(tmp_path)[0] == cfg


# -- anekit checkpoints -------------------------------------------------------------------------------


def test_an_anekit_run_directory(tmp_path, tiny_tokenizer_dir):
    from anekit.train.checkpoint import save_checkpoint
    from anekit.train.tokenizers import load_tokenizer

    cfg = ModelConfig("mini", dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB,
                      seq_len=32)  # fmt: skip
    params = init_params(cfg, 0)
    tok = load_tokenizer(tiny_tokenizer_dir / "tokenizer.json")
    save_checkpoint(tmp_path / "run" / "checkpoint", cfg, params, tokenizer=tok)
    for path in (tmp_path / "run", tmp_path / "run" / "checkpoint"):
        src = open_model(path)
        assert src.kind == "anekit" and src.name == "mini" and src.config == cfg
        assert src.directory == tmp_path / "run" / "checkpoint"
        assert all(np.array_equal(src.weights[k], params[k]) for k in params)
        assert src.tokenizer_file == src.directory / "tokenizer.json" and src.tokenizer_file.is_file()
        assert src.generation_config == {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id}
        assert src.tokenizer_config == {}
    weights = tmp_path / "run" / "checkpoint" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelSourceError, match=r"model.safetensors: checksum mismatch"):
        open_model(tmp_path / "run")


# -- a Hugging Face hub cache snapshot ---------------------------------------------------------------


def test_a_hub_cache_snapshot_links_into_its_blobs(tmp_path, hf_llama_tied):
    entry = tmp_path / "hub" / "models--org--tiny"
    blobs, snap = entry / "blobs", entry / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(hf_llama_tied.directory.iterdir())):
        shutil.copy(f, blobs / f"blob{i}")
        (snap / f.name).symlink_to(os.path.relpath(blobs / f"blob{i}", snap))
    src = open_model(snap)
    assert src.name == "org/tiny" and src.config.tie_embeddings
    assert src.tokenizer_file.parent == blobs.resolve()  # the real file the link names
    tokens = _tokens(6)
    assert (
        np.abs(forward(src.weights, src.config, tokens) - _hf_logits(hf_llama_tied.model, tokens)).max()
        <= TOL
    )
    # a link elsewhere is still refused
    (snap / "tokenizer.json").unlink()
    (snap / "tokenizer.json").symlink_to(hf_llama_tied.directory / "tokenizer.json")
    with pytest.raises(ModelSourceError, match="tokenizer 'tokenizer.json' lies outside the model directory"):
        open_model(snap)


# -- refusals: each a ModelSourceError naming the file and what to do ---------------------------------


@pytest.fixture
def copy_of(tmp_path):
    def copy(tiny) -> object:
        d = tmp_path / tiny.arch
        shutil.copytree(tiny.directory, d)
        return d

    return copy


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    for k, v in changes.items():
        if v is ...:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(json.dumps(data))


def _refused(path, message):
    with pytest.raises(ModelSourceError, match=message) as info:
        open_model(path)
    assert isinstance(info.value, LLMError) and isinstance(info.value, AnekitError)
    return str(info.value)


def test_bad_paths(tmp_path, hf_llama_tied):
    _refused(tmp_path / "nope", "nope: no such model directory or checkpoint; give a Hugging Face model")
    _refused(
        hf_llama_tied.directory / "config.json",
        r"config.json: is a file, not a model directory or a .gguf file; .* \(perhaps ",
    )
    _refused(tmp_path, "holds neither config.json \\(Hugging Face\\) nor an anekit checkpoint")


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"model_type": "gemma"}, "model_type 'gemma' is not supported; anekit imports 'llama', 'mistral'"),
        ({"model_type": ["llama"]}, r"model_type \['llama'\] is not supported"),
        ({"attention_bias": True}, "attention_bias/mlp_bias are not supported: Llama's biases include the output"),
        ({"mlp_bias": True}, "attention_bias/mlp_bias are not supported"),
        ({"hidden_act": "gelu"}, r"hidden_act 'gelu' is not supported \(SwiGLU with silu only\)"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
         "RoPE scaling type 'yarn' is not supported"),
        ({"quantization_config": {"quant_method": "gptq"}}, "the checkpoint is quantized"),
        ({"hidden_size": 48}, r"tensor \S+ has shape \[384, 64\], config.json needs \[384, 48\]: the weights do not belong"),
        ({"num_hidden_layers": 4}, "missing tensor model.layers.3.input_layernorm.weight, .* and 6 more for config .*incomplete download"),
        ({"tie_word_embeddings": True, "num_hidden_layers": 2}, "unexpected tensor model.layers.2"),
        ({"vocab_size": 1}, "vocab_size must be an integer in"),
    ],
)  # fmt: skip
def test_unsupported_or_inconsistent_llama_configs(copy_of, hf_llama3, changes, message):
    d = copy_of(hf_llama3)
    _edit_json(d / "config.json", **changes)
    assert str(d / "config.json") in _refused(d, message) or str(d) in _refused(d, message)


def test_qwen_sliding_window_on_some_layers_is_refused(copy_of, hf_qwen2, hf_qwen3):
    d = copy_of(hf_qwen2)
    _edit_json(
        d / "config.json", use_sliding_window=True, sliding_window=4, max_window_layers=1, layer_types=...
    )
    _refused(d, "layers mix full and sliding-window attention")
    _edit_json(d / "config.json", max_window_layers=0)  # every layer windowed: one window, supported
    assert open_model(d).config.sliding_window == 4
    d = copy_of(hf_qwen3)
    _edit_json(d / "config.json", attention_bias=True)
    _refused(d, "attention_bias is not supported for qwen3")


def test_mistral_window_null_and_absent(copy_of, hf_mistral):
    d = copy_of(hf_mistral)
    _edit_json(d / "config.json", sliding_window=None)
    assert open_model(d).config.sliding_window is None
    _edit_json(d / "config.json", sliding_window=...)
    assert open_model(d).config.sliding_window == 4096  # transformers' MistralConfig default


def test_damaged_json_files(copy_of, hf_llama_tied):
    d = copy_of(hf_llama_tied)
    for name, what in (
        ("tokenizer_config.json", "tokenizer config"),
        ("generation_config.json", "generation config"),
    ):
        good = (d / name).read_text()
        (d / name).write_text("[1, 2]")
        _refused(d, f"{name}: holds a JSON list, not an object; a {what} is a JSON object")
        (d / name).write_text("{not json")
        _refused(d, f"{name}: cannot read: not valid JSON at line 1 column 2 .*download it again")
        (d / name).write_text(good)
    (d / "config.json").write_text("{")
    _refused(d, "config.json: cannot read: not valid JSON")
    (d / "config.json").write_text("[]")
    _refused(d, "config.json: config.json holds list, not a JSON object")
    (d / "config.json").unlink()
    _refused(d, "holds neither config.json")


def test_missing_optional_files_are_empty(copy_of, hf_llama_tied):
    d = copy_of(hf_llama_tied)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (d / name).unlink()
    src = open_model(d)
    assert src.tokenizer_file is None and src.tokenizer_config == {} and src.generation_config == {}


def test_damaged_or_missing_shards(copy_of, hf_llama3):
    d = copy_of(hf_llama3)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = d / index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    _refused(
        d, f"{shard.name}: tensor .* data is truncated or inconsistent with its shape .*a partial download"
    )
    shard.write_bytes(b"")
    _refused(d, f"{shard.name}: cannot read: .*an empty or unreadable file; download it again")
    shard.write_bytes(b"\xff" * 16)
    _refused(d, f"{shard.name}: not a safetensors file")
    shard.unlink()
    _refused(d, f"shard {d / shard.name}: no such file; the model directory is incomplete")
    os.mkfifo(shard)
    _refused(d, f"{shard.name}: is a FIFO")
    shard.unlink()
    shard.write_bytes(data)
    open_model(d)

    other = d / index["weight_map"]["model.embed_tokens.weight"]
    wm = index["weight_map"] | {"model.layers.1.mlp.up_proj.weight": other.name}
    if other != shard:
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
        _refused(
            d,
            f"tensor model.layers.1.mlp.up_proj.weight is listed in shard {other.name}, which does not hold it",
        )
    for bad, message in (
        ({"model.embed_tokens.weight": "../outside.safetensors"}, "shard '../outside.safetensors' lies outside the model directory"),
        ({"model.embed_tokens.weight": "/etc/passwd"}, "shard '/etc/passwd' lies outside the model directory"),
        ({"model.embed_tokens.weight": 7}, "shard name 7 is not a file name"),
    ):  # fmt: skip
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index["weight_map"] | bad}))
        _refused(d, message)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    _refused(d, "not a safetensors index with a weight_map")
    (d / "model.safetensors.index.json").unlink()
    _refused(d, "no model.safetensors or model.safetensors.index.json")
    (d / "consolidated.safetensors").write_bytes(b"")
    _refused(d, "has Mistral's native consolidated.safetensors, whose names and layout anekit does not read")
    (d / "pytorch_model.bin.index.json").write_text("{}")
    _refused(d, r"has only PyTorch pickle weights \(pytorch_model.bin\); anekit reads safetensors only")


def test_a_symlink_out_of_the_directory_is_refused(copy_of, tmp_path, hf_llama_tied):
    d = copy_of(hf_llama_tied)
    outside = tmp_path / "elsewhere.safetensors"
    (d / "model.safetensors").rename(outside)
    (d / "model.safetensors").symlink_to(outside)
    _refused(d, "weight file 'model.safetensors' lies outside the model directory .* copy the file in")


def test_arch_list_is_what_conftest_builds():
    assert set(EXPECTED) == set(ARCHS)


# -- the config.json of published models ------------------------------------------------------------

#: The architecture keys of published config.json files (huggingface.co/<repo>/blob/main/config.json),
#: with what anekit must make of them.
PUBLISHED = {
    "Qwen/Qwen3-0.6B": (
        {"model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
         "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
         "max_position_embeddings": 40960, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
         "sliding_window": None, "use_sliding_window": False, "max_window_layers": 28, "attention_bias": False,
         "tie_word_embeddings": True, "hidden_act": "silu", "torch_dtype": "bfloat16"},
        dict(qk_norm=True, qkv_bias=False, head_dim=128, q_dim=2048, tie_embeddings=True, sliding_window=None),
        0.44e9,  # the model card: "Number of Parameters (Non-Embedding): 0.44B"
    ),
    "meta-llama/Llama-3.2-1B": (
        {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
         "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
         "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
         "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                          "original_max_position_embeddings": 8192, "rope_type": "llama3"},
         "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1, "tie_word_embeddings": True,
         "hidden_act": "silu", "torch_dtype": "bfloat16"},
        dict(qk_norm=False, qkv_bias=False, head_dim=64, tie_embeddings=True, sliding_window=None),
        1_235_814_400 - 128256 * 2048,  # 1.24B in all (safetensors total 1,235,814,400)
    ),
    "Qwen/Qwen2.5-0.5B-Instruct": (
        {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
         "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
         "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
         "sliding_window": 32768, "use_sliding_window": False, "max_window_layers": 21,
         "tie_word_embeddings": True, "hidden_act": "silu", "torch_dtype": "bfloat16"},
        dict(qk_norm=False, qkv_bias=True, head_dim=64, tie_embeddings=True, sliding_window=None),
        0.36e9,  # the model card: "Number of Parameters (Non-Embedding): 0.36B"
    ),
    "mistralai/Mistral-7B-Instruct-v0.3": (
        {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 32768,
         "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
         "sliding_window": None, "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "bfloat16"},
        dict(qk_norm=False, qkv_bias=False, head_dim=128, tie_embeddings=False, sliding_window=None),
        None,
    ),
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": (
        {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
         "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048,
         "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False,
         "hidden_act": "silu", "pretraining_tp": 1, "torch_dtype": "bfloat16"},
        dict(head_dim=64, n_kv_heads=4, tie_embeddings=False, rope_scaling=None),
        None,
    ),
    "HuggingFaceTB/SmolLM2-135M": (
        {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
         "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192,
         "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 100000, "tie_word_embeddings": True,
         "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16"},
        dict(head_dim=64, n_kv_heads=3, tie_embeddings=True),
        None,
    ),
}  # fmt: skip


@pytest.mark.parametrize("repo", PUBLISHED)
def test_published_configs(repo):
    from anekit.model.io import config_from_hf

    raw, expected, non_embedding = PUBLISHED[repo]
    cfg = config_from_hf(raw, name=repo.split("/")[1])
    for key, value in expected.items():
        assert getattr(cfg, key) == value, key
    if non_embedding is not None:
        body = cfg.n_params() - cfg.vocab_size * cfg.dim * (1 if cfg.tie_embeddings else 2)
        assert round(body / 1e9, 2) == round(non_embedding / 1e9, 2)


def test_f16_checkpoints_are_float16_views(hf_qwen2, tmp_path):
    import copy

    copy.deepcopy(hf_qwen2.model).half().save_pretrained(tmp_path)
    shutil.copy(hf_qwen2.directory / "tokenizer.json", tmp_path / "tokenizer.json")
    oracle = type(hf_qwen2.model).from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="eager")
    w = open_model(tmp_path).weights
    assert w.stored_dtype("layers.0.w1") == "F16" and w["layers.0.w1"].dtype == np.float16
    assert np.shares_memory(w["layers.0.w1"], _mapped_file(w, "layers.0.w1")._raw)
    tokens = _tokens(8)
    assert np.abs(forward(w, w.config, tokens) - _hf_logits(oracle.eval(), tokens)).max() <= TOL


# -- found by the `model` fuzz target (anekit.fuzz.model_dir) -------------------------------------------


def test_a_looping_symlink_is_a_model_source_error(copy_of, hf_llama_tied):
    d = copy_of(hf_llama_tied)
    (d / "tokenizer_config.json").unlink()
    (d / "tokenizer_config.json").symlink_to("tokenizer_config.json")
    _refused(d, "tokenizer_config.json.* cannot be resolved .*a symbolic link loops")


@pytest.mark.parametrize("rope_type", [["llama3"], 7])
def test_a_rope_type_that_is_not_a_string_is_refused(copy_of, hf_llama_tied, rope_type):
    d = copy_of(hf_llama_tied)
    _edit_json(d / "config.json", rope_parameters={"rope_type": rope_type, "rope_theta": 10000.0})
    _refused(d, "rope_type must be a string")
