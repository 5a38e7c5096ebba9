"""Import and export of model weights: llama2.c model files and the Hugging Face Llama layout.

Inside anekit, parameters are named by `ModelConfig.param_shapes()` and RoPE rotates interleaved
pairs (dims 2i, 2i+1 of a head; the llama2.c / Meta convention, ane-private-api.md §3.4). Hugging
Face Llama instead rotates dims i and i + head_dim/2 ("rotate half"). The two are the same model up
to a fixed permutation of each head's rows of wq and wk: HF row order within a head is the even
rows, then the odd rows. Export applies it and import inverts it; the scores q·k are unchanged
because q and k are permuted alike, and wv/wo are untouched.

llama2.c legacy model file (``stories15M.bin``; ane-private-api.md §5.1): 7 little-endian int32
(dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; vocab_size < 0 => separate
classifier), then fp32 arrays: embed [V,D], attn_norm [L,D], wq [L,Qd,D], wk [L,KVd,D], wv [L,KVd,D],
wo [L,D,Qd], ffn_norm [L,D], w1 [L,H,D], w2 [L,D,H], w3 [L,H,D], final_norm [D], then two legacy
RoPE tables (cos and sin, each seq_len x head_dim/2) that llama2.c's reader skips, then lm_head [V,D]
if untied. §5.1 does not list the two tables, but llama2.c's reader skips them and the published
file sizes only add up with them (stories15M.bin: 28 + 4 x 15,204,000 bytes); files without them
are accepted too. The header carries no RoPE theta, scaling or norm epsilon: import uses 10000, none
and 1e-5 (llama2.c's fixed values, §5.1), and export cannot record other values (it refuses them).

Hugging Face ``config.json`` keeps its RoPE settings in two ways, and both are read: transformers 5
writes ``rope_parameters`` = {"rope_type": ..., "rope_theta": ..., plus the type's keys}; 4.x wrote
``rope_theta`` and ``rope_scaling`` (the oldest with "type" for "rope_type"). Export writes both, so
either version loads it. RoPE scaling type "llama3" is imported (`anekit.model.config.RopeScaling`);
any other type is refused by name, never ignored.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

from ..errors import AnekitError
from ..kernels.rope import rope_tables
from .config import ModelConfig, RopeScaling

_LLAMA2C_HEADER = struct.Struct("<7i")
_LLAMA2C_V1_MAGIC = 0x616B3432  # "ak42": llama2.c's later versioned export formats (not the legacy one)
_LEGACY_ROPE_THETA, _LEGACY_NORM_EPS = 10000.0, 1e-5


class ModelFileError(AnekitError, ValueError):
    """A model file that cannot be imported or exported as asked; says which file and what."""


# ---------------------------------------------------------------------------------------------
# llama2.c


def _llama2c_layout(config: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of each array in file order, a stacked per-layer array named by its field."""
    D, H, L, V = config.dim, config.hidden_dim, config.n_layers, config.vocab_size
    Q, KV = config.q_dim, config.kv_dim
    return [
        ("embed", (V, D)),
        ("attn_norm", (L, D)),
        ("wq", (L, Q, D)),
        ("wk", (L, KV, D)),
        ("wv", (L, KV, D)),
        ("wo", (L, D, Q)),
        ("ffn_norm", (L, D)),
        ("w1", (L, H, D)),
        ("w2", (L, D, H)),
        ("w3", (L, H, D)),
        ("final_norm", (D,)),
    ]


