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
import mmap
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import AnekitError
from ..kernels.rope import rope_tables
from ..safe_dir import check_regular_file, not_regular
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
# Hugging Face: Llama, Mistral, Qwen2, Qwen3


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
    "bq": "self_attn.q_proj.bias",
    "bk": "self_attn.k_proj.bias",
    "bv": "self_attn.v_proj.bias",
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
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
    """The Hugging Face tensor name of an anekit parameter name (the same in all four families)."""
    if name in _HF_GLOBAL:
        return _HF_GLOBAL[name]
    _, i, field = name.split(".")
    return f"model.layers.{i}.{_HF_LAYER[field]}"


def _rope_heads(config: ModelConfig, field: str) -> int | None:
    """How many RoPE heads the rows of parameter `field` hold (None: not in RoPE order). q_norm and
    k_norm are one head's weights, permuted like each head's rows (module docstring)."""
    if field in ("wq", "bq"):
        return config.n_heads
    if field in ("wk", "bk"):
        return config.n_kv_heads
    if field in ("q_norm", "k_norm"):
        return 1
    return None


def _permute(w: np.ndarray, heads: int, head_dim: int, to_half: bool) -> np.ndarray:
    f = interleaved_to_half if to_half else half_to_interleaved
    return f(w, heads, head_dim) if w.ndim == 2 else f(w[:, None], heads, head_dim)[:, 0]


def _hf_model_type(config: ModelConfig) -> str:
    """The HF family that holds exactly the features of `config` (export)."""
    features = [f for f in ("qkv_bias", "qk_norm") if getattr(config, f)]
    features += ["sliding_window"] if config.sliding_window is not None else []
    if len(features) > 1:
        raise ModelFileError(
            f"config {config.name!r} uses {' and '.join(features)}: no Hugging Face family anekit exports "
            "has both (qwen2: qkv_bias, qwen3: qk_norm, mistral: sliding_window)"
        )
    return {"qkv_bias": "qwen2", "qk_norm": "qwen3", "sliding_window": "mistral"}.get(
        features[0] if features else "", "llama"
    )


_HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def hf_config(
    config: ModelConfig, bos_token_id: int = 1, eos_token_id: int = 2, dtype: str = "float32"
) -> dict:
    """``config.json`` for the HF family of `config` (llama; qwen2 with qkv_bias, qwen3 with qk_norm,
    mistral with sliding_window), readable by transformers 5 (``rope_parameters``, ``dtype``) and 4.x
    (``rope_theta``, ``rope_scaling``, ``torch_dtype``)."""
    model_type = _hf_model_type(config)
    scaling = None if config.rope_scaling is None else config.rope_scaling.__dict__.copy()
    rope = {"rope_type": "default", "rope_theta": config.rope_theta} | (scaling or {})
    out = {
        "architectures": [_HF_ARCHITECTURES[model_type]],
        "model_type": model_type,
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
        "attention_dropout": 0.0,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "dtype": dtype,
        "torch_dtype": dtype,
        "anekit_name": config.name,
    }
    if model_type == "llama":
        out |= {"attention_bias": False, "mlp_bias": False}
    elif model_type == "mistral":
        out["sliding_window"] = config.sliding_window
    else:
        out |= {"use_sliding_window": False, "sliding_window": None}
        if model_type == "qwen3":
            out["attention_bias"] = False
    return out


def to_hf_tensors(config: ModelConfig, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """anekit params -> HF names, q/k rows (and bq/bk/q_norm/k_norm) permuted to rotate-half order.
    Tied models get no lm_head."""
    out = {}
    for name, w in params.items():
        heads = _rope_heads(config, name.rsplit(".", 1)[-1])
        if heads is not None:
            w = _permute(np.asarray(w), heads, config.head_dim, to_half=True)
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
    """Write ``config.json`` and ``model.safetensors`` in the Hugging Face layout of `config`'s
    family (`hf_config`).

    `dtype` is "float32" or "float16" (NumPy has no bfloat16 to write).
    """
    from safetensors.numpy import save_file

    np_dtype = {"float32": np.float32, "float16": np.float16}.get(dtype)
    if np_dtype is None:
        raise ModelFileError(f"dtype {dtype!r} is not supported for export; use 'float32' or 'float16'")
    _check_params(config, params, str(directory))
    cfg = hf_config(config, bos_token_id, eos_token_id, dtype)  # refuses a config no family holds
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v, dtype=np_dtype) for k, v in to_hf_tensors(config, params).items()}
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return d


