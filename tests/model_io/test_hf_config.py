"""Hugging Face ``config.json`` RoPE settings, as transformers 5 writes them (``rope_parameters``) and
as 4.x did (``rope_theta`` + ``rope_scaling``, the oldest with "type"); llama3 scaling imported,
every other scaling type refused by name; export readable by both; bad fields named."""

from __future__ import annotations

import json

import pytest

from anekit.model import ModelConfig
from anekit.model.config import RopeScaling
from anekit.model.io import ModelFileError, config_from_hf, load_hf, read_safetensors, rope_from_hf, save_hf
from anekit.model.reference import init_params

BASE = ModelConfig(
    "hfcfg", dim=32, hidden_dim=48, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=40, seq_len=128
)
LLAMA3 = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
SCALED = ModelConfig(
    **(BASE.to_dict() | {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", **LLAMA3}})
)

# the keys every Llama config.json here shares; RoPE keys are added per case
CORE = {
    "model_type": "llama", "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 40, "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
}  # fmt: skip


def rope_of(cfg: dict) -> tuple[float, RopeScaling | None]:
    return rope_from_hf(CORE | cfg)


def test_transformers_5_rope_parameters_give_theta():
    # transformers 5 writes no top-level rope_theta: before, this silently became 10000
    assert rope_of({"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}) == (500000.0, None)
    assert (
        config_from_hf(CORE | {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}).rope_theta
        == 1e6
    )


def test_older_layouts_give_the_same_config():
    want = (500000.0, SCALED.rope_scaling)
    new = {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, **LLAMA3}}
    v4 = {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", **LLAMA3}}
    oldest = {"rope_theta": 500000.0, "rope_scaling": {"type": "llama3", **LLAMA3}}
    both = new | v4  # what anekit's export writes
    for layout in (new, v4, oldest, both):
        assert rope_of(layout) == want, layout
    assert rope_of({}) == (10000.0, None)  # transformers' default theta
    assert rope_of({"rope_theta": 1234.0, "rope_scaling": None}) == (1234.0, None)
    assert config_from_hf(CORE | both, name="hfcfg") == SCALED


def test_llama3_original_context_defaults_to_max_position_embeddings():
    # transformers fills it in the same way (RotaryEmbeddingConfigMixin.standardize_rope_params)
    no_context = {k: v for k, v in LLAMA3.items() if k != "original_max_position_embeddings"}
    _, scaling = rope_of({"rope_scaling": {"rope_type": "llama3", **no_context}})
    assert scaling.original_max_position_embeddings == 128


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn", "longrope", "proportional", "made-up"])
def test_other_scaling_types_are_refused_by_name(tmp_path, kind):
    with pytest.raises(ModelFileError, match=f"type '{kind}' is not supported"):
        rope_of({"rope_scaling": {"rope_type": kind, "factor": 2.0}})
    with pytest.raises(ModelFileError, match=f"type '{kind}' is not supported"):
        rope_of({"rope_parameters": {"rope_type": kind, "rope_theta": 1e4, "factor": 2.0}})
    save_hf(tmp_path, BASE, init_params(BASE))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": kind, "rope_theta": 10000.0, "factor": 4.0}
    cfg["rope_scaling"] = None
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match=rf"config\.json: .*'{kind}' is not supported"):
        load_hf(tmp_path)


@pytest.mark.parametrize(
    "cfg,message",
    [
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, **LLAMA3},
          "rope_scaling": {"rope_type": "llama3", **(LLAMA3 | {"factor": 32.0})}}, "disagree on factor"),
        ({"rope_theta": 1e4, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}, "rope_theta 10000"),
        ({"rope_scaling": {"type": "linear", "rope_type": "llama3", **LLAMA3}}, "type 'linear' and rope_type"),
        ({"rope_parameters": {"full_attention": {"rope_type": "default"}}}, "per layer type"),
        ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
        ({"partial_rotary_factor": 0.25}, "partial_rotary_factor"),
        ({"rope_scaling": {"rope_type": "llama3", "mscale": 1.0, **LLAMA3}}, "mscale are not understood"),
        ({"rope_parameters": {"rope_type": "default", "factor": 4.0}}, "factor are not understood"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "lacks high_freq_factor, low_freq_factor"),
        ({"rope_scaling": "llama3"}, "rope_scaling must be a JSON object"),
        ({"rope_scaling": {"rope_type": "llama3", **(LLAMA3 | {"factor": 0.5})}}, "rope_scaling.factor"),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": -1.0}}, "rope_theta"),
    ],
)  # fmt: skip
def test_inconsistent_or_unsupported_rope_settings_are_errors(cfg, message):
    with pytest.raises(ValueError, match=message):
        config_from_hf(CORE | cfg)