def _legacy_rope_tables(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of position·theta^(-2i/head_dim), [seq_len, head_dim/2]: what the legacy tables held."""
    cos, sin = rope_tables(config.head_dim, config.seq_len, config.rope_theta, config.rope_scaling)
    return cos.astype(np.float32), sin.astype(np.float32)


def load_llama2c(path: str | Path, name: str | None = None) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config, fp32 params) from a llama2.c legacy model file (module docstring, §5.1)."""
    p = Path(path)
    try:
        data = np.memmap(p, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{p}: cannot read model file: {e}") from e
    if len(data) < _LLAMA2C_HEADER.size:
        raise ModelFileError(f"{p}: {len(data)} bytes is too short for a llama2.c model header (28 bytes)")
    header = _LLAMA2C_HEADER.unpack(bytes(data[: _LLAMA2C_HEADER.size]))
    if header[0] == _LLAMA2C_V1_MAGIC:
        raise ModelFileError(
            f"{p}: a versioned llama2.c export (magic 'ak42', version {header[1]}); only the legacy "
            "(version 0) format is read: re-export the model in the legacy format"
        )
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = header
    tied = vocab > 0
    try:
        config = ModelConfig(
            name=name or p.stem,
            dim=dim,
            hidden_dim=hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            vocab_size=abs(vocab),
            seq_len=seq_len,
            rope_theta=_LEGACY_ROPE_THETA,
            norm_eps=_LEGACY_NORM_EPS,
            tie_embeddings=tied,
        )
    except ValueError as e:
        raise ModelFileError(f"{p}: header {list(header)} is not a valid llama2.c model header: {e}") from e

    layout = _llama2c_layout(config)
    n_body = sum(int(np.prod(s)) for _, s in layout)
    n_tables = config.seq_len * config.head_dim  # cos + sin, each seq_len * head_dim / 2
    n_cls = 0 if tied else config.vocab_size * config.dim
    have = (len(data) - _LLAMA2C_HEADER.size) / 4
    if have == n_body + n_tables + n_cls:
        skip = n_tables
    elif have == n_body + n_cls:
        skip = 0
    else:
        with_tables = _LLAMA2C_HEADER.size + 4 * (n_body + n_tables + n_cls)
        raise ModelFileError(
            f"{p}: {len(data)} bytes does not match its header {list(header)}: expected {with_tables} "
            f"bytes (with the legacy RoPE tables) or {with_tables - 4 * n_tables} (without). "
            "Truncated, or not a llama2.c model file?"
        )
    floats = np.frombuffer(data, dtype="<f4", offset=_LLAMA2C_HEADER.size)
    pos = 0
    stacked: dict[str, np.ndarray] = {}
    for field, shape in layout:
        n = int(np.prod(shape))
        stacked[field] = floats[pos : pos + n].reshape(shape)
        pos += n
    pos += skip
    params: dict[str, np.ndarray] = {"embed": np.array(stacked["embed"], dtype=np.float32)}
    for i in range(config.n_layers):
        for field in ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"):
            params[f"layers.{i}.{field}"] = np.array(stacked[field][i], dtype=np.float32)
    params["final_norm"] = np.array(stacked["final_norm"], dtype=np.float32)
    if not tied:
        params["lm_head"] = np.array(
            floats[pos : pos + n_cls].reshape(config.vocab_size, config.dim), dtype=np.float32
        )
    return config, _ordered(config, params)


def save_llama2c(path: str | Path, config: ModelConfig, params: dict[str, np.ndarray]) -> None:
    """Write a llama2.c legacy model file (with the legacy RoPE tables, as llama2.c's exporter did)."""
    _check_params(config, params, str(path))
    if config.q_dim != config.dim:
        raise ModelFileError(
            f"llama2.c files assume head_dim = dim / n_heads; config {config.name!r} has head_dim "
            f"{config.head_dim} (q_dim {config.q_dim} != dim {config.dim})"
        )
    if config.rope_theta != _LEGACY_ROPE_THETA or config.norm_eps != _LEGACY_NORM_EPS:
        raise ModelFileError(
            f"llama2.c files cannot record rope_theta {config.rope_theta} / norm_eps {config.norm_eps}; "
            f"readers assume {_LEGACY_ROPE_THETA} / {_LEGACY_NORM_EPS}"
        )
    if config.rope_scaling is not None:
        raise ModelFileError(
            f"llama2.c files cannot record RoPE scaling ({config.rope_scaling.rope_type}); readers assume "
            "plain RoPE. Export it in the Hugging Face layout instead (save_hf)"
        )
    vocab = config.vocab_size if config.tie_embeddings else -config.vocab_size
    header = _LLAMA2C_HEADER.pack(
        config.dim,
        config.hidden_dim,
        config.n_layers,
        config.n_heads,
        config.n_kv_heads,
        vocab,
        config.seq_len,
    )
    L = config.n_layers
    with open(path, "wb") as f:
        f.write(header)
        for field, _shape in _llama2c_layout(config):
            if field in ("embed", "final_norm"):
                arrays = [params[field]]
            else:
                arrays = [params[f"layers.{i}.{field}"] for i in range(L)]
            for a in arrays:
                f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
        for table in _legacy_rope_tables(config):
            f.write(table.astype("<f4").tobytes())
        if not config.tie_embeddings:
            f.write(np.ascontiguousarray(params["lm_head"], dtype="<f4").tobytes())


# ---------------------------------------------------------------------------------------------
# Hugging Face Llama


def interleaved_to_half(w: np.ndarray, n_heads: int, head_dim: int) -> np.ndarray:
    """Rows of a q/k projection from interleaved-pair RoPE order to HF rotate-half order, per head:
    within each head, rows 0, 2, 4, ... then 1, 3, 5, ..."""
    cols = w.shape[1]
    return w.reshape(n_heads, head_dim // 2, 2, cols).transpose(0, 2, 1, 3).reshape(n_heads * head_dim, cols)


def half_to_interleaved(w: np.ndarray, n_heads: int, head_dim: int) -> np.ndarray:
    """Inverse of `interleaved_to_half`."""
    cols = w.shape[1]
    return w.reshape(n_heads, 2, head_dim // 2, cols).transpose(0, 2, 1, 3).reshape(n_heads * head_dim, cols)


_HF_LAYER = {
    "attn_norm": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "ffn_norm": "post_attention_layernorm.weight",
    "w1": "mlp.gate_proj.weight",
    "w3": "mlp.up_proj.weight",
    "w2": "mlp.down_proj.weight",
}
_HF_GLOBAL = {
    "embed": "model.embed_tokens.weight",
    "final_norm": "model.norm.weight",
    "lm_head": "lm_head.weight",
}


def hf_name(name: str) -> str:
    """The Hugging Face Llama tensor name of an anekit parameter name."""
    if name in _HF_GLOBAL:
        return _HF_GLOBAL[name]
    _, i, field = name.split(".")
    return f"model.layers.{i}.{_HF_LAYER[field]}"


def hf_config(
    config: ModelConfig, bos_token_id: int = 1, eos_token_id: int = 2, dtype: str = "float32"
) -> dict:
    """``config.json`` for ``LlamaForCausalLM``, readable by transformers 5 (``rope_parameters``,
    ``dtype``) and 4.x (``rope_theta``, ``rope_scaling``, ``torch_dtype``)."""
    scaling = None if config.rope_scaling is None else config.rope_scaling.__dict__.copy()
    rope = {"rope_type": "default", "rope_theta": config.rope_theta} | (scaling or {})
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": rope,
        "rope_theta": config.rope_theta,
        "rope_scaling": scaling,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "dtype": dtype,
        "torch_dtype": dtype,
        "anekit_name": config.name,
    }


def to_hf_tensors(config: ModelConfig, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """anekit params -> HF names, wq/wk permuted to rotate-half order. Tied models get no lm_head."""
    out = {}
    for name, w in params.items():
        field = name.rsplit(".", 1)[-1]
        if field == "wq":
            w = interleaved_to_half(w, config.n_heads, config.head_dim)
        elif field == "wk":
            w = interleaved_to_half(w, config.n_kv_heads, config.head_dim)
        out[hf_name(name)] = w
    return out


def save_hf(
    directory: str | Path,
    config: ModelConfig,
    params: dict[str, np.ndarray],
    dtype: str = "float32",
    bos_token_id: int = 1,
    eos_token_id: int = 2,
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` in the Hugging Face Llama layout.

    `dtype` is "float32" or "float16" (NumPy has no bfloat16 to write).
    """
    from safetensors.numpy import save_file

    np_dtype = {"float32": np.float32, "float16": np.float16}.get(dtype)
    if np_dtype is None:
        raise ModelFileError(f"dtype {dtype!r} is not supported for export; use 'float32' or 'float16'")
    _check_params(config, params, str(directory))
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v, dtype=np_dtype) for k, v in to_hf_tensors(config, params).items()}
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    cfg = hf_config(config, bos_token_id, eos_token_id, dtype)
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return d


_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file as fp32 NumPy arrays, including bfloat16 ones (which the
    `safetensors` NumPy API cannot return). Format: u64 header length, JSON header, raw data."""
    p = Path(path)
    try:
        raw = np.memmap(p, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{p}: cannot read: {e}") from e
    try:
        (n,) = struct.unpack("<Q", bytes(raw[:8]))
        header = json.loads(bytes(raw[8 : 8 + n]))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (struct.error, ValueError, RecursionError) as e:
        raise ModelFileError(f"{p}: not a safetensors file ({e})") from e
    out = {}
    for name, info in header.items():
        if name != "__metadata__":
            out[name] = _safetensors_tensor(p, raw, 8 + n, name, info)
    return out


def _safetensors_tensor(p: Path, raw: np.ndarray, base: int, name: str, info) -> np.ndarray:
    try:
        dt = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dt is None:
            raise ModelFileError(
                f"{p}: tensor {name} has dtype {info.get('dtype')}; only float tensors are read"
            )
        begin, end = (int(x) for x in info["data_offsets"])
        shape = tuple(int(d) for d in info["shape"])
        count = math.prod(shape)
        if (
            min(shape, default=0) < 0
            or not 0 <= begin <= end
            or base + end > len(raw)
            or end - begin != count * np.dtype(dt).itemsize
        ):
            raise ModelFileError(
                f"{p}: tensor {name} data is truncated or inconsistent with its shape {shape}"
            )
        arr = np.frombuffer(raw, dtype=dt, count=count, offset=base + begin)
    except ModelFileError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{p}: tensor {name}: malformed header entry {info!r:.120} ({e})") from None
    if info["dtype"] == "BF16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32).reshape(shape)


def _read_hf_tensors(d: Path) -> dict[str, np.ndarray]:
    single, index = d / "model.safetensors", d / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as e:
            raise ModelFileError(f"{index}: not a safetensors index with a weight_map ({e!r:.120})") from None
        out: dict[str, np.ndarray] = {}
        for shard in shards:
            out |= read_safetensors(_inside(d, shard, index))
        return out
    if (d / "pytorch_model.bin").is_file():
        raise ModelFileError(f"{d}: has only pytorch_model.bin; convert it to safetensors first")
    raise ModelFileError(f"{d}: no model.safetensors or model.safetensors.index.json")


def _inside(d: Path, name, where: Path) -> Path:
    """`d / name`, refused unless it resolves (after symlinks) to a file inside `d`."""
    if not isinstance(name, str) or not name:
        raise ModelFileError(f"{where}: shard name {name!r} is not a file name")
    p = (d / name).resolve()
    if not p.is_relative_to(d.resolve()):
        raise ModelFileError(f"{where}: shard {name!r} lies outside the model directory {d}; refused")
    return p


def config_from_hf(cfg: dict, name: str = "hf") -> ModelConfig:
    """A ModelConfig from a Hugging Face Llama ``config.json`` dict (HF's defaults for absent fields)."""
    if not isinstance(cfg, dict):
        raise ModelFileError(f"config.json holds {type(cfg).__name__}, not a JSON object")
    if cfg.get("model_type") != "llama":
        raise ModelFileError(
            f"model_type {cfg.get('model_type')!r} is not 'llama'; only the Llama layout is imported"
        )
    if cfg.get("hidden_act", "silu") != "silu":
        raise ModelFileError(f"hidden_act {cfg['hidden_act']!r} is not supported (SwiGLU with silu only)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ModelFileError("attention_bias/mlp_bias are not supported (anekit models have no biases)")
    missing = [
        k
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "vocab_size",
        )
        if k not in cfg
    ]
    if missing:
        raise ModelFileError(f"config.json lacks {', '.join(missing)} (required for a Llama model)")
    theta, scaling = rope_from_hf(cfg)
    return ModelConfig(
        name=cfg.get("anekit_name", name),
        dim=cfg["hidden_size"],
        hidden_dim=cfg["intermediate_size"],
        n_layers=cfg["num_hidden_layers"],
        n_heads=cfg["num_attention_heads"],
        n_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        vocab_size=cfg["vocab_size"],
        seq_len=cfg.get("max_position_embeddings", 2048),
        head_dim=cfg.get("head_dim"),  # None: hidden_size // num_attention_heads, as HF derives it
        rope_theta=theta,
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        tie_embeddings=cfg.get("tie_word_embeddings", False),
        rope_scaling=scaling,
    )


#: Keys a Llama config.json may hold in rope_parameters / rope_scaling, by rope type.
_ROPE_KEYS = {
    "default": {"rope_type", "rope_theta", "partial_rotary_factor"},
    "llama3": {
        "rope_type",
        "rope_theta",
        "partial_rotary_factor",
        "factor",
        "low_freq_factor",
        "high_freq_factor",
        "original_max_position_embeddings",
    },
}
_HF_DEFAULT_THETA = 10000.0  # transformers' default_theta when a config names none


def _rope_part(key: str, part: object) -> dict:
    """One of ``rope_parameters`` / ``rope_scaling``, checked, with "type" spelled "rope_type"."""
    if not isinstance(part, dict):
        raise ModelFileError(f"{key} must be a JSON object or null, got {part!r}")
    part = dict(part)
    if "type" in part:  # the oldest spelling of rope_type
        old = part.pop("type")
        if part.setdefault("rope_type", old) != old:
            raise ModelFileError(f"{key} gives type {old!r} and rope_type {part['rope_type']!r}")
    nested = [k for k, v in part.items() if isinstance(v, dict)]
    if nested:
        raise ModelFileError(
            f"{key} gives RoPE parameters per layer type ({', '.join(nested)}); Llama uses one set"
        )
    return part


def _merged_rope_params(cfg: dict) -> dict:
    """``rope_parameters``, ``rope_scaling`` and top-level ``rope_theta`` / ``partial_rotary_factor``
    as one dict; any two that give the same key must agree."""
    merged: dict = {}
    for key in ("rope_parameters", "rope_scaling"):
        part = cfg.get(key)
        if part is None:
            continue
        for k, v in _rope_part(key, part).items():
            if k in merged and merged[k] != v:
                raise ModelFileError(
                    f"rope_parameters and rope_scaling disagree on {k}: {merged[k]!r} vs {v!r}"
                )
            merged[k] = v
    for k in ("rope_theta", "partial_rotary_factor"):
        if k in cfg and k in merged and cfg[k] != merged[k]:
            raise ModelFileError(f"{k} {cfg[k]!r} disagrees with the {merged[k]!r} in rope_parameters")
        if k in cfg:
            merged.setdefault(k, cfg[k])
    return merged


def _check_rope_keys(rope_type: str, merged: dict) -> None:
    """Refuse an unsupported scaling type or a key that type does not take."""
    allowed = _ROPE_KEYS.get(rope_type)
    if allowed is None:
        raise ModelFileError(
            f"RoPE scaling type {rope_type!r} is not supported: anekit imports 'llama3' scaling or plain "
            "RoPE ('default'); linear, dynamic, yarn, longrope and other types are not"
        )
    extra = sorted(set(merged) - allowed)
    if extra:
        raise ModelFileError(
            f"RoPE parameters {', '.join(extra)} are not understood for rope_type {rope_type!r}"
        )


def rope_from_hf(cfg: dict) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from a Llama ``config.json``: ``rope_parameters`` (transformers 5),
    ``rope_theta`` + ``rope_scaling`` (4.x), or both (they must agree). As transformers does, a
    "llama3" entry without ``original_max_position_embeddings`` takes ``max_position_embeddings``.
    Scaling types other than "llama3", per-layer RoPE and partial rotary dims are refused."""
    merged = _merged_rope_params(cfg)
    rope_type = merged.pop("rope_type", None) or "default"
    _check_rope_keys(rope_type, merged)
    if merged.pop("partial_rotary_factor", 1.0) != 1.0:
        raise ModelFileError("partial_rotary_factor other than 1 is not supported (RoPE on every head dim)")
    theta = merged.pop("rope_theta", _HF_DEFAULT_THETA)
    if rope_type == "default":
        return theta, None
    merged.setdefault("original_max_position_embeddings", cfg.get("max_position_embeddings"))
    missing = sorted(
        _ROPE_KEYS[rope_type] - {"rope_theta", "partial_rotary_factor", "rope_type"} - set(merged)
    )
    if missing:
        raise ModelFileError(f"rope_scaling of type {rope_type!r} lacks {', '.join(missing)}")
    return theta, RopeScaling(rope_type=rope_type, **merged)


def from_hf_tensors(
    config: ModelConfig, tensors: dict[str, np.ndarray], where: str = ""
) -> dict[str, np.ndarray]:
    """HF-named tensors -> anekit params (inverse permutation of wq/wk). Ignores RoPE buffers and a
    tied model's duplicate lm_head; any other unknown tensor is an error."""
    by_hf = {hf_name(n): n for n in config.param_shapes()}
    params: dict[str, np.ndarray] = {}
    for key, w in tensors.items():
        name = by_hf.get(key)
        if name is None:
            if key.endswith("rotary_emb.inv_freq") or (key == "lm_head.weight" and config.tie_embeddings):
                continue
            raise ModelFileError(f"{where}: unexpected tensor {key} for a Llama model (biases, QK-norm?)")
        field = name.rsplit(".", 1)[-1]
        if field in ("wq", "wk"):
            heads = config.n_heads if field == "wq" else config.n_kv_heads
            if w.ndim != 2 or w.shape[0] != heads * config.head_dim:
                raise ModelFileError(f"{where}: tensor {key} has shape {list(w.shape)}, config disagrees")
            w = half_to_interleaved(w, heads, config.head_dim)
        params[name] = np.ascontiguousarray(w, dtype=np.float32)
    if "lm_head" in config.param_shapes() and "lm_head" not in params:
        raise ModelFileError(
            f"{where}: missing tensor lm_head.weight, and tie_word_embeddings is false (Hugging Face's "
            "default when config.json omits it); set it to true if the classifier shares the embedding"
        )
    _check_params(config, params, where, hf=True)
    return _ordered(config, params)


def load_hf(directory: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config, fp32 params) from a Hugging Face Llama directory (config.json + safetensors)."""
    d = Path(directory)
    try:
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{d}: no config.json (not a Hugging Face model directory)") from None
    except (OSError, ValueError, RecursionError) as e:
        raise ModelFileError(f"{d / 'config.json'}: cannot read: {e}") from None
    try:
        config = config_from_hf(cfg, name=d.name)
    except ValueError as e:
        raise ModelFileError(f"{d / 'config.json'}: {e}") from e
    return config, from_hf_tensors(config, _read_hf_tensors(d), str(d))


def load_pretrained(path: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Weights from a llama2.c model file or a Hugging Face Llama directory, by what `path` is."""
    p = Path(path)
    if p.is_dir():
        if (p / "config.json").is_file():
            return load_hf(p)
        if (p / "state.json").is_file():
            raise ModelFileError(f"{p}: is an anekit checkpoint; load it with anekit.train.checkpoint")
        raise ModelFileError(f"{p}: directory has no config.json (Hugging Face) model")
    if p.suffix == ".safetensors" and (p.parent / "config.json").is_file():
        return load_hf(p.parent)
    if p.is_file():
        return load_llama2c(p)
    raise ModelFileError(f"{p}: no such model file or directory")


# ---------------------------------------------------------------------------------------------


def _check_params(config: ModelConfig, params: dict[str, np.ndarray], where: str, hf: bool = False) -> None:
    for name, shape in config.param_shapes().items():
        shown = hf_name(name) if hf else name
        if name not in params:
            raise ModelFileError(f"{where}: missing tensor {shown} for config {config.name!r}")
        got = list(np.shape(params[name]))
        if tuple(got) != shape:
            raise ModelFileError(f"{where}: tensor {shown} has shape {got}, config needs {list(shape)}")
    extra = sorted(set(params) - set(config.param_shapes()))
    if extra:
        raise ModelFileError(f"{where}: unexpected tensor(s) {', '.join(extra)} for config {config.name!r}")


def _ordered(config: ModelConfig, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: params[k] for k in config.param_shapes()}