# -- safetensors, memory-mapped ------------------------------------------------------------------

_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}
#: the safetensors format caps its JSON header at 100 MB (huggingface/safetensors, "Format")
_MAX_SAFETENSORS_HEADER = 100 << 20


class SafetensorsFile:
    """One safetensors file (u64 header length, JSON header, raw little-endian data), memory-mapped
    once. The header is parsed and every entry checked against the file's size when the file is
    opened; a tensor's bytes are read only when it is asked for, straight from the mapping.

    `array(name)` is a read-only view of the mapping in the stored dtype (bf16 as its uint16 bits);
    `floats(name)` is the same view for f32/f16/f64 and a new float32 array for bf16 (NumPy has no
    bfloat16: its bits are the upper half of a float32's)."""

    def __init__(self, path: str | Path):
        p = Path(path)
        self.path = p
        try:
            mode = os.stat(p).st_mode
        except OSError as e:
            raise ModelFileError(f"{p}: cannot read: {e.strerror or e}") from None
        kind = not_regular(mode)
        if kind is not None:  # a FIFO would block np.memmap; a directory is never a weight file
            raise ModelFileError(f"{p}: is {kind}; a safetensors weight file must be a regular file")
        try:
            with open(p, "rb") as f:  # the mapping outlives the descriptor
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:  # ValueError: an empty file cannot be mapped
            raise ModelFileError(
                f"{p}: cannot read: {e} (an empty or unreadable file; download it again)"
            ) from e
        self._raw = raw = np.frombuffer(self._map, dtype=np.uint8)  # read-only: ACCESS_READ
        try:
            if len(raw) < 8:
                raise ValueError(f"{len(raw)} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", bytes(raw[:8]))
            if n > _MAX_SAFETENSORS_HEADER or 8 + n > len(raw):
                raise ValueError(f"header length {n} does not fit the file's {len(raw)} bytes")
            header = json.loads(bytes(raw[8 : 8 + n]))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
        except (struct.error, ValueError, RecursionError) as e:
            raise ModelFileError(f"{p}: not a safetensors file ({e})") from e
        self._base = 8 + n
        self._entries = {
            name: self._entry(name, info) for name, info in header.items() if name != "__metadata__"
        }

    def _entry(self, name: str, info) -> tuple[str, tuple[int, ...], int]:
        p = self.path
        try:
            code = info.get("dtype")
            if code not in _SAFETENSORS_DTYPES:
                raise ModelFileError(
                    f"{p}: tensor {name} has dtype {code}; only float tensors (F32, F16, BF16, F64) are read"
                )
            begin, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(d) for d in info["shape"])
            count = math.prod(shape)
            if (
                min(shape, default=0) < 0
                or not 0 <= begin <= end
                or self._base + end > len(self._raw)
                or end - begin != count * np.dtype(_SAFETENSORS_DTYPES[code]).itemsize
            ):
                raise ModelFileError(
                    f"{p}: tensor {name} data is truncated or inconsistent with its shape {shape} "
                    f"(a partial download? the file has {len(self._raw)} bytes)"
                )
        except ModelFileError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{p}: tensor {name}: malformed header entry {info!r:.120} ({e})") from None
        return code, shape, begin

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def dtype(self, name: str) -> str:
        """The stored dtype code: "F32", "F16", "BF16" or "F64"."""
        return self._entries[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def nbytes(self, name: str) -> int:
        code, shape, _ = self._entries[name]
        return math.prod(shape) * np.dtype(_SAFETENSORS_DTYPES[code]).itemsize

    def array(self, name: str) -> np.ndarray:
        code, shape, begin = self._entries[name]
        dt = np.dtype(_SAFETENSORS_DTYPES[code])
        count = math.prod(shape)
        if count == 0:
            return np.zeros(shape, dtype=dt)
        return np.frombuffer(self._raw, dtype=dt, count=count, offset=self._base + begin).reshape(shape)

    def release(self, name: str) -> None:
        """Drop the pages of tensor `name` from this process's resident memory (madvise DONTNEED on
        the file-backed, read-only mapping: the data stays valid, a later access reads the file
        again). For a reader that copies the weights out once, so that the mapped pages of tensors
        already copied do not count twice."""
        _, _, begin = self._entries[name]
        start = self._base + begin
        end = start + self.nbytes(name)
        page = mmap.PAGESIZE
        first, last = -(-start // page) * page, end // page * page  # only pages wholly inside
        advise = getattr(self._map, "madvise", None)
        if advise is not None and hasattr(mmap, "MADV_DONTNEED") and last > first:
            advise(mmap.MADV_DONTNEED, first, last - first)

    def floats(self, name: str) -> np.ndarray:
        a = self.array(name)
        if self.dtype(name) == "BF16":
            wide = a.astype(np.uint32)
            wide <<= 16  # in place: one new array per tensor, no temporary
            return wide.view(np.float32)
        return a


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file as new fp32 NumPy arrays, including bfloat16 ones (which the
    `safetensors` NumPy API cannot return)."""
    f = SafetensorsFile(path)
    return {name: np.array(f.floats(name), dtype=np.float32) for name in f.names}


# -- Hugging Face config.json --------------------------------------------------------------------

#: transformers' defaults for the keys a config.json may leave out, per model_type (transformers 5,
#: models/<type>/configuration_<type>.py); num_key_value_heads None means num_attention_heads.
_HF_DEFAULTS = {
    "llama": {"num_key_value_heads": None, "max_position_embeddings": 2048, "head_dim": None},
    "mistral": {
        "num_key_value_heads": 8,
        "max_position_embeddings": 4096 * 32,
        "head_dim": None,
        "sliding_window": 4096,
    },
    "qwen2": {"num_key_value_heads": 32, "max_position_embeddings": 32768, "head_dim": None},
    "qwen3": {"num_key_value_heads": 32, "max_position_embeddings": 32768, "head_dim": 128},
}
_HF_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_QWEN_WINDOW = {"use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28}


def _hf_sliding_window(cfg: dict, model_type: str, n_layers) -> int | None:
    """The one sliding window all layers use, or None. Mistral: ``sliding_window`` (null: none; absent:
    transformers' 4096). Qwen2/Qwen3: a window only with ``use_sliding_window``, and then on the layers
    from ``max_window_layers`` on (or as ``layer_types`` lists); anekit has one window for all layers."""
    if model_type == "llama":
        return None
    if model_type == "mistral":
        window = cfg.get("sliding_window", _HF_DEFAULTS["mistral"]["sliding_window"])
        kinds = cfg.get("layer_types")
    else:
        window, kinds = _qwen_window(cfg, n_layers)
    if kinds is None:
        return window
    return _layer_types_window(kinds, window)


def _qwen_window(cfg: dict, n_layers) -> tuple[object, object]:
    """Qwen2/Qwen3's (window, layer kinds): ``layer_types`` as given, else, with a window, the kinds
    ``max_window_layers`` implies (full attention below it, sliding from it on)."""
    get = lambda k: cfg.get(k, _QWEN_WINDOW[k])  # noqa: E731
    window = get("sliding_window") if get("use_sliding_window") else None
    kinds = cfg.get("layer_types")
    if kinds is None and window is not None:
        first = get("max_window_layers")
        for key, value in (("max_window_layers", first), ("num_hidden_layers", n_layers)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ModelFileError(f"{key} must be an integer, got {value!r}")
        kinds = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
    return window, kinds


def _layer_types_window(kinds: object, window) -> int | None:
    """The window of layers whose attention kinds are `kinds` (all one kind): None when they are full
    attention, else `window` (which must then be given)."""
    if not isinstance(kinds, list) or not set(kinds) <= {"full_attention", "sliding_attention"}:
        raise ModelFileError(
            f"layer_types {kinds!r:.120} is not a list of 'full_attention' / 'sliding_attention'"
        )
    if set(kinds) == {"full_attention", "sliding_attention"}:
        raise ModelFileError(
            "layers mix full and sliding-window attention (layer_types / max_window_layers); anekit "
            "implements one attention kind for all layers: set use_sliding_window to false if the "
            "model was trained without it"
        )
    if kinds and kinds[0] == "full_attention":
        return None
    if window is None:
        raise ModelFileError("layer_types names sliding_attention but sliding_window is null")
    return window


def config_from_hf(cfg: dict, name: str = "hf") -> ModelConfig:
    """A ModelConfig from a Hugging Face ``config.json`` dict of model_type llama (Llama 1/2/3.x,
    SmolLM, TinyLlama), mistral, qwen2 (Qwen2/2.5) or qwen3, with transformers' defaults for absent
    keys. Anything anekit does not implement is refused by name (`ModelFileError`), never ignored."""
    if not isinstance(cfg, dict):
        raise ModelFileError(f"config.json holds {type(cfg).__name__}, not a JSON object")
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in _HF_DEFAULTS:
        raise ModelFileError(
            f"model_type {model_type!r} is not supported; anekit imports "
            f"{', '.join(map(repr, _HF_DEFAULTS))} (Llama 1/2/3.x, SmolLM, TinyLlama, Mistral, "
            "Qwen2/2.5, Qwen3)"
        )
    defaults = _HF_DEFAULTS[model_type]
    if cfg.get("hidden_act", "silu") != "silu":
        raise ModelFileError(f"hidden_act {cfg['hidden_act']!r} is not supported (SwiGLU with silu only)")
    if cfg.get("quantization_config") is not None:
        raise ModelFileError(
            "the checkpoint is quantized (quantization_config); anekit imports float weights (f32, f16, "
            "bf16) and quantizes them itself (weights='int8' / 'int4'): use the unquantized model"
        )
    if model_type == "llama" and (cfg.get("attention_bias") or cfg.get("mlp_bias")):
        raise ModelFileError(
            "attention_bias/mlp_bias are not supported: Llama's biases include the output and MLP "
            "projections, and anekit implements biases on q/k/v only (Qwen2's qkv_bias)"
        )
    if model_type == "qwen3" and cfg.get("attention_bias"):
        raise ModelFileError(
            "attention_bias is not supported for qwen3: it adds an output-projection bias too, and anekit "
            "implements biases on q/k/v only"
        )
    missing = [k for k in _HF_REQUIRED if k not in cfg]
    if missing:
        raise ModelFileError(f"config.json lacks {', '.join(missing)} (required for a {model_type} model)")
    theta, scaling = rope_from_hf(cfg)
    window = _hf_sliding_window(cfg, model_type, cfg["num_hidden_layers"])
    head_dim = cfg.get("head_dim", defaults["head_dim"])
    return ModelConfig(
        name=cfg.get("anekit_name", name),
        dim=cfg["hidden_size"],
        hidden_dim=cfg["intermediate_size"],
        n_layers=cfg["num_hidden_layers"],
        n_heads=cfg["num_attention_heads"],
        n_kv_heads=cfg.get("num_key_value_heads", defaults["num_key_value_heads"])
        or cfg["num_attention_heads"],
        vocab_size=cfg["vocab_size"],
        seq_len=cfg.get("max_position_embeddings", defaults["max_position_embeddings"]),
        head_dim=head_dim,  # None: hidden_size // num_attention_heads, as HF derives it
        rope_theta=theta,
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        tie_embeddings=cfg.get("tie_word_embeddings", False),
        rope_scaling=scaling,
        qkv_bias=model_type == "qwen2",  # Qwen2Attention: q/k/v_proj with bias=True, o_proj without
        qk_norm=model_type == "qwen3",
        sliding_window=window,
    )


#: Keys a config.json may hold in rope_parameters / rope_scaling, by rope type.
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
            f"{key} gives RoPE parameters per layer type ({', '.join(nested)}); anekit uses one set"
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
    """(rope_theta, scaling) from a ``config.json``: ``rope_parameters`` (transformers 5),
    ``rope_theta`` + ``rope_scaling`` (4.x), or both (they must agree). As transformers does, a
    "llama3" entry without ``original_max_position_embeddings`` takes ``max_position_embeddings``.
    Scaling types other than "llama3", per-layer RoPE and partial rotary dims are refused."""
    merged = _merged_rope_params(cfg)
    rope_type = merged.pop("rope_type", None) or "default"
    if not isinstance(rope_type, str):
        raise ModelFileError(
            f"rope_type must be a string such as 'default' or 'llama3', got {rope_type!r:.80}"
        )
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


# -- Hugging Face weights, memory-mapped ---------------------------------------------------------

#: config.json, an index or tokenizer_config.json far larger than this is not one
MAX_JSON_BYTES = 64 << 20


def _hub_blobs(d: Path) -> Path | None:
    """For a Hugging Face hub cache snapshot ``<cache>/models--ORG--NAME/snapshots/REV``, the entry's
    ``blobs`` directory: huggingface_hub stores each file there once and the snapshot holds symbolic
    links to it (https://huggingface.co/docs/huggingface_hub/guides/manage-cache)."""
    if d.parent.name == "snapshots" and d.parent.parent.name.startswith("models--"):
        return d.parent.parent / "blobs"
    return None


def model_file(directory: str | Path, name, where: str | Path, what: str = "file") -> Path:
    """The real path of the regular file `directory/name`. Refused (`ModelFileError`) unless it lies
    inside `directory` after every symbolic link is followed, or, in a Hugging Face hub cache
    snapshot, inside that cache entry's ``blobs`` (`_hub_blobs`); a file named by a model's own
    files (an index's shard names) cannot lead a reader elsewhere."""
    d = Path(directory)
    if not isinstance(name, str) or not name or "\0" in name:
        raise ModelFileError(f"{where}: {what} name {name!r} is not a file name")
    try:
        real_d = d.resolve()
        p = (real_d / name).resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Path.resolve before 3.13)
        raise ModelFileError(
            f"{where}: {what} {name!r} cannot be resolved ({e}); a symbolic link loops or is unreadable: "
            "replace it by the file itself"
        ) from None
    blobs = _hub_blobs(real_d)
    if not (p.is_relative_to(real_d) or (blobs is not None and p.is_relative_to(blobs.resolve()))):
        raise ModelFileError(
            f"{where}: {what} {name!r} lies outside the model directory {d} (it resolves to {p}); refused. "
            "anekit reads only files inside the model directory: copy the file in instead of linking it"
        )
    check_regular_file(d / name, ModelFileError, what, "the model directory is incomplete")
    return p


def read_model_json(directory: str | Path, name: str, what: str) -> object:
    """The JSON value in `directory/name` (see `model_file`); every failure a `ModelFileError` naming
    the file."""
    d = Path(directory)
    p = model_file(d, name, d, what)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise ModelFileError(f"{d / name}: cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise ModelFileError(f"{d / name}: more than {MAX_JSON_BYTES} bytes, too large for a {what}")
    try:
        return json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as e:
        raise ModelFileError(
            f"{d / name}: cannot read: not valid JSON at line {e.lineno} column {e.colno} ({e.msg}); "
            "the file is damaged: download it again"
        ) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelFileError(f"{d / name}: cannot read: not a JSON {what} ({type(e).__name__})") from None


class HFWeights(Mapping[str, np.ndarray]):
    """The parameters of a Hugging Face checkpoint by anekit name, in `config.param_shapes()` order,
    read from the memory-mapped safetensors files only when accessed, and not kept (each access reads
    again; keep what you need).

    A value is a read-only view of the mapping (no copy) when the file holds it as f32, f16 or f64 and
    it needs no reordering; wq, wk, bq, bk, q_norm and k_norm come back as new arrays in anekit's
    interleaved-pair RoPE order (module docstring); bf16 tensors come back as new float32 arrays.
    `stored_dtype(name)` says which ("F32", "F16", "BF16", "F64")."""

    def __init__(self, config: ModelConfig, sources: dict[str, tuple[SafetensorsFile, str]]):
        self.config = config
        self._sources = sources

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            f, key = self._sources[name]
        except (KeyError, TypeError):
            raise KeyError(name) from None
        w = f.floats(key)
        heads = _rope_heads(self.config, name.rsplit(".", 1)[-1])
        if heads is not None:
            w = _permute(w, heads, self.config.head_dim, to_half=False)
        return w

    def __iter__(self):
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def stored_dtype(self, name: str) -> str:
        f, key = self._sources[name]
        return f.dtype(key)

    def hf_key(self, name: str) -> tuple[Path, str]:
        """(the file, the tensor name in it) that parameter `name` is read from."""
        f, key = self._sources[name]
        return f.path, key

    @property
    def nbytes(self) -> int:
        """Bytes of the parameters as stored in the files."""
        return sum(f.nbytes(key) for f, key in self._sources.values())

    def materialize(self, dtype=np.float32) -> dict[str, np.ndarray]:
        """Every parameter as a new, writable array of `dtype` (the whole model in memory)."""
        out = {}
        for name in self:
            a = self[name]  # a view of the mapping, or already a new array (permuted, widened bf16)
            fresh = a.flags.writeable and a.dtype == dtype  # views of the read-only mapping are not
            out[name] = a if fresh else np.array(a, dtype=dtype)
            self.release(name)
        return out

    def release(self, name: str) -> None:
        """Drop parameter `name`'s mapped pages from resident memory (`SafetensorsFile.release`); the
        mapping stays usable. Call it after copying a tensor out (an engine program builder baking
        the weights layer by layer), so a model loads in about its own size plus the copies."""
        f, key = self._sources[name]
        f.release(key)


def _hf_weight_files(d: Path) -> dict[str, SafetensorsFile]:
    """HF tensor name -> the opened safetensors file holding it: ``model.safetensors``, or the shards
    that ``model.safetensors.index.json``'s weight_map names (each file opened and mapped once)."""
    single, index = "model.safetensors", "model.safetensors.index.json"
    if (d / single).exists() or (d / single).is_symlink():
        f = SafetensorsFile(model_file(d, single, d, "weight file"))
        return dict.fromkeys(f.names, f)
    if (d / index).exists() or (d / index).is_symlink():
        data = read_model_json(d, index, "safetensors index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFileError(
                f"{d / index}: not a safetensors index with a weight_map (a JSON object of tensor name -> "
                "shard file); download it again"
            )
        opened: dict[str, SafetensorsFile] = {}
        out: dict[str, SafetensorsFile] = {}
        for key, shard in weight_map.items():
            if not isinstance(shard, str) or shard not in opened:
                opened[shard] = SafetensorsFile(model_file(d, shard, d / index, "shard"))
            if key not in opened[shard]:
                raise ModelFileError(
                    f"{d / index}: tensor {key} is listed in shard {shard}, which does not hold it "
                    "(a partial or mixed download?); download the model again"
                )
            out[key] = opened[shard]
        return out
    if (d / "pytorch_model.bin").is_file() or (d / "pytorch_model.bin.index.json").is_file():
        raise ModelFileError(
            f"{d}: has only PyTorch pickle weights (pytorch_model.bin); anekit reads safetensors only (a "
            "pickle can run code): convert them, e.g. with transformers: AutoModelForCausalLM."
            "from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
        )
    if (d / "consolidated.safetensors").is_file():
        raise ModelFileError(
            f"{d}: has Mistral's native consolidated.safetensors, whose names and layout anekit does "
            "not read; use the Hugging Face format files of the model (model-0000N-of-0000M.safetensors with "
            "model.safetensors.index.json)"
        )
    raise ModelFileError(
        f"{d}: no model.safetensors or model.safetensors.index.json (not a Hugging Face model directory, "
        "or the weights were not downloaded)"
    )


def _match_hf_names(
    config: ModelConfig, shapes: Mapping[str, tuple], where: str, model: str
) -> dict[str, str]:
    """anekit name -> HF tensor name for every parameter of `config`, given the HF tensors' shapes.
    RoPE buffers and a tied model's duplicate lm_head are ignored; any other unknown tensor, a missing
    one or a shape the config disagrees with is a `ModelFileError`."""
    wanted = config.param_shapes()
    by_hf = {hf_name(n): n for n in wanted}
    found: dict[str, str] = {}
    for key, shape in shapes.items():
        name = by_hf.get(key)
        if name is None:
            if key.endswith("rotary_emb.inv_freq") or (key == "lm_head.weight" and config.tie_embeddings):
                continue
            raise ModelFileError(
                f"{where}: unexpected tensor {key} for a {model} model as config.json describes it (biases, "
                "QK-norm, another architecture?); anekit does not import it"
            )
        if tuple(shape) != wanted[name]:
            raise ModelFileError(
                f"{where}: tensor {key} has shape {list(shape)}, config.json needs {list(wanted[name])}: "
                "the weights do not belong to this config.json"
            )
        found[name] = key
    if "lm_head" in wanted and "lm_head" not in found:
        raise ModelFileError(
            f"{where}: missing tensor lm_head.weight, and tie_word_embeddings is false (Hugging Face's "
            "default when config.json omits it); set it to true if the classifier shares the embedding"
        )
    missing = [hf_name(n) for n in wanted if n not in found]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelFileError(
            f"{where}: missing tensor {', '.join(missing[:3])}{more} for config {config.name!r} "
            "(an incomplete download?)"
        )
    return {n: found[n] for n in wanted}


def from_hf_tensors(
    config: ModelConfig, tensors: dict[str, np.ndarray], where: str = "", model: str = "llama"
) -> dict[str, np.ndarray]:
    """HF-named tensors -> anekit fp32 params (q/k rows and vectors permuted to interleaved order).
    Ignores RoPE buffers and a tied model's duplicate lm_head; any other unknown tensor is an error."""
    names = _match_hf_names(config, {k: np.shape(v) for k, v in tensors.items()}, where, model)
    params = {}
    for name, key in names.items():
        w = np.asarray(tensors[key])
        heads = _rope_heads(config, name.rsplit(".", 1)[-1])
        if heads is not None:
            w = _permute(w, heads, config.head_dim, to_half=False)
        params[name] = np.ascontiguousarray(w, dtype=np.float32)
    return params


def read_hf_config(directory: str | Path) -> tuple[ModelConfig, dict]:
    """(the ModelConfig, the raw dict) of a Hugging Face model directory's ``config.json``."""
    d = Path(directory)
    if not d.is_dir():
        raise ModelFileError(f"{d}: " + ("not a directory" if d.exists() else "no such model directory"))
    if not ((d / "config.json").exists() or (d / "config.json").is_symlink()):
        raise ModelFileError(f"{d}: no config.json (not a Hugging Face model directory)")
    cfg = read_model_json(d, "config.json", "model config")
    try:
        return config_from_hf(cfg, name=d.resolve().name), cfg
    except ValueError as e:  # ModelFileError and ConfigError
        raise ModelFileError(f"{d / 'config.json'}: {e}") from e


def open_hf(directory: str | Path) -> tuple[ModelConfig, HFWeights]:
    """(config, lazily read weights) of a Hugging Face model directory: ``config.json`` and
    ``model.safetensors`` or ``model.safetensors.index.json`` with its shards (f32, f16 or bf16).

    Every file is checked before this returns (JSON, every safetensors header against its file's size,
    every tensor's name and shape against the config), but no tensor data is read: the shards are
    memory-mapped and `HFWeights` reads a tensor when it is accessed, so opening a model costs no
    memory for its weights, and using it costs the pages touched plus whatever copies the caller
    keeps (at most about twice the weights' size when every bf16 tensor is widened to float32)."""
    d = Path(directory)
    config, cfg = read_hf_config(d)
    files = _hf_weight_files(d)
    names = _match_hf_names(config, {k: f.shape(k) for k, f in files.items()}, str(d), cfg["model_type"])
    return config, HFWeights(config, {n: (files[k], k) for n, k in names.items()})


def load_hf(directory: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config, fp32 params in memory) from a Hugging Face directory (`open_hf`, materialised)."""
    config, weights = open_hf(directory)
    return config, weights.materialize(np.float32)


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