def test_missing_and_mistyped_fields_are_named(tmp_path):
    with pytest.raises(ModelFileError, match="lacks hidden_size, vocab_size"):
        config_from_hf({k: v for k, v in CORE.items() if k not in ("hidden_size", "vocab_size")})
    for key, value, field in (
        ("hidden_size", "32", "dim"),
        ("num_hidden_layers", 0, "n_layers"),
        ("tie_word_embeddings", "false", "tie_embeddings"),  # a string is not silently truthy
        ("rms_norm_eps", None, "norm_eps"),
        ("num_key_value_heads", 3, "n_kv_heads"),
    ):
        with pytest.raises(ValueError, match=field):
            config_from_hf(CORE | {key: value})
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="config.json.*not a JSON object"):
        load_hf(tmp_path)


def test_export_is_read_by_both_layouts_and_round_trips(tmp_path):
    params = init_params(SCALED)
    save_hf(tmp_path, SCALED, params)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["rope_parameters"] == {"rope_type": "llama3", "rope_theta": 500000.0, **LLAMA3}
    assert written["rope_theta"] == 500000.0 and written["rope_scaling"] == {"rope_type": "llama3", **LLAMA3}
    assert written["dtype"] == written["torch_dtype"] == "float32"
    assert load_hf(tmp_path)[0] == SCALED
    only_new = {k: v for k, v in written.items() if k not in ("rope_theta", "rope_scaling")}
    only_old = {k: v for k, v in written.items() if k != "rope_parameters"}
    assert config_from_hf(only_new, "hfcfg") == config_from_hf(only_old, "hfcfg") == SCALED

    save_hf(tmp_path / "plain", BASE, init_params(BASE))
    plain = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert plain["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert plain["rope_scaling"] is None
    assert load_hf(tmp_path / "plain")[0] == BASE


def test_transformers_reads_the_export(tmp_path):
    pytest.importorskip("transformers")
    from transformers import LlamaConfig

    save_hf(tmp_path, SCALED, init_params(SCALED))
    hf = LlamaConfig.from_pretrained(tmp_path)
    assert hf.rope_parameters == {"rope_type": "llama3", "rope_theta": 500000.0, **LLAMA3}
    assert (hf.hidden_size, hf.num_key_value_heads, hf.max_position_embeddings) == (32, 2, 128)
    save_hf(tmp_path / "plain", BASE, init_params(BASE))
    assert LlamaConfig.from_pretrained(tmp_path / "plain").rope_parameters == {
        "rope_type": "default",
        "rope_theta": 10000.0,
    }


# -- damaged files: a ModelFileError naming the file, never a raw exception ---------------------


def _safetensors(path, header: dict, data: bytes = b"") -> None:
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)


@pytest.mark.parametrize(
    "header,message",
    [
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, "truncated or inconsistent"),
        ({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 0]}}, "truncated or inconsistent"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, "truncated or inconsistent"),
        ({"t": {"dtype": "F32", "shape": [1]}}, "malformed header entry"),
        ({"t": {"dtype": "F32", "shape": "ab", "data_offsets": [0, 4]}}, "malformed header entry"),
        ({"t": [1, 2]}, "malformed header entry"),
        ({"t": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, "only float tensors"),
        ([1, 2], "not a safetensors file"),
    ],
)
def test_damaged_safetensors_headers_are_model_file_errors(tmp_path, header, message):
    _safetensors(tmp_path / "m.safetensors", header, b"\0" * 4)
    with pytest.raises(ModelFileError, match=message):
        read_safetensors(tmp_path / "m.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty.safetensors"):
        read_safetensors(tmp_path / "empty.safetensors")


def test_shard_index_is_checked_and_stays_inside_the_directory(tmp_path):
    save_hf(tmp_path / "src", BASE, init_params(BASE))
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    outside = tmp_path / "secret.safetensors"
    (tmp_path / "src" / "model.safetensors").rename(outside)
    index = d / "model.safetensors.index.json"
    for weight_map, message in (
        ({"model.embed_tokens.weight": "../secret.safetensors"}, "outside the model directory"),
        ({"model.embed_tokens.weight": str(outside)}, "outside the model directory"),
        ({"model.embed_tokens.weight": 3}, "not a file name"),
    ):
        index.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(ModelFileError, match=message):
            load_hf(d)
    (d / "link.safetensors").symlink_to(outside)
    index.write_text(json.dumps({"weight_map": {"model.embed_tokens.weight": "link.safetensors"}}))
    with pytest.raises(ModelFileError, match="outside the model directory"):
        load_hf(d)
    for text in ("{}", "[]", "not json", '{"weight_map": [1]}'):
        index.write_text(text)
        with pytest.raises(
            ModelFileError, match="not a safetensors index|index.json: cannot read: not valid JSON"
        ):
            load_hf(d)


def test_deeply_nested_config_json_is_a_model_file_error(tmp_path):
    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelFileError, match="config.json: cannot read"):
        load_hf(tmp_path)
