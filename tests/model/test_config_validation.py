"""Model configs: every field type- and range-checked, unknown keys listed, files' syntax errors as
`ConfigError` naming the file, and the documented example (docs/examples/model.toml) equal to what
its comments say."""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from anekit.errors import AnekitError
from anekit.model import ModelConfig, preset
from anekit.model.config import ConfigError, RopeScaling

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "model.toml"
GOOD = dict(name="m", dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, seq_len=16)
FIELDS = [f.name for f in fields(ModelConfig)]


def write(tmp_path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# -- fields ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,message",
    [
        ({"dim": 0}, r"dim must be an integer in \[1, "),
        ({"dim": -64}, "dim must be"),
        ({"dim": 64.0}, "dim must be an integer, got 64.0"),
        ({"dim": "64"}, "dim must be an integer, got '64'"),
        ({"dim": True}, "dim must be an integer, got True"),
        ({"dim": 2**40}, "dim must be an integer in"),
        ({"hidden_dim": 0}, "hidden_dim must be"),
        ({"n_layers": 0}, "n_layers must be"),
        ({"n_heads": None}, "n_heads must be an integer, got None"),
        ({"n_kv_heads": 0}, "n_kv_heads must be"),
        ({"n_kv_heads": 3}, "n_heads 4 must be a multiple of n_kv_heads 3"),
        ({"n_kv_heads": 8}, "n_heads 4 must be a multiple of n_kv_heads 8"),
        ({"vocab_size": 1}, r"vocab_size must be an integer in \[2, "),
        ({"seq_len": 0}, "seq_len must be"),
        ({"seq_len": [16]}, "seq_len must be an integer"),
        ({"dim": 66}, "dim 66 is not divisible by n_heads 4; give head_dim"),
        ({"head_dim": 7}, "head_dim 7 must be even"),
        ({"head_dim": 0}, "head_dim must be"),
        ({"rope_theta": 0.0}, "rope_theta must be a finite number > 0"),
        ({"rope_theta": -1}, "rope_theta must be"),
        ({"rope_theta": math.nan}, "rope_theta must be a finite number"),
        ({"rope_theta": math.inf}, "rope_theta must be a finite number"),
        ({"rope_theta": "1e4"}, "rope_theta must be a number"),
        ({"norm_eps": 0.0}, "norm_eps must be a finite number > 0 and < 1"),
        ({"norm_eps": 1.0}, "norm_eps must be"),
        ({"norm_eps": math.nan}, "norm_eps must be"),
        ({"tie_embeddings": 1}, "tie_embeddings must be true or false, got 1"),
        ({"tie_embeddings": "no"}, "tie_embeddings must be true or false"),
        ({"name": ""}, "name must be a non-empty printable string"),
        ({"name": 5}, "name must be"),
        ({"name": "a\nb"}, "name must be"),
        ({"rope_scaling": "llama3"}, "rope_scaling must be a table of keys"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type 'yarn' is not supported"),
        ({"rope_scaling": {"rope_type": "llama3"}}, "rope_scaling: missing required key"),
        ({"rope_scaling": {"factor": 8.0}}, "rope_scaling: missing required key.*rope_type"),
        ({"rope_scaling": {"rope_type": "default", "factor": 2.0}}, "means no scaling and takes no other keys"),
        ({"rope_scaling": {"rope_type": "llama3", "scale": 2}}, "unknown key.*'scale'; valid keys: rope_type, factor"),
    ],
)  # fmt: skip
def test_every_field_is_checked(change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**(GOOD | change))


def test_good_values_are_normalised():
    cfg = ModelConfig(**(GOOD | {"rope_theta": 500000, "dim": np.int64(64)}))
    assert type(cfg.rope_theta) is float and type(cfg.dim) is int and cfg.head_dim == 16
    none = ModelConfig(**(GOOD | {"rope_scaling": {"rope_type": "default"}}))
    assert none.rope_scaling is None
    table = {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4}
    scaled = ModelConfig(**(GOOD | {"rope_scaling": table | {"original_max_position_embeddings": 8192}}))
    assert isinstance(scaled.rope_scaling, RopeScaling) and scaled.rope_scaling.factor == 8.0
    assert hash(scaled) != hash(none)  # configs stay hashable


def test_errors_are_anekit_errors_and_value_errors():
    with pytest.raises(ConfigError) as info:
        ModelConfig(**(GOOD | {"dim": 0}))
    assert isinstance(info.value, AnekitError) and isinstance(info.value, ValueError)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        preset("huge")


def test_from_dict_lists_unknown_and_missing_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'dimension'; valid keys: " + ", ".join(FIELDS)):
        ModelConfig.from_dict(GOOD | {"dimension": 3})
    with pytest.raises(ConfigError, match=r"missing required key\(s\) hidden_dim, seq_len"):
        ModelConfig.from_dict({k: v for k, v in GOOD.items() if k not in ("hidden_dim", "seq_len")})
    with pytest.raises(ConfigError, match="must be a table of keys"):
        ModelConfig.from_dict([1, 2])


# -- files -------------------------------------------------------------------------------------


def test_unknown_key_in_a_file_names_the_file_and_the_valid_keys(tmp_path):
    for p in (
        write(tmp_path, "a.toml", 'dim = 64\nhiden_dim = 96\npreset = "tiny"\n'),
        write(tmp_path, "a.json", json.dumps({"preset": "tiny", "hiden_dim": 96})),
    ):
        with pytest.raises(ConfigError) as info:
            ModelConfig.from_file(p)
        msg = str(info.value)
        assert msg.startswith(f"{p}: ") and "'hiden_dim'" in msg
        assert "valid keys: " + ", ".join(FIELDS) + ", preset" in msg


def test_field_errors_name_the_file(tmp_path):
    p = write(
        tmp_path,
        "bad.toml",
        "\n".join(f"{k} = {json.dumps(v)}" for k, v in (GOOD | {"norm_eps": 2.0}).items()),
    )
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: norm_eps must be"):
        ModelConfig.from_file(p)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("syntax.toml", "dim = = 3\n", r"syntax\.toml: not valid TOML: .*line 1"),
        ("syntax.json", '{"dim": 3,\n "x": }', r"syntax\.json:2:7: not valid JSON"),
        ("list.json", "[1, 2]", "a model config is a JSON table of keys, not list"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, r"deep\.json: not valid JSON"),
        ("digits.json", '{"dim": ' + "9" * 5000 + "}", r"digits\.json: not valid JSON"),
        ("digits.toml", "dim = " + "9" * 5000, r"digits\.toml: not valid TOML"),
        ("dup.toml", "dim = 1\ndim = 2\n", r"dup\.toml: not valid TOML"),
        ("nan.json", json.dumps(GOOD | {"rope_theta": float("nan")}), "rope_theta must be a finite number"),
        ("model.yaml", "dim: 3", r"model\.yaml: a model config must be a \.toml or \.json file"),
    ],
)
def test_malformed_files_are_config_errors(tmp_path, name, content, message):
    p = write(tmp_path, name, content)
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_file(p)


