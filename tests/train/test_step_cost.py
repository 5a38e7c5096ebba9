"""`anekit.train.cost` and `anekit estimate --train`: the share of a training step's FLOPs that runs in
kernels, against the model's own arithmetic written here, and the predicted engine time per kernel."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from anekit.cli import app
from anekit.model import ModelConfig, preset
from anekit.train.cost import PUBLISHED_STEP_MS, step_cost

runner = CliRunner(env={"COLUMNS": "200"})

SMALL = ModelConfig(
    "small", dim=64, hidden_dim=160, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, seq_len=32
)


def projection_and_classifier_flops(cfg: ModelConfig, tokens: int) -> int:
    """A lower bound on a step's matmul FLOPs, from the model alone: every projection forward, its input
    gradient and its weight gradient (3 x 2 x weights x tokens), and the classifier forward, its logits
    recomputed for the backward pass, dx and dW (4 x 2 x V x D x tokens)."""
    per_layer = (
        cfg.dim * cfg.q_dim + 2 * cfg.dim * cfg.kv_dim + cfg.q_dim * cfg.dim + 3 * cfg.dim * cfg.hidden_dim
    )
    return 6 * per_layer * tokens * cfg.n_layers + 8 * cfg.vocab_size * cfg.dim * tokens


def test_every_projection_and_the_classifier_run_in_kernels():
    cost = step_cost(SMALL, 2)
    tokens = 2 * SMALL.seq_len
    floor = projection_and_classifier_flops(SMALL, tokens)
    # attention scores and their gradients add at most a few S x S x head_dim products per head
    attention = 16 * SMALL.n_heads * SMALL.seq_len**2 * max(SMALL.head_dim, 32) * 2 * SMALL.n_layers
    assert floor <= cost.kernel_matmul_flops <= floor + attention
    # what the host keeps is elementwise: a few passes over the parameters and the activations
    n_params = sum(int(np.prod(shape)) for shape in SMALL.param_shapes().values())
    assert cost.host_total <= 8 * (n_params + 16 * tokens * SMALL.dim * SMALL.n_layers)
    assert cost.share > 0.95
    assert {k.name for k in cost.kernels} >= {"attention_wgrad", "ffn_wgrad"}


def test_stories110m_step_is_at_least_95_percent_in_kernels_and_predicted_per_kernel():
    cost = step_cost(preset("stories110m"), 1, chip="m4")
    assert cost.share >= 0.95
    assert all(k.predicted_ms is not None and k.predicted_ms > 0 for k in cost.kernels)
    assert cost.engine_ms == pytest.approx(sum(k.predicted_ms * k.calls for k in cost.kernels))
    assert cost.dispatches == sum(k.calls for k in cost.kernels)


def test_uncalibrated_chip_counts_flops_and_says_why_no_time():
    cost = step_cost(SMALL, 1, chip="m2")
    if cost.engine_ms is None:
        assert cost.notes
    assert cost.share > 0.95


def test_estimate_train_json_and_table():
    result = runner.invoke(app, ["estimate", "stories110m", "--train", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["kernel_share"] >= 0.95
    assert data["published"] == PUBLISHED_STEP_MS["stories110m"]
    assert data["predicted_engine_ms"] == pytest.approx(
        sum(k["predicted_ms_per_step"] for k in data["kernels"])
    )
    table = runner.invoke(app, ["estimate", "stories110m", "--train", "--batch", "2"])
    assert table.exit_code == 0, table.output
    assert "cost-model predictions" in table.output and "ffn_wgrad" in table.output


def test_estimate_train_config_file_and_bad_input(micro_config, tmp_path):
    ok = runner.invoke(app, ["estimate", str(micro_config), "--train", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["kernel_share"] > 0.9
    bad = runner.invoke(app, ["estimate", "no-such-model", "--train"])
    assert bad.exit_code == 1 and "not a preset" in bad.output
    both = runner.invoke(app, ["estimate", "stories110m", "--train", "--decode"])
    assert both.exit_code == 1 and "one of --decode and --train" in both.output
    # a sequence the engine cannot hold is refused before any program is built (not a MemoryError)
    long = runner.invoke(app, ["estimate", "tiny", "--train", "--seq-len", "100000"])
    assert long.exit_code == 1 and "at most 16384" in long.output
    # so many tokens per call that the classifier's rows cannot fit beside them: the advice is the batch
    wide = runner.invoke(app, ["estimate", "tiny", "--train", "--seq-len", "4096", "--batch", "4"])
    assert wide.exit_code == 1 and "smaller --batch" in wide.output
