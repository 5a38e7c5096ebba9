"""Llama-family model configurations, presets, and the one naming scheme for parameters.

Architecture (ane-private-api.md §5.1): RMSNorm (eps 1e-5), RoPE on interleaved pairs (the llama2.c /
Meta convention, §3.4 "RoPE"), SwiGLU FFN `W2 (silu(W1 x) * W3 x)`, multi-head or grouped-query
attention where q head h uses kv head `h // (n_heads // n_kv_heads)` everywhere (§6: the maderix
dynamic pipeline mixed two mappings; we keep one), tied or untied classifier. RoPE may carry Llama 3's
frequency scaling (`RopeScaling`; the formula is in `anekit.kernels.rope`). Three options cover the
pretrained families anekit imports (`anekit.model.io`): `qkv_bias` (Qwen2/2.5: biases on the q, k and
v projections), `qk_norm` (Qwen3: an RMSNorm over each head's q and k after the projection, before
RoPE) and `sliding_window` (Mistral: a query sees only the last `sliding_window` positions). The
training step implements none of the three (`anekit train` refuses them); the reference model and the
inference path do.

Every field is type- and range-checked when a config is made, so a bad value fails here with a
`ConfigError` naming the field (and, from `ModelConfig.from_file`, the file), before any work or
write. An annotated example of a config file, with every key: ``docs/examples/model.toml``.
"""

from __future__ import annotations

import json
import math
import numbers
import sys
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from ..errors import AnekitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ConfigError", "RopeScaling", "ModelConfig", "PRESETS", "preset"]

#: Upper bound of every integer size: llama2.c model headers store them as int32 (§5.1).
INT_LIMIT = 2**31 - 1
#: A model config is a few hundred bytes; a file far larger is not one.
MAX_CONFIG_BYTES = 1 << 20
CONFIG_SUFFIXES = (".toml", ".json")
#: rope_scaling types that mean "no scaling".
NO_SCALING = ("default", "none")


