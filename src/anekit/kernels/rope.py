"""Rotary position embedding tables (NumPy only, so the CPU model can use them without MIL).

Convention: interleaved pairs, as llama2.c / Meta (ane-private-api.md §3.4 "RoPE"): dims (2p, 2p+1)
of each head form one complex number rotated by angle `pos · inv_freq[p]`, where
`inv_freq[p] = theta^(-2p / head_dim)`:

    out[2p]   = x[2p] cos - x[2p+1] sin
    out[2p+1] = x[2p] sin + x[2p+1] cos

(not Hugging Face's "rotate_half" by halves). This module is the one definition of those angles;
the kernels bake them as constants, `anekit.model.reference` (and the tests' CPU oracles) apply them
on the CPU, and the llama2.c exporter writes its legacy tables from them.

Llama 3 frequency scaling (`scaling`, an `anekit.model.config.RopeScaling`; Hugging Face calls it
rope_type "llama3"). Defined by Meta's Llama 3.1 reference code (github.com/meta-llama/llama-models,
`apply_scaling`): with `L = original_max_position_embeddings`, each frequency's wavelength
`2π / inv_freq` is compared with `L / high_freq_factor` and `L / low_freq_factor`:

- shorter than `L / high_freq_factor` (high frequencies): unchanged;
- longer than `L / low_freq_factor` (low frequencies): divided by `factor`;
- in between: `(1 - s) · inv_freq / factor + s · inv_freq` with
  `s = (L / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)`,
  which meets both other bands continuously at their edges.

No attention rescaling comes with it (unlike YaRN), so only the angles change.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rope_inv_freq", "rope_angles", "rope_tables", "rope_channel_tables"]

#: The scaling types this module computes ("default" / None means plain RoPE).
SUPPORTED_SCALING = ("llama3",)


def rope_inv_freq(head_dim: int, theta: float = 10000.0, scaling=None) -> np.ndarray:
    """Inverse frequencies `[head_dim // 2]` in float64: `theta^(-2p / head_dim)`, then the
    `scaling` of the module docstring if one is given (anything with the fields of
    `anekit.model.config.RopeScaling`)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    inv = float(theta) ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling is None:
        return inv
    kind = getattr(scaling, "rope_type", None)
    if kind not in SUPPORTED_SCALING:
        raise ValueError(
            f"RoPE scaling type {kind!r} is not supported; anekit computes {', '.join(SUPPORTED_SCALING)}"
        )
    return _llama3(inv, scaling)


def _llama3(inv: np.ndarray, s) -> np.ndarray:
    context = float(s.original_max_position_embeddings)
    low, high = float(s.low_freq_factor), float(s.high_freq_factor)
    wavelength = 2.0 * np.pi / inv
    smooth = (context / wavelength - low) / (high - low)
    middle = (1.0 - smooth) * inv / s.factor + smooth * inv
    out = np.where(wavelength > context / low, inv / s.factor, middle)
    return np.where(wavelength < context / high, inv, out)


def rope_angles(head_dim: int, positions, theta: float = 10000.0, scaling=None) -> np.ndarray:
    """Angles `[len(positions), head_dim // 2]` in float64: `pos · inv_freq`."""
    pos = np.asarray(positions, dtype=np.float64).reshape(-1)
    return pos[:, None] * rope_inv_freq(head_dim, theta, scaling)[None, :]


def rope_tables(
    head_dim: int, seq_len: int, theta: float = 10000.0, scaling=None
) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each `[seq_len, head_dim // 2]` float64, for positions 0..seq_len-1."""
    ang = rope_angles(head_dim, np.arange(seq_len), theta, scaling)
    return np.cos(ang), np.sin(ang)


def rope_channel_tables(
    head_dim: int, seq_len: int, theta: float = 10000.0, scaling=None
) -> tuple[np.ndarray, np.ndarray]:
    """The tables in the engine's channel-major head layout `[head_dim, seq_len]` (float64):
    `cos_full[d, s] = cos(angle[s, d // 2])` and the signed sine `sin_signed[d, s] = ∓sin(angle)`
    (minus on even d), so that `rope(x) = x·cos_full + swap_pairs(x)·sin_signed`, where
    `swap_pairs` exchanges dims 2p and 2p+1. Transposed (the backward rotation) it is
    `x·cos_full - swap_pairs(x)·sin_signed`."""
    cos, sin = rope_tables(head_dim, seq_len, theta, scaling)
    cos_full = np.repeat(cos.T, 2, axis=0)
    sin_signed = np.repeat(sin.T, 2, axis=0)
    sin_signed[0::2] *= -1.0
    return cos_full, sin_signed
