"""Rotary position embedding tables (NumPy only, so the CPU model can use them without MIL).

Convention: interleaved pairs, as llama2.c / Meta (ane-private-api.md §3.4 "RoPE"): dims (2p, 2p+1)
of each head form one complex number rotated by angle `pos · theta^(-2p / head_dim)`:

    out[2p]   = x[2p] cos - x[2p+1] sin
    out[2p+1] = x[2p] sin + x[2p+1] cos

(not Hugging Face's "rotate_half" by halves). This module is the one definition of those angles;
the kernels bake them as constants and `anekit.model.reference` applies them on the CPU.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rope_angles", "rope_tables", "rope_channel_tables"]


def rope_angles(head_dim: int, positions, theta: float = 10000.0) -> np.ndarray:
    """Angles `[len(positions), head_dim // 2]` in float64: `pos · theta^(-2p / head_dim)`."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    pos = np.asarray(positions, dtype=np.float64).reshape(-1)
    freqs = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return pos[:, None] * freqs[None, :]


def rope_tables(head_dim: int, seq_len: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each `[seq_len, head_dim // 2]` float64, for positions 0..seq_len-1."""
    ang = rope_angles(head_dim, np.arange(seq_len), theta)
    return np.cos(ang), np.sin(ang)


def rope_channel_tables(head_dim: int, seq_len: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """The tables in the engine's channel-major head layout `[head_dim, seq_len]` (float64):
    `cos_full[d, s] = cos(angle[s, d // 2])` and the signed sine `sin_signed[d, s] = ∓sin(angle)`
    (minus on even d), so that `rope(x) = x·cos_full + swap_pairs(x)·sin_signed`, where
    `swap_pairs` exchanges dims 2p and 2p+1. Transposed (the backward rotation) it is
    `x·cos_full - swap_pairs(x)·sin_signed`."""
    cos, sin = rope_tables(head_dim, seq_len, theta)
    cos_full = np.repeat(cos.T, 2, axis=0)
    sin_signed = np.repeat(sin.T, 2, axis=0)
    sin_signed[0::2] *= -1.0
    return cos_full, sin_signed
