"""Kernels declare how a layer's weights are staged into their input (`KernelSpec.staging`), and
`ModelRunner` stages by those declarations alone."""

from __future__ import annotations

import numpy as np
import pytest

from anekit.kernels.common import KernelSpec, Staged
from anekit.model import ModelConfig
from anekit.model.reference import init_params
from anekit.train.schedule import LAYER_KERNELS
from anekit.train.step import ModelRunner

GQA = ModelConfig(
    "gqa", dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=32
)


@pytest.mark.parametrize("name", list(LAYER_KERNELS))
def test_every_staged_weight_fits_its_segment(name):
    spec = LAYER_KERNELS[name](GQA, 2, GQA.seq_len)
    assert spec.staging, f"{name} stages no weights"
    shapes = {k[len("layers.0.") :]: s for k, s in GQA.param_shapes().items() if k.startswith("layers.0.")}
    layer = {k: np.zeros(s) for k, s in shapes.items()}
    for st in spec.staging:
        assert st.value(layer).shape == spec.input_layout[st.segment].shape, st
    assert len({st.segment for st in spec.staging}) == len(spec.staging)


def test_a_staged_segment_must_be_in_the_input_layout():
    spec = LAYER_KERNELS["ffn_forward"](GQA, 1, GQA.seq_len)
    with pytest.raises(ValueError, match="not in its input layout"):
        KernelSpec(
            spec.program, spec.input_layout, spec.output_layout, "bad", 0, staging=(Staged("nope", "w1"),)
        )


def test_runner_stages_each_weight_as_declared():
    params = init_params(GQA, rng=0)
    with ModelRunner(GQA, 2, backend="reference", numerics="exact") as runner:
        runner.set_params(params)
        for i in range(GQA.n_layers):
            for name, spec in runner.specs.items():
                buf = runner.buffers[i][name]
                for st in spec.staging:
                    want = params[f"layers.{i}.{st.param}"]
                    got = spec.input_layout.view(buf, st.segment)
                    np.testing.assert_array_equal(got, want.T if st.transposed else want)
