"""Fuzz target `model`: model directories (Hugging Face, anekit checkpoint, GGUF), damaged, then loaded
and run.

The seeds are real models made once per process without transformers (the fuzzer lives in the package;
transformers is only the tests' oracle): an anekit `ModelConfig` (plain Llama, Qwen2-style `qkv_bias`,
Qwen3-style `qk_norm`) with `anekit.model.reference.init_params`, written by anekit's own exporter
(`anekit.model.io.save_hf`); the Qwen2 seed's weights are then split into two shards with a
``model.safetensors.index.json`` (the exporter writes one file). Each holds a small ``tokenizer.json``
(BPE trained by the `tokenizers` library), a ``tokenizer_config.json`` with a ChatML chat template and a
``generation_config.json``. Also an anekit checkpoint (`anekit.train.checkpoint.save_checkpoint`) and,
when the `gguf` package is importable, a GGUF file with the same files beside it.

Each case copies one seed and applies one to four mutations: config.json fields (deleted, other JSON
values: wrong types, huge, negative, NaN; unknown model_type; rope_scaling shapes), the index
(missing shards, names leaving the directory by ``../`` or an absolute path, tensors listed twice or in
the wrong shard), safetensors headers (length, offsets, dtypes, shapes, truncation, bit flips), the
tokenizer files (broken JSON, wrong ids, BOS/EOS absent), the chat template (syntax errors,
``raise_exception``, deep recursion, loops too long to finish), generation_config.json values, and the
files themselves (missing, a directory, a fifo, a symlink leaving the directory, a symlink inside it,
dangling or looping links). Then `anekit.llm.load(dir, backend="float64", max_len=48)`, `logits` of a
few tokens, `generate` of 2 tokens, `render_chat` of a short conversation and `chat` (1 token).

Acceptable outcomes: success or an AnekitError. One more check: a model whose file is a symlink leaving
the directory must not load (the link's target is a valid copy, so only the path check can refuse it).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: the seeds, by name; "gguf" only when the gguf package is importable (`seeds`)
SEED_NAMES = ("llama", "qwen2-sharded", "qwen3", "checkpoint", "gguf")
VOCAB = 64
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_TEXT = "the cat sat on the mat. a dog ran to the tree and sat down. hello world, how are you? "
MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello cat"},
]
MAX_LEN = 48

CONFIG_KEYS = [
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "tie_word_embeddings",
    "hidden_act",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
    "attention_bias",
    "bos_token_id",
    "eos_token_id",
    "quantization_config",
    "anekit_name",
    "partial_rotary_factor",
]
JSON_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    3,
    8,
    16,
    17,
    64,
    1.5,
    -0.5,
    1e-300,
    float("nan"),
    float("inf"),
    1e308,
    2**31,
    2**63,
    10**40,
    "",
    "x",
    "16",
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gpt2",
    [],
    [1, 2],
    ["sliding_attention"],
    {},
    {"a": 1},
    "\udcff" * 3,
    "y" * 3000,
]
ROPE_VALUES: list[object] = [
    None,
    {},
    {"rope_type": "llama3"},
    {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8,
    },
    {"rope_type": "llama3", "factor": 0, "low_freq_factor": 1.0, "high_freq_factor": 1.0},
    {"rope_type": "llama3", "factor": float("nan"), "low_freq_factor": -1, "high_freq_factor": "4"},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0},
    {"type": "linear", "factor": 2.0},
    {"type": "llama3", "rope_type": "default"},
    {"rope_type": "yarn", "factor": 4.0},
    {"rope_type": "default", "rope_theta": -1.0},
    {"rope_type": "default", "rope_theta": 0},
    {"rope_type": "default", "rope_theta": "1e4"},
    {"rope_type": "default", "rope_theta": 1e308},
    {"rope_type": "default", "partial_rotary_factor": 0.5},
    {"rope_type": "default", "mrope_section": [1, 2]},
    {"full_attention": {"rope_type": "default"}},
    {"rope_type": 7},
    {"rope_type": ["llama3"]},
    [1, 2],
    "llama3",
    7,
]
GEN_KEYS = [
    "eos_token_id",
    "bos_token_id",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "do_sample",
    "pad_token_id",
]
GEN_VALUES: list[object] = [
    None,
    True,
    0,
    -1,
    1,
    2,
    4,
    10**12,
    0.5,
    float("nan"),
    float("inf"),
    -1e308,
    "x",
    [],
    [2, 4],
    [1e9, "x", None],
    [-5, 10**30],
    {},
]
TEMPLATES: list[object] = [
    "{% for m in messages %}{{ m.content }",  # syntax error
    "{% if %}",
    "{{ raise_exception('this template refuses: ' + messages[0].role) }}",
    "{{ messages[5].content }}",  # undefined
    "{{ messages[0].content.upper() + messages[0].nope.attr }}",
    "{{ 1 / 0 }}",
    "{{ messages[0]['content'] | tojson(indent=2) }}{{ strftime_now('%Y') }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",  # unbounded recursion
    "{% set ns = namespace(_x=1) %}{{ ns._x }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ messages.__init__.__globals__ }}",
    # loops too long to finish: the sandbox caps one range() at 100000 items, not their nesting
    "{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}"
    "{% endfor %}{% endfor %}{% endfor %}",
    "{% for i in range(99999999999) %}{{ i }}{% endfor %}",
    # allocations sized by the template (100 MB each: refused before they are made)
    "{{ 'x' | center(100000000) }}",
    "{{ '{:>100000000}'.format(messages[0].role) }}",
    "{{ 'ab' * 100000000 }}",
    "{% generation %}{{ messages | length }}{% endgeneration %}",
    "{% for m in messages %}{% break %}{% endfor %}ok",
    "{{ messages | map(attribute='role') | join(',') }}",
    "",
    None,
    7,
    [{"name": "default", "template": "{{ messages[0].role }}"}],
    [{"name": "tool_use", "template": "x"}],
    [{"nope": 1}],
    {"default": 5},
    "\udcff{{ messages }}",
]
#: model files the fuzz may replace, per seed kind (beyond them: the directory itself)
HF_FILES = [
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
]
CHECKPOINT_FILES = ["state.json", "model.safetensors", "tokenizer.json", "config.json", "config.toml"]
_FILE_KINDS = ["missing", "directory", "fifo", "symlink-outside", "symlink-inside", "dangling", "loop"]
#: files that, as a symlink leaving the model directory, must stop the load (every one is read)
_MUST_REFUSE = {
    "hf": {"config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json",
           "tokenizer_config.json", "generation_config.json", "model-00001-of-00002.safetensors",
           "model-00002-of-00002.safetensors"},
    # the .gguf file itself is the path the user gives: a link to it (a hub cache blob) is followed
    "gguf": {"tokenizer.json", "tokenizer_config.json", "generation_config.json"},
    "checkpoint": {"state.json", "model.safetensors", "tokenizer.json"},
}  # fmt: skip


@dataclass
class Case:
    seed: str
    mutations: list[tuple] = field(default_factory=list)


# --- the seeds --------------------------------------------------------------------------------------
_MEMORY_FS = Path("/dev/shm")


@functools.cache
def _workdir() -> Path:
    memory = _MEMORY_FS.is_dir() and os.access(_MEMORY_FS, os.W_OK | os.X_OK)
    root = Path(tempfile.mkdtemp(prefix="anekit-fuzz-model-", dir=_MEMORY_FS if memory else None))
    atexit.register(shutil.rmtree, root, True)
    return root


def _config(kind: str):
    from ..model.config import ModelConfig

    common = dict(dim=16, hidden_dim=32, n_heads=2, n_kv_heads=1, vocab_size=VOCAB, seq_len=64)
    if kind == "qwen2-sharded":
        return ModelConfig("fuzz-qwen2", n_layers=2, tie_embeddings=False, qkv_bias=True, **common)
    if kind == "qwen3":
        return ModelConfig("fuzz-qwen3", n_layers=1, head_dim=12, qk_norm=True, **common)
    return ModelConfig(f"fuzz-{kind}", n_layers=1, **common)


def _tokenizer(directory: Path) -> None:
    """tokenizer.json (a BPE trained on a sentence, `SPECIALS` first) and tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator([_TEXT] * 4, trainer)
    if tok.get_vocab_size() > VOCAB or tok.token_to_id("<|im_end|>") != 4:
        raise AssertionError("the seed tokenizer does not fit the seed model")
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    generation = {
        "bos_token_id": 1,
        "eos_token_id": [2, 4],
        "do_sample": True,
        "temperature": 0.7,
        "top_k": 5,
    }
    (directory / "generation_config.json").write_text(json.dumps(generation), encoding="utf-8")