class ConfigError(AnekitError, ValueError):
    """A model configuration that is malformed or out of range; says which field (and file)."""


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(field: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{field} must be an integer, got {_show(value)}")
    value = int(value)
    if not minimum <= value <= INT_LIMIT:
        raise ConfigError(f"{field} must be an integer in [{minimum}, {INT_LIMIT}], got {value}")
    return value


def _float(field: str, value, above: float, below: float = math.inf, at_least: bool = False) -> float:
    """A finite number > `above` (>= with `at_least`) and < `below`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{field} must be a number, got {_show(value)}")
    value = float(value)
    low_ok = value >= above if at_least else value > above
    if not (math.isfinite(value) and low_ok and value < below):
        bound = f"{'>=' if at_least else '>'} {above:g}" + (f" and < {below:g}" if below < math.inf else "")
        raise ConfigError(f"{field} must be a finite number {bound}, got {value!r}")
    return value


def _check_keys(data, valid: list[str], required: list[str], where: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table of keys, got {_show(data)}")
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(_show, unknown))}; valid keys: {', '.join(valid)}"
        )
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(missing)}")


def _check_rope_type(rope_type) -> None:
    if rope_type != "llama3":
        raise ConfigError(
            f"rope_scaling.rope_type {_show(rope_type)} is not supported: anekit implements 'llama3' "
            "(Llama 3.x) or no scaling ('default'); linear, dynamic, yarn, longrope and other types are not"
        )


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """Llama 3's RoPE frequency scaling (Hugging Face rope_type "llama3"; Llama 3.1 uses factor 8,
    low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8192). The formula is in
    `anekit.kernels.rope`. No other scaling type is accepted."""

    rope_type: str = "llama3"
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self):
        _check_rope_type(self.rope_type)
        put = object.__setattr__
        # factor >= 1 stretches long wavelengths (Llama 3.1: 8, 3.2: 32); no published model shrinks them
        put(self, "factor", _float("rope_scaling.factor", self.factor, 1.0, at_least=True))
        low = _float("rope_scaling.low_freq_factor", self.low_freq_factor, 0.0)
        put(self, "low_freq_factor", low)
        # the smooth band divides by high - low (anekit.kernels.rope), so high must exceed low
        put(self, "high_freq_factor", _float("rope_scaling.high_freq_factor", self.high_freq_factor, low))
        n = _int("rope_scaling.original_max_position_embeddings", self.original_max_position_embeddings)
        put(self, "original_max_position_embeddings", n)

    @classmethod
    def from_dict(cls, data) -> RopeScaling | None:
        """From a config table (keys as the fields); rope_type "default" alone means none (None)."""
        valid = [f.name for f in fields(cls)]
        _check_keys(data, valid, ["rope_type"], "rope_scaling")
        if data["rope_type"] in NO_SCALING:
            others = [k for k in data if k != "rope_type"]
            if others:
                raise ConfigError(
                    f"rope_scaling: rope_type {data['rope_type']!r} means no scaling and takes no "
                    f"other keys, got {', '.join(others)}"
                )
            return None
        _check_rope_type(data["rope_type"])  # first, so an unsupported type is named as such
        _check_keys(data, valid, valid, "rope_scaling")
        return cls(**data)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    head_dim: int | None = None  #: defaults to dim // n_heads
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    #: Llama 3 RoPE frequency scaling, or None for plain RoPE (a table of RopeScaling's keys is accepted)
    rope_scaling: RopeScaling | None = None
    #: q/k/v projection biases (Qwen2/2.5): params layers.{i}.bq (q_dim,), bk and bv (kv_dim,)
    qkv_bias: bool = False
    #: per-head RMSNorm of q and k (Qwen3), eps = norm_eps, after the projection, before RoPE:
    #: params layers.{i}.q_norm and k_norm (head_dim,)
    qk_norm: bool = False
    #: a query at position p sees keys at positions in (p - sliding_window, p] (Mistral); None: all <= p
    sliding_window: int | None = None

    def __post_init__(self):
        put = object.__setattr__
        if not isinstance(self.name, str) or not self.name or not self.name.isprintable():
            raise ConfigError(f"name must be a non-empty printable string, got {_show(self.name)}")
        for f in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "seq_len"):
            put(self, f, _int(f, getattr(self, f)))
        put(self, "vocab_size", _int("vocab_size", self.vocab_size, minimum=2))
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_heads {self.n_heads} must be a multiple of n_kv_heads {self.n_kv_heads} "
                "(each kv head serves n_heads / n_kv_heads query heads)"
            )
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ConfigError(
                    f"dim {self.dim} is not divisible by n_heads {self.n_heads}; give head_dim explicitly"
                )
            put(self, "head_dim", self.dim // self.n_heads)
        put(self, "head_dim", _int("head_dim", self.head_dim, minimum=2))
        if self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be even (RoPE rotates pairs of dims)")
        put(self, "rope_theta", _float("rope_theta", self.rope_theta, 0.0))
        # an epsilon near mean(x^2) ~ 1 would swamp the normalisation; models use 1e-6 .. 1e-5
        put(self, "norm_eps", _float("norm_eps", self.norm_eps, 0.0, below=1.0))
        if not isinstance(self.tie_embeddings, bool):
            raise ConfigError(f"tie_embeddings must be true or false, got {_show(self.tie_embeddings)}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            put(self, "rope_scaling", RopeScaling.from_dict(self.rope_scaling))
        for f in ("qkv_bias", "qk_norm"):
            if not isinstance(getattr(self, f), bool):
                raise ConfigError(f"{f} must be true or false, got {_show(getattr(self, f))}")
        if self.sliding_window is not None:
            put(self, "sliding_window", _int("sliding_window", self.sliding_window))

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def gqa_ratio(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kv_head(self, q_head: int) -> int:
        """The kv head that query head `q_head` attends with: the one mapping used everywhere."""
        return q_head // self.gqa_ratio

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter, by name, with its shape; matrices are [out, in] (y = W x)."""
        D, H, Q, KV = self.dim, self.hidden_dim, self.q_dim, self.kv_dim
        shapes: dict[str, tuple[int, ...]] = {"embed": (self.vocab_size, D)}
        for i in range(self.n_layers):
            p = f"layers.{i}."
            shapes |= {
                p + "attn_norm": (D,),
                p + "wq": (Q, D),
                p + "wk": (KV, D),
                p + "wv": (KV, D),
                p + "wo": (D, Q),
            }
            if self.qkv_bias:
                shapes |= {p + "bq": (Q,), p + "bk": (KV,), p + "bv": (KV,)}
            if self.qk_norm:
                shapes |= {p + "q_norm": (self.head_dim,), p + "k_norm": (self.head_dim,)}
            shapes |= {
                p + "ffn_norm": (D,),
                p + "w1": (H, D),
                p + "w2": (D, H),
                p + "w3": (H, D),
            }
        shapes["final_norm"] = (D,)
        if not self.tie_embeddings:
            shapes["lm_head"] = (self.vocab_size, D)
        return shapes

    def n_params(self) -> int:
        total = 0
        for shape in self.param_shapes().values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    def to_dict(self) -> dict:
        """Every field, JSON/TOML-ready (`rope_scaling` as a table or None); `from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> ModelConfig:
        """A config from a table of fields; unknown or missing keys are a `ConfigError` listing the
        valid ones."""
        valid = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        _check_keys(data, valid, required, "model config")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """A config from a ``.toml`` or ``.json`` file: the keys of this dataclass, and optionally
        ``preset = "<name>"`` to start from a preset and change only the keys given (a preset's
        head_dim that was dim // n_heads is derived again). ``name`` defaults to the file's stem.
        Every error is a `ConfigError` starting with the file's path."""
        p = Path(path)
        data = _read_table(p)
        try:
            _check_keys(data, [f.name for f in fields(cls)] + ["preset"], [], "model config")
            base = data.pop("preset", None)
            if base is not None:
                start = preset(base).to_dict()
                del start["name"]  # the file's model is named by the file (or its own `name`)
                if start["head_dim"] * start["n_heads"] == start["dim"]:
                    start["head_dim"] = None
                data = start | data
            data.setdefault("name", p.stem)
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None


def _read_table(p: Path) -> dict:
    if p.suffix not in CONFIG_SUFFIXES:
        raise ConfigError(f"{p}: a model config must be a .toml or .json file")
    try:
        if not p.is_file():
            raise ConfigError(f"{p}: " + ("not a regular file" if p.exists() else "no such config file"))
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{p}: {size} bytes is far too large for a model config ({MAX_CONFIG_BYTES} max)"
            )
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (bad byte at offset {e.start})") from None
    kind = "TOML" if p.suffix == ".toml" else "JSON"
    try:
        data = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    except (ValueError, RecursionError) as e:  # TOMLDecodeError is a ValueError; so is the int digit limit
        raise ConfigError(f"{p}: not valid {kind}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a model config is a {kind} table of keys, not {type(data).__name__}")
    return data