def test_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"none\.toml: no such config file"):
        ModelConfig.from_file(tmp_path / "none.toml")
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ConfigError, match=r"dir\.toml: not a regular file"):
        ModelConfig.from_file(tmp_path / "dir.toml")
    (tmp_path / "bytes.toml").write_bytes(b'name = "\xff"\n')
    with pytest.raises(ConfigError, match=r"bytes\.toml: not UTF-8 text \(bad byte at offset 8\)"):
        ModelConfig.from_file(tmp_path / "bytes.toml")
    (tmp_path / "big.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(ConfigError, match=r"big\.json: .* far too large"):
        ModelConfig.from_file(tmp_path / "big.json")


def test_preset_base_changes_only_the_keys_given(tmp_path):
    cfg = ModelConfig.from_file(write(tmp_path, "wide.toml", 'preset = "tiny"\ndim = 384\n'))
    tiny = preset("tiny")
    assert cfg.dim == 384 and cfg.head_dim == 384 // tiny.n_heads  # derived again, not tiny's 32
    assert (cfg.n_layers, cfg.vocab_size, cfg.name) == (tiny.n_layers, tiny.vocab_size, "wide")
    qwen = ModelConfig.from_file(
        write(tmp_path, "q.json", json.dumps({"preset": "qwen3-0.6b", "n_layers": 2}))
    )
    assert qwen.head_dim == 128 and qwen.n_layers == 2  # an explicit head_dim is kept
    with pytest.raises(ConfigError, match=r"p\.toml: unknown preset 'huge'"):
        ModelConfig.from_file(write(tmp_path, "p.toml", 'preset = "huge"\n'))
    with pytest.raises(ConfigError, match=r"p2\.toml: unknown preset 3"):
        ModelConfig.from_file(write(tmp_path, "p2.toml", "preset = 3\n"))


def test_random_values_give_a_config_or_a_config_error():
    """Seeded fuzz over every key: the only outcomes are a valid config or a ConfigError."""
    rng = random.Random(8)
    junk = [None, True, 0, -1, 1, 3, 2**31, 1.5, math.nan, -math.inf, 1e-9, "", "x", [], {}, [1], {"a": 1}]
    base = GOOD | {"head_dim": 16, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}  # fmt: skip
    outcomes = {"ok": 0, "error": 0}
    for _ in range(3000):
        data = json.loads(json.dumps(base))
        for _ in range(rng.randint(1, 3)):
            key = rng.choice([*FIELDS, "rope_scaling.factor", "rope_scaling.rope_type", "extra"])
            if key.startswith("rope_scaling.") and isinstance(data.get("rope_scaling"), dict):
                data["rope_scaling"][key.split(".")[1]] = rng.choice(junk)
            else:
                data[key] = rng.choice(junk)
        try:
            ModelConfig.from_dict(data)
            outcomes["ok"] += 1
        except ConfigError:
            outcomes["error"] += 1
    assert outcomes["ok"] > 0 and outcomes["error"] > 0


def test_train_command_prints_the_error_without_a_traceback(tmp_path):
    from typer.testing import CliRunner

    from anekit.cli import app

    bad = write(tmp_path, "bad.toml", 'preset = "tiny"\nlayers = 2\n')
    result = CliRunner().invoke(app, ["train", "--config", str(bad), "--out", str(tmp_path / "run")])
    out = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code != 0
    assert "unknown key(s) 'layers'" in out and "valid keys:" in out
    assert "Traceback" not in out and not isinstance(result.exception, ConfigError)
    assert not (tmp_path / "run").exists()  # refused before anything was written


# -- the documented example --------------------------------------------------------------------


def test_example_config_is_what_its_comments_say():
    cfg = ModelConfig.from_file(EXAMPLE)
    assert cfg == ModelConfig(
        "small-1k", dim=256, hidden_dim=688, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=1024, seq_len=128,
        head_dim=32, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True, rope_scaling=None,
    )  # fmt: skip
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "3.16 M parameters, 4 layers, width 256, 8 query heads sharing\n# 4 key/value heads" in text
    assert round(cfg.n_params() / 1e6, 2) == 3.16
    # every key is documented (as a setting or a commented-out one) ...
    keys = set(re.findall(r"^#? ?(\w+) = ", text, re.M))
    assert keys == set(FIELDS) - {"rope_scaling"} | {f.name for f in fields(RopeScaling)} | {"preset"}
    assert "# [rope_scaling]" in text
    # ... and every "default: X" it states is the real default
    claims = dict(re.findall(r"^(\w+) = .*# .*default: (.+)$", text, re.M))
    assert set(claims) == {"name", "head_dim", "rope_theta", "norm_eps", "tie_embeddings"}
    for key in ("rope_theta", "norm_eps", "tie_embeddings"):
        assert json.loads(claims[key]) == next(f.default for f in fields(ModelConfig) if f.name == key), key
    assert claims["head_dim"] == "dim / n_heads" and cfg.head_dim == cfg.dim // cfg.n_heads
    assert claims["name"] == 'the file name, "model"'  # checked in the next test


def test_example_commented_parts_are_valid(tmp_path):
    text = EXAMPLE.read_text(encoding="utf-8")
    block = text[text.index("# [rope_scaling]") :]
    uncommented = text[: text.index("# [rope_scaling]")] + re.sub(r"^# ", "", block, flags=re.M)
    cfg = ModelConfig.from_file(write(tmp_path, "model.toml", uncommented))
    assert cfg.rope_scaling == RopeScaling(
        factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
    )
    (tmp_path / "unnamed").mkdir()
    unnamed = re.sub(r"^name = .*\n", "", text, flags=re.M)
    assert ModelConfig.from_file(write(tmp_path / "unnamed", "model.toml", unnamed)).name == "model"
    with_preset = text.replace('# preset = "tiny"', 'preset = "tiny"')
    assert ModelConfig.from_file(write(tmp_path, "p.toml", with_preset)) == ModelConfig.from_file(EXAMPLE)


def test_example_model_trains_a_step():
    from anekit.model.reference import init_params
    from anekit.train.step import ModelRunner

    cfg = ModelConfig.from_file(EXAMPLE)
    rng = np.random.default_rng(0)
    tokens, targets = (rng.integers(0, cfg.vocab_size, (1, cfg.seq_len)) for _ in range(2))
    with ModelRunner(cfg, 1, backend="reference", numerics="exact") as runner:
        runner.set_params(init_params(cfg, 0))
        res = runner.step(tokens, targets)
    assert res.finite and abs(res.loss - math.log(cfg.vocab_size)) < 0.5
