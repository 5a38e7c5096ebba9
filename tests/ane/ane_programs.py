"""Small programs the ANE-backend tests share (imported by name, like `ane_fake_bridge`)."""

from __future__ import annotations

import numpy as np

from anekit.mil import ct, mb, types


def conv_program(seed=0, c=32, s=32, scale=8.0):
    """y = conv1x1(x, w) with a fixed random fp16 weight: distinct seeds give distinct programs."""
    w = (np.random.default_rng(seed).standard_normal((c, c, 1, 1)) / scale).astype(np.float16)

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, c, 1, s), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.conv(x=x, weight=mb.const(val=w, name="w"), name="y")

    return prog


def dynamic_program(c=4, s=32):
    """y = x * w + x: `w` plays a layer's weights staged once per binding (§1.6 per-layer requests, §5.4)."""

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, c, 1, s), dtype=types.fp16) for _ in range(2)],
        opset_version=ct.target.iOS18,
    )
    def prog(x, w):
        return mb.add(x=mb.mul(x=x, y=w), y=x, name="y")

    return prog


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float16)
