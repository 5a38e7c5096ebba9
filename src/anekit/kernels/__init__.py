"""Generators of ANE-shaped kernels: each returns a `KernelSpec` (a MIL program plus the `Layout`
of its one packed input and its one concatenated output).

    from anekit.kernels import attention_forward, Layout
    spec = attention_forward(config, n_seq=8)     # compile once per shape
    buf = spec.input_layout.pack({...})            # [1, C, 1, W] fp16

| kernel | input | output |
|---|---|---|
| attention_forward | xnorm, Wqᵀ, Wkᵀ, Wvᵀ, Wo | o, attn, q_rope, k_rope, v |
| attention_backward | dy, q_rope, k_rope, v, Wqᵀ, Wkᵀ, Wvᵀ, Wo | dx, dq, dk, dv |
| ffn_forward | xnorm, W1ᵀ, W3ᵀ, W2 | y, h1, h3, gate |
| ffn_backward | dy, h1, h3, W1, W3, W2ᵀ | dx, dh1, dh3 |
| attention_wgrad | xnorm, dy, attn, dq, dk, dv (per token tile) | dWq, dWk, dWv, dWoᵀ |
| ffn_wgrad | xnorm, dy, gate, dh1, dh3 (per token tile) | dW1, dW3, dW2ᵀ |
| rmsnorm_forward | x, weight | y |

Each `KernelSpec` declares how a layer's weights are staged into its input (`spec.staging`: `Staged`
segment <- parameter, transposed or not); `anekit.train.step.ModelRunner` stages by those
declarations (`spec.stage(buffer, layer_params)`), so a kernel's weight layout is written once, here.

Submodules load lazily: `anekit.kernels.layout` and `anekit.kernels.rope` are NumPy-only and do not
import coremltools.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Layout": "layout",
    "Segment": "layout",
    "LayoutError": "layout",
    "KernelSpec": "common",
    "Staged": "common",
    "MASK_VALUE": "common",
    "attention_forward": "attention",
    "attention_backward": "attention",
    "ffn_forward": "ffn",
    "ffn_backward": "ffn",
    "attention_wgrad": "wgrad",
    "ffn_wgrad": "wgrad",
    "rmsnorm_forward": "norm",
    "rope_tables": "rope",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
