"""Llama-family model configurations, presets, and the one naming scheme for parameters.

Architecture (ane-private-api.md §5.1): RMSNorm (eps 1e-5), RoPE on interleaved pairs (the llama2.c /
Meta convention, §3.4 "RoPE"), SwiGLU FFN `W2 (silu(W1 x) * W3 x)`, multi-head or grouped-query
attention where q head h uses kv head `h // (n_heads // n_kv_heads)` everywhere (§6: the maderix
dynamic pipeline mixed two mappings; we keep one), no biases, tied or untied classifier.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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

    def __post_init__(self):
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}; give head_dim")
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        for f in (
            "dim",
            "hidden_dim",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "vocab_size",
            "seq_len",
            "head_dim",
        ):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")

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
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown model config key(s): {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """A custom config from JSON or TOML (keys as in this dataclass; `preset` may name a base)."""
        p = Path(path)
        text = p.read_text()
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
        base = data.pop("preset", None)
        if base is not None:
            return replace(preset(base), **data)
        data.setdefault("name", p.stem)
        return cls.from_dict(data)


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
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or give a config file"
        ) from None