#: ane-private-api.md §5.1 for stories110m and the Qwen3-0.6B shapes; stories15m/42m are llama2.c's.
PRESETS: dict[str, ModelConfig] = {
    # trains on two CPU cores in minutes: 1.7 M parameters, grouped-query attention (6 q heads, 2 kv)
    "tiny": ModelConfig(
        "tiny", dim=192, hidden_dim=512, n_layers=4, n_heads=6, n_kv_heads=2, vocab_size=512, seq_len=64
    ),
    "stories15m": ModelConfig(
        "stories15m",
        dim=288,
        hidden_dim=768,
        n_layers=6,
        n_heads=6,
        n_kv_heads=6,
        vocab_size=32000,
        seq_len=256,
    ),
    "stories42m": ModelConfig(
        "stories42m",
        dim=512,
        hidden_dim=1376,
        n_layers=8,
        n_heads=8,
        n_kv_heads=8,
        vocab_size=32000,
        seq_len=1024,
    ),
    "stories110m": ModelConfig(
        "stories110m",
        dim=768,
        hidden_dim=2048,
        n_layers=12,
        n_heads=12,
        n_kv_heads=12,
        vocab_size=32000,
        seq_len=256,
    ),
    "qwen3-0.6b": ModelConfig(
        "qwen3-0.6b",
        dim=1024,
        hidden_dim=3072,
        n_layers=28,
        n_heads=16,
        n_kv_heads=8,
        head_dim=128,
        vocab_size=151936,
        seq_len=256,
    ),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown preset {_show(name)}; choose one of {', '.join(PRESETS)} or give a config file"
        ) from None
