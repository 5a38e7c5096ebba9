"""Baked weights for inference programs: fp16 constants, or int8 / int4 through the engine's constexpr
dequantization op (the engine expands them to fp16 when it loads the program).

- ``fp16``: the weight as an fp16 `const` (BLOBFILE), 2 bytes per weight.
- ``int8``: symmetric, one fp16 scale per output channel: `q = rint(w / s)` in [-127, 127],
  `s = max|w_row| / 127`; 1 byte per weight (+ 2 bytes per row).
- ``int4``: symmetric, one fp16 scale per block of `INT4_BLOCK` (32) consecutive input channels of
  an output channel: `q` in [-7, 7], `s = max|w_block| / 7`; half a byte per weight (+ 2 bytes per
  32 weights, i.e. 4.5 bits per weight in all).

Both quantized forms are emitted as `constexpr_blockwise_shift_scale(data, scale)` (iOS18,
mil-text.md §3.12: output = scale[i / block] · data[i], dtype of `scale`, here fp16), which the
reference backend runs and `anekit.mil.blob` writes (int4 packed two per byte, mil-text.md §2.5).
The program computes with `fp16(q · s)`: `dequantize` returns exactly those values (float64), the
oracle the tests compare the program against.

Why symmetric and per channel / per block of 32: decode is bandwidth-bound, so weight bytes set
tokens/s (ane-private-api.md §10.4: Q8 97.4% of FP16 per-layer throughput at 50.4% of the memory,
Q4 ~31% slower than Q8 there); a zero point would add a subtraction and bytes for no gain on
weights centred at 0. Block 32 matches the engine's 32-element rows (engine_limits.ROW_ALIGN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import AnekitError

__all__ = [
    "QUANT_MODES",
    "INT4_BLOCK",
    "QuantError",
    "QuantizedWeight",
    "quantize",
    "weight_const",
    "bytes_per_weight",
]

QUANT_MODES = ("fp16", "int8", "int4")
#: int4 scale block: input channels sharing one scale (a multiple of every model width anekit runs).
INT4_BLOCK = 32
_QMAX = {"int8": 127, "int4": 7}


class QuantError(AnekitError, ValueError):
    """A weight cannot be baked in the requested format; the message says which and why."""


@dataclass(frozen=True)
class QuantizedWeight:
    """A `[out, in]` weight in one of `QUANT_MODES`.

    data: fp16 `[out, in]` (fp16), or int8 `[out, in]` holding int8 / int4 values. scale: None
    (fp16), fp16 `[out, 1]` (int8) or `[out, in / INT4_BLOCK]` (int4).
    """

    mode: str
    data: np.ndarray
    scale: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the baked weight takes in its blob files (data + scales)."""
        n = self.data.size
        data = {"fp16": 2 * n, "int8": n, "int4": (n + 1) // 2}[self.mode]
        return data + (0 if self.scale is None else 2 * self.scale.size)

    def dequantize(self) -> np.ndarray:
        """The fp16 weight the engine computes with, as float64 `[out, in]`."""
        if self.scale is None:
            return self.data.astype(np.float64)
        out, cin = self.data.shape
        blocks = self.scale.shape[1]
        q = self.data.astype(np.float32).reshape(out, blocks, cin // blocks)
        w = (q * self.scale.astype(np.float32)[:, :, None]).astype(np.float16)  # the op's fp16 output
        return w.reshape(out, cin).astype(np.float64)


def bytes_per_weight(mode: str) -> float:
    """Stored bytes of one weight including its share of the scales."""
    return {"fp16": 2.0, "int8": 1.0, "int4": 0.5 + 2.0 / INT4_BLOCK}[_check_mode(mode)]


def _check_mode(mode: str) -> str:
    if mode not in QUANT_MODES:
        raise QuantError(f"weights {mode!r} are not supported; choose one of {', '.join(QUANT_MODES)}")
    return mode


def quantize(weight: np.ndarray, mode: str, name: str = "weight") -> QuantizedWeight:
    """`weight` `[out, in]` (any float dtype, e.g. a memory-mapped float32 array) in `mode`."""
    _check_mode(mode)
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim != 2:
        raise QuantError(f"{name}: expected a [out, in] matrix, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise QuantError(f"{name}: the weight holds non-finite values; the checkpoint is damaged")
    if mode == "fp16":
        return QuantizedWeight(mode, w.astype(np.float16), None)
    out, cin = w.shape
    if mode == "int8":
        blocks = 1
    else:
        if cin % INT4_BLOCK:
            raise QuantError(
                f"{name}: int4 weights use blocks of {INT4_BLOCK} input channels, and {cin} is not a "
                f"multiple of {INT4_BLOCK}; use int8 or fp16 weights for this model"
            )
        blocks = cin // INT4_BLOCK
    qmax = _QMAX[mode]
    wb = w.reshape(out, blocks, cin // blocks)
    amax = np.abs(wb).max(axis=2)
    # the scale is stored in fp16, and q is computed against the stored scale, so that q·s is the
    # closest the format holds; an all-zero block keeps scale 1 (q = 0)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float16)
    s32 = scale.astype(np.float32)[:, :, None]
    q = np.clip(np.rint(wb / s32), -qmax, qmax).astype(np.int8).reshape(out, cin)
    return QuantizedWeight(mode, q, scale)


def weight_const(qw: QuantizedWeight, name: str):
    """The MIL value of a conv weight `[out, in, 1, 1]` fp16: a `const`, or the
    `constexpr_blockwise_shift_scale` that dequantizes `qw` (see the module docstring)."""
    from .._coreml import mb, types

    out, cin = qw.shape
    if qw.scale is None:
        return mb.const(val=qw.data.reshape(out, cin, 1, 1), name=name)
    dtype = np.int8 if qw.mode == "int8" else types.np_int4_dtype
    data = qw.data.reshape(out, cin, 1, 1).astype(dtype)
    scale = qw.scale.reshape(out, qw.scale.shape[1], 1, 1)
    return mb.constexpr_blockwise_shift_scale(data=data, scale=scale, name=name)
