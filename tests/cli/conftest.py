"""Fixtures of the command-line tests."""

from __future__ import annotations

import numpy as np
import pytest

from anekit.mil import ct, dumps, mb, types


@pytest.fixture
def model_dir(tmp_path):
    """A saved conv+relu program: (model directory, path of an input .npy, its weight, that input)."""
    w = (np.random.default_rng(0).standard_normal((32, 32, 1, 1)) / 8).astype(np.float16)

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 32, 1, 32), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        return mb.relu(x=mb.conv(x=x, weight=mb.const(val=w, name="w"), name="c"), name="y")

    root = dumps(prog).save(tmp_path / "model")
    x = np.random.default_rng(1).standard_normal((1, 32, 1, 32)).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    return root, tmp_path / "x.npy", w, x