def _shard(directory: Path) -> None:
    """Split model.safetensors into two shards and an index (as transformers' save_pretrained does)."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(directory / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(directory / shard), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, shard)
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    (directory / "model.safetensors").unlink()


def _gguf(hf_dir: Path, directory: Path) -> bool:
    """The llama seed as a GGUF file (F32, q/k rows in interleaved order, as llama.cpp writes Llama)
    with the tokenizer files beside it; False without the gguf package."""
    try:
        import gguf
    except ImportError:
        return False
    from ..model.gguf import gguf_name
    from ..model.io import open_hf

    config, weights = open_hf(hf_dir)
    directory.mkdir()
    w = gguf.GGUFWriter(str(directory / "model.gguf"), "llama")
    for add, value in (
        (w.add_block_count, config.n_layers),
        (w.add_context_length, config.seq_len),
        (w.add_embedding_length, config.dim),
        (w.add_feed_forward_length, config.hidden_dim),
        (w.add_head_count, config.n_heads),
        (w.add_head_count_kv, config.n_kv_heads),
        (w.add_key_length, config.head_dim),
        (w.add_value_length, config.head_dim),
        (w.add_rope_dimension_count, config.head_dim),
        (w.add_layer_norm_rms_eps, config.norm_eps),
        (w.add_rope_freq_base, config.rope_theta),
        (w.add_vocab_size, config.vocab_size),
        (w.add_bos_token_id, 1),
        (w.add_eos_token_id, 4),
        (w.add_chat_template, CHAT_TEMPLATE),
    ):
        add(value)
    for name in weights:  # anekit's order is the interleaved one llama.cpp writes for llama
        w.add_tensor(gguf_name(name), np.ascontiguousarray(weights[name], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(hf_dir / name, directory / name)
    return True


@functools.cache
def seeds() -> dict[str, Path]:
    """Seed name -> a model directory that loads and runs (made once per process)."""
    from ..model.io import save_hf
    from ..model.reference import init_params

    out: dict[str, Path] = {}
    try:
        for kind in ("llama", "qwen2-sharded", "qwen3"):
            config = _config(kind)
            d = _workdir() / "seeds" / kind
            save_hf(d, config, init_params(config, 0), bos_token_id=1, eos_token_id=4)
            _tokenizer(d)
            if kind == "qwen2-sharded":
                _shard(d)
            out[kind] = d
        out["checkpoint"] = _checkpoint(out["llama"], _workdir() / "seeds" / "checkpoint")
        if _gguf(out["llama"], _workdir() / "seeds" / "gguf"):
            out["gguf"] = _workdir() / "seeds" / "gguf"
        for kind, d in out.items():
            _run(_target(kind, d))
    except Exception as e:  # not an AnekitError: a broken seed must not pass as refused cases
        raise RuntimeError(f"cannot make the seed model directories: {type(e).__name__}: {e}") from e
    return out


def _checkpoint(hf_dir: Path, directory: Path) -> Path:
    from ..model.io import load_hf
    from ..train.checkpoint import save_checkpoint
    from ..train.tokenizers import load_tokenizer

    config, params = load_hf(hf_dir)
    save_checkpoint(directory, config, params, tokenizer=load_tokenizer(hf_dir / "tokenizer.json"))
    return directory


def _target(kind: str, d: Path) -> Path:
    return d / "model.gguf" if kind == "gguf" else d


# --- making cases -----------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _mutation(rng: np.random.Generator, seed: str) -> tuple:
    """One mutation: (kind, arguments..., seed of its own random choices)."""
    return (*_mutation_args(rng, seed), int(rng.integers(0, 1 << 30)))


def _mutation_args(rng: np.random.Generator, seed: str) -> tuple:
    files = (
        CHECKPOINT_FILES if seed == "checkpoint" else HF_FILES + (["model.gguf"] if seed == "gguf" else [])
    )
    r = int(rng.integers(0, 16))
    if r in (0, 1):
        return ("config_set", _pick(rng, CONFIG_KEYS + ["extra"]), _pick(rng, JSON_VALUES))
    if r == 2:
        return ("config_del", _pick(rng, CONFIG_KEYS))
    if r == 3:
        return ("config_set", _pick(rng, ["rope_scaling", "rope_parameters"]), _pick(rng, ROPE_VALUES))
    if r == 4:
        return ("index", _pick(rng, _INDEX_KINDS))
    if r in (5, 6):
        return ("safetensors", _pick(rng, _SAFETENSORS_KINDS))
    if r == 7:
        return ("tokenizer", _pick(rng, _TOKENIZER_KINDS))
    if r == 8:
        return ("tokenizer_config", _pick(rng, _TOKENIZER_CONFIG_KINDS))
    if r in (9, 10):
        return ("template", int(rng.integers(len(TEMPLATES))))
    if r == 11:
        return ("gen_set", _pick(rng, GEN_KEYS), _pick(rng, GEN_VALUES))
    if r == 12:
        return (
            "raw",
            _pick(rng, files),
            _pick(rng, ["truncate", "flip", "empty", "garbage", "deep", "latin1"]),
        )
    if r == 13 and seed == "gguf":
        return ("raw", "model.gguf", _pick(rng, ["truncate", "flip", "flip", "empty"]))
    if r == 13 and seed == "checkpoint":
        return ("checkpoint", _pick(rng, ["state_set", "state_del", "config_toml"]))
    return ("file", _pick(rng, files), _pick(rng, _FILE_KINDS))


_INDEX_KINDS = [
    "missing-shard",
    "dotdot",
    "absolute",
    "absolute-copy",
    "duplicate",
    "wrong-shard",
    "not-a-dict",
    "empty",
    "non-string",
    "extra-tensor",
    "drop-tensor",
    "directory",
    "nul",
]
_SAFETENSORS_KINDS = [
    "length-huge",
    "length-short",
    "length-zero",
    "offsets",
    "offsets-overlap",
    "offsets-negative",
    "dtype",
    "shape",
    "shape-negative",
    "shape-huge",
    "truncate",
    "flip",
    "header-flip",
    "header-garbage",
    "header-not-object",
    "nan-weights",
]
_TOKENIZER_KINDS = [
    "broken-json",
    "truncate",
    "wrong-ids",
    "huge-id",
    "no-model",
    "empty-vocab",
    "not-object",
]
_TOKENIZER_CONFIG_KINDS = [
    "no-bos",
    "no-eos",
    "absent-tokens",
    "added-token-dict",
    "wrong-types",
    "special-map",
    "jinja-file",
    "jinja-file-only",
]


def make_case(rng: np.random.Generator) -> Case:
    names = list(seeds())  # made (tokenizers imported) on first use here, outside the case's time limit
    seed = _pick(rng, names)
    count = int(rng.choice([1, 1, 1, 2, 2, 3, 4]))
    return Case(seed, [_mutation(rng, seed) for _ in range(count)])


# --- applying mutations -----------------------------------------------------------------------------
def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _load_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if _regular(path) else None


def _writable(path: Path) -> bool:
    """Whether a mutation may write `path`: absent, or a regular file (writing a fifo would block the
    mutation itself, before anekit is called)."""
    return _regular(path) or not (path.exists() or path.is_symlink())


def _dump_json(path: Path, value) -> None:
    if _writable(path):
        path.write_text(json.dumps(value), encoding="utf-8")


def _edit_json_object(path: Path, edit) -> None:
    data = _load_json(path)
    if isinstance(data, dict):
        edit(data)
        _dump_json(path, data)


def _flip(data: bytearray, rng: np.random.Generator, count: int = 4, within: int | None = None) -> bytearray:
    end = min(len(data), within) if within else len(data)
    for _ in range(int(rng.integers(1, count + 1))):
        if end:
            data[int(rng.integers(end))] ^= 1 << int(rng.integers(8))
    return data


def _raw(path: Path, kind: str, rng: np.random.Generator) -> None:
    if not _regular(path):
        return
    raw = path.read_bytes()
    data = {
        "truncate": lambda: raw[: int(rng.integers(0, len(raw) + 1))],
        "flip": lambda: bytes(_flip(bytearray(raw), rng)),
        "empty": lambda: b"",
        "garbage": lambda: rng.integers(0, 256, 300, np.uint8).tobytes(),
        "deep": lambda: b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "latin1": lambda: raw.replace(b'"', b'"\xe9', 1),
    }[kind]()
    path.write_bytes(data)


def _shard_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*.safetensors") if _regular(p))


def _index(root: Path, outside: Path, kind: str, rng: np.random.Generator) -> None:
    path = root / "model.safetensors.index.json"
    if kind == "create" or not _regular(path):
        return
    data = _load_json(path)
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not wm:
        return
    keys = sorted(wm)
    key = _pick(rng, keys)
    first = wm[key]
    if kind == "missing-shard":
        (root / str(first)).unlink(missing_ok=True)
    elif kind == "dotdot":
        wm[key] = "../" + str(first)
        if _regular(root / str(first)):  # a valid copy there: only the path check can refuse it
            shutil.copy(root / str(first), root.parent / str(first))
    elif kind in ("absolute", "absolute-copy"):
        if kind == "absolute-copy" and _regular(root / str(first)):
            shutil.copy(root / str(first), outside / "shard.safetensors")
            wm[key] = str(outside / "shard.safetensors")
        else:
            wm[key] = "/etc/passwd"
    elif (
        kind == "duplicate"
    ):  # a name listed twice: JSON with a repeated key, the later one pointing elsewhere
        other = _pick(rng, sorted(set(map(str, wm.values()))))
        text = json.dumps(data)
        path.write_text(text[:-2] + f', "{key}": "{other}"' + "}}", encoding="utf-8")
        return
    elif kind == "wrong-shard":
        shards = sorted(set(map(str, wm.values())))
        wm[key] = _pick(rng, [s for s in shards if s != first] or shards)
    elif kind == "not-a-dict":
        data["weight_map"] = _pick(rng, [[key, first], "x", 5, None])
    elif kind == "empty":
        data["weight_map"] = {}
    elif kind == "non-string":
        wm[key] = _pick(rng, [None, 5, ["a"], {"a": 1}, True])
    elif kind == "extra-tensor":
        wm["model.layers.9.mlp.gate_proj.weight"] = first
    elif kind == "drop-tensor":
        del wm[key]
    elif kind == "directory":
        wm[key] = _pick(rng, [".", "", "..", "sub/"])
    elif kind == "nul":
        wm[key] = str(first) + "\0x"
    _dump_json(path, data)


def _safetensors(root: Path, kind: str, rng: np.random.Generator) -> None:
    files = _shard_files(root)
    if not files:
        return
    path = _pick(rng, files)
    raw = bytearray(path.read_bytes())
    if len(raw) < 8:
        return
    (n,) = struct.unpack("<Q", raw[:8])
    if kind in ("length-huge", "length-short", "length-zero"):
        new = {"length-huge": _pick(rng, [2**64 - 1, 2**40, len(raw)]), "length-short": max(0, n - 3),
               "length-zero": 0}[kind]  # fmt: skip
        path.write_bytes(struct.pack("<Q", new) + raw[8:])
        return
    if kind == "truncate":
        path.write_bytes(bytes(raw[: int(rng.integers(0, len(raw)))]))
        return
    if kind == "flip":
        path.write_bytes(bytes(_flip(raw, rng)))
        return
    if kind == "header-flip":
        path.write_bytes(bytes(raw[:8]) + bytes(_flip(raw[8 : 8 + n], rng)) + bytes(raw[8 + n :]))
        return
    if kind == "header-garbage":
        body = rng.integers(32, 127, n, np.uint8).tobytes()
        path.write_bytes(bytes(raw[:8]) + body + bytes(raw[8 + n :]))
        return
    try:
        header = json.loads(bytes(raw[8 : 8 + n]))
    except ValueError:
        return
    names = sorted(k for k in header if k != "__metadata__")
    if not names:
        return
    name = _pick(rng, names)
    entry = header[name]
    if kind == "header-not-object":
        header = _pick(rng, [[1, 2], "x", None, 5])
    elif kind == "offsets":
        bad_offsets = [[0, 10**12], [4, 4], [1, entry["data_offsets"][1] + 1], [10**30, 0], "0,4", [0]]
        entry["data_offsets"] = _pick(rng, [*bad_offsets, [0.5, 4], [None, None]])
    elif kind == "offsets-overlap":
        other = header[_pick(rng, names)]
        entry["data_offsets"] = list(other["data_offsets"])
    elif kind == "offsets-negative":
        entry["data_offsets"] = [-4, entry["data_offsets"][1]]
    elif kind == "dtype":
        entry["dtype"] = _pick(rng, ["F16", "BF16", "F64", "I32", "U8", "BOOL", "F8_E4M3", "f32", None, 3])
    elif kind == "shape":
        shape = list(entry["shape"])
        entry["shape"] = _pick(rng, [shape[::-1], shape + [1], shape[:-1], [], [0], [int(np.prod(shape))],
                                     [s * 2 for s in shape]])  # fmt: skip
    elif kind == "shape-negative":
        entry["shape"] = [-1] + list(entry["shape"])[1:]
    elif kind == "shape-huge":
        entry["shape"] = _pick(rng, [[2**62, 2**62], [10**30], [2**31, 2**31, 2**31], ["16", 16], [1.5]])
    elif kind == "nan-weights":  # valid header, non-finite values: the model must still answer
        begin, end = entry["data_offsets"]
        code = entry["dtype"]
        bad = {"F32": b"\x00\x00\xc0\x7f", "F16": b"\x00\x7e", "BF16": b"\xc0\x7f"}.get(code)
        if bad:
            at = 8 + n + begin
            raw[at : 8 + n + end] = bad * ((end - begin) // len(bad))
        path.write_bytes(bytes(raw))
        return
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(raw[8 + n :]))


def _tokenizer_file(root: Path, kind: str, rng: np.random.Generator) -> None:
    path = root / "tokenizer.json"
    if not _regular(path):
        return
    if kind == "broken-json":
        path.write_text(path.read_text(encoding="utf-8")[:-1] + ",,", encoding="utf-8")
        return
    if kind == "truncate":
        _raw(path, "truncate", rng)
        return
    data = _load_json(path)
    if not isinstance(data, dict):
        return
    if kind == "not-object":
        data = [data]
    elif kind == "no-model":
        data.pop("model", None)
    elif kind in ("wrong-ids", "huge-id", "empty-vocab"):
        model = data.get("model") or {}
        vocab = model.get("vocab") or {}
        if kind == "empty-vocab":
            model["vocab"], model["merges"] = {}, []
        elif vocab:
            tok = _pick(rng, sorted(vocab))
            vocab[tok] = _pick(rng, [-1, 10**6, 2**40, 0, "3"]) if kind == "wrong-ids" else 2**31 - 2
        for added in data.get("added_tokens") or []:
            if isinstance(added, dict) and rng.random() < 0.3:
                added["id"] = _pick(rng, [VOCAB + 5, 10**5, 2**32, -1, None])
    _dump_json(path, data)


def _tokenizer_config(root: Path, kind: str, rng: np.random.Generator) -> None:
    path = root / "tokenizer_config.json"
    jinja = root / "chat_template.jinja"
    if kind in ("jinja-file", "jinja-file-only") and not _writable(jinja):
        return
    if kind == "jinja-file":
        jinja.write_text(_pick(rng, [t for t in TEMPLATES if isinstance(t, str)]))
        _edit_json_object(path, lambda d: d.pop("chat_template", None))
        return
    if kind == "jinja-file-only":
        jinja.write_bytes(b"\xff\xfe{{ x }}")
        _edit_json_object(path, lambda d: d.pop("chat_template", None))
        return
    if kind == "special-map":
        value = _pick(rng, [{"eos_token": "<nope>"}, {"bos_token": {"content": 5}}, [1], {"eos_token": None}])
        _dump_json(root / "special_tokens_map.json", value)
        return

    def edit(d: dict) -> None:
        if kind == "no-bos":
            d.pop("bos_token", None)
        elif kind == "no-eos":
            d.pop("eos_token", None)
        elif kind == "absent-tokens":
            d["bos_token"], d["eos_token"] = "<not-a-token>", "<neither>"
        elif kind == "added-token-dict":
            d["eos_token"] = {"content": "<|im_end|>", "lstrip": False, "special": True}
        elif kind == "wrong-types":
            d[_pick(rng, ["bos_token", "eos_token", "pad_token", "unk_token"])] = _pick(
                rng, [5, [], None, {}, 1.5]
            )

    _edit_json_object(path, edit)


def _checkpoint_edit(root: Path, kind: str, rng: np.random.Generator) -> None:
    if kind == "config_toml":
        path = root / "config.toml"
        if _regular(path):
            text = path.read_text(encoding="utf-8")
            field_ = _pick(rng, ["dim", "n_layers", "vocab_size", "seq_len", "n_heads"])
            value = _pick(rng, ["0", "-1", "1e400", '"x"', "99999999999999999999", "nan", "[1]"])
            lines = [f"{field_} = {value}" if ln.startswith(f"{field_} ") else ln for ln in text.splitlines()]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return

    def edit(d: dict) -> None:
        key = _pick(rng, sorted(d) or ["x"])
        if kind == "state_del":
            d.pop(key, None)
        else:
            d[key] = _pick(rng, JSON_VALUES)

    _edit_json_object(root / "state.json", edit)


def _remove(path: Path, name: str, outside: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _replace_file(root: Path, name: str, kind: str, outside: Path, seed_kind: str) -> bool:
    """Replace model file `name` by something else; True when it became a symlink leaving the
    directory whose load must therefore fail."""
    path = root / name
    original = path.read_bytes() if _regular(path) else None
    if original is None and kind in ("symlink-outside", "symlink-inside"):
        return False
    _remove(path, name, outside)
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo" and hasattr(os, "mkfifo"):
        os.mkfifo(path)
    elif kind == "symlink-outside":
        target = outside / f"copy-of-{name}"
        target.write_bytes(original)
        path.symlink_to(target)
        return name in _MUST_REFUSE[seed_kind if seed_kind in _MUST_REFUSE else "hf"]
    elif kind == "symlink-inside":
        copy = root / f"inside-{name}"
        copy.write_bytes(original)
        path.symlink_to(copy.name)
    elif kind == "dangling":
        path.symlink_to(root / "nothing-here")
    elif kind == "loop":
        path.symlink_to(path.name)
    return False


def _apply(case: Case, work: Path) -> tuple[Path, bool]:
    """A damaged copy of the case's seed in `work`: (the path to load, whether a file it must read is
    now a symlink leaving the directory). Mutations read only regular files (a fifo would block
    them); one that cannot apply to what earlier ones left is skipped."""
    root = work / "model"
    outside = work / "outside"
    outside.mkdir()
    shutil.copytree(seeds()[case.seed], root, symlinks=True)
    escaping: set[str] = set()  # files now a symlink leaving the directory, which the load must refuse
    for m in case.mutations:
        if m[0] == "file":
            escaping.discard(m[1])  # replaced again (e.g. then deleted): no longer a link out
        try:
            if _apply_one(root, outside, case.seed, m[:-1], np.random.default_rng(m[-1])):
                escaping.add(m[1])
        except Exception:  # noqa: BLE001 - the mutation's own reading failed; anekit was not called yet
            continue
    return _target(case.seed, root), bool(escaping)


def _apply_one(root: Path, outside: Path, seed: str, m: tuple, rng: np.random.Generator) -> bool:
    kind = m[0]
    if kind == "config_set":
        _edit_json_object(root / "config.json", lambda d: d.__setitem__(m[1], m[2]))
    elif kind == "config_del":
        _edit_json_object(root / "config.json", lambda d: d.pop(m[1], None))
    elif kind == "gen_set":
        _edit_json_object(root / "generation_config.json", lambda d: d.__setitem__(m[1], m[2]))
    elif kind == "template":
        _edit_json_object(
            root / "tokenizer_config.json", lambda d: d.__setitem__("chat_template", TEMPLATES[m[1]])
        )
    elif kind == "index":
        _index(root, outside, m[1], rng)
    elif kind == "safetensors":
        _safetensors(root, m[1], rng)
    elif kind == "tokenizer":
        _tokenizer_file(root, m[1], rng)
    elif kind == "tokenizer_config":
        _tokenizer_config(root, m[1], rng)
    elif kind == "checkpoint":
        _checkpoint_edit(root, m[1], rng)
    elif kind == "raw":
        _raw(root / m[1], m[2], rng)
    elif kind == "file":
        return _replace_file(root, m[1], m[2], outside, seed)
    return False


# --- running a case ---------------------------------------------------------------------------------
def _run(path: Path) -> None:
    from ..llm import load

    model = load(path, backend="float64", max_len=MAX_LEN)
    try:
        logits = model.logits([1, 2, 3])
        if logits.shape != (3, model.config.vocab_size):
            raise AssertionError(f"logits of 3 tokens have shape {logits.shape}")
        done = model.generate("hello cat", max_tokens=2, seed=0)
        if done.completion_tokens > 2 or not isinstance(done.text, str):
            raise AssertionError(f"generate of 2 tokens gave {done!r}")
        if model.chat_template is not None:
            text = model.render_chat(MESSAGES)
            if not isinstance(text, str):
                raise AssertionError(f"render_chat gave {type(text).__name__}")
            reply = model.chat(MESSAGES, max_tokens=1)
            if reply.completion_tokens > 1:
                raise AssertionError(f"chat of 1 token gave {reply!r}")
    finally:
        model.close()


def run_case(case: Case) -> None:
    work = Path(tempfile.mkdtemp(dir=_workdir()))
    try:
        path, escaping = _apply(case, work)
        if escaping:
            from ..llm.source import open_model

            open_model(path)  # must refuse: the model reads a file through a link leaving the directory
            raise AssertionError("a model file that is a symlink leaving the model directory was read")
        _run(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def describe(case: Case) -> str:
    return f"seed {case.seed}: " + "; ".join(repr(m)[:300] for m in case.mutations)


__all__ = ["Case", "describe", "make_case", "run_case", "seeds"]
