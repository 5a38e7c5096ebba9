"""What a training step runs: the kernels of a layer, every kernel a step runs with its calls per
step (`schedule`), and the FLOPs it leaves on the host (`host_flops`), without compiling anything.

`anekit.train.step.ModelRunner` builds its kernels from `schedule`; the cost model
(`anekit.train.cost`) counts and predicts from it. One list, so what is counted is what runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..kernels.attention import attention_backward, attention_forward
from ..kernels.common import DEFAULT_CONST_PRECISION, KernelSpec
from ..kernels.ffn import ffn_backward, ffn_forward
from ..kernels.layout import ROW_ALIGN, round_up
from ..kernels.wgrad import attention_wgrad, ffn_wgrad
from ..model.config import ModelConfig
from .classifier import classifier_host_flops, classifier_kernel_uses

__all__ = [
    "KernelUse",
    "schedule",
    "host_flops",
    "call_shape",
    "KERNELS",
    "LAYER_KERNELS",
    "GRAD_KERNELS",
    "STEP_KERNELS",
    "TABLE_FREE",
]

#: The kernels of one layer that stage its weights, in the order a step runs them: name ->
#: generator(config, n_seq, seq_len, const_precision) returning a `KernelSpec` that declares how the
#: layer's weights are staged into its input (`KernelSpec.staging`). A new kernel is one entry here
#: plus its call in `_forward_layer` / `_backward_layer`.
LAYER_KERNELS: dict[str, Callable[..., KernelSpec]] = {
    "attention_forward": attention_forward,
    "ffn_forward": ffn_forward,
    "ffn_backward": ffn_backward,
    "attention_backward": attention_backward,
}
#: The weight-gradient kernels of a layer (same generator signature, no weights staged); their
#: outputs are declared by `anekit.kernels.wgrad.GRADS`.
GRAD_KERNELS: dict[str, Callable[..., KernelSpec]] = {
    "ffn_wgrad": ffn_wgrad,
    "attention_wgrad": attention_wgrad,
}
#: Every kernel of a layer.
STEP_KERNELS: dict[str, Callable[..., KernelSpec]] = {**LAYER_KERNELS, **GRAD_KERNELS}
KERNELS = tuple(STEP_KERNELS)
#: Kernels that bake no float tables: compiled first, they show whether the backend runs the
#: "exact" reference numerics, which decides how the other kernels bake theirs.
TABLE_FREE = ("ffn_forward", "ffn_backward", "ffn_wgrad", "attention_wgrad")


@dataclass(frozen=True)
class KernelUse:
    """One kernel of a step: its name, its spec, and how many times a step runs it (all layers,
    all calls of the batch)."""

    name: str
    spec: KernelSpec
    calls_per_step: int


def call_shape(config: ModelConfig, batch_size: int, seq_len: int | None, seqs_per_call: int | None):
    """(sequences per call, padded sequence length, calls per step)."""
    s = config.seq_len if seq_len is None else seq_len
    n_seq = batch_size if seqs_per_call is None else seqs_per_call
    if batch_size < 1 or n_seq < 1 or batch_size % n_seq:
        raise ValueError(f"seqs_per_call {n_seq} must divide batch_size {batch_size}")
    if s < 1:
        raise ValueError(f"seq_len must be positive, got {s}")
    return n_seq, round_up(s, ROW_ALIGN), batch_size // n_seq  # §1.7: 64-byte rows


def schedule(
    config: ModelConfig,
    batch_size: int,
    *,
    seq_len: int | None = None,
    seqs_per_call: int | None = None,
    const_precision: str = DEFAULT_CONST_PRECISION,
    vocab_chunk: int | None = None,
) -> tuple[KernelUse, ...]:
    """Every kernel `ModelRunner(config, batch_size, seq_len=..., seqs_per_call=...,
    vocab_chunk=...)` runs in one step, with its calls per step: the six layer kernels (once per
    layer per call) and the classifier's (per vocabulary chunk per call). Builds the programs,
    compiles nothing."""
    n_seq, s_pad, calls = call_shape(config, batch_size, seq_len, seqs_per_call)
    uses = [
        KernelUse(name, make(config, n_seq, s_pad, const_precision), config.n_layers * calls)
        for name, make in STEP_KERNELS.items()
    ]
    for name, spec, n in classifier_kernel_uses(config.dim, config.vocab_size, n_seq * s_pad, vocab_chunk):
        uses.append(KernelUse(name, spec, n * calls))
    return tuple(uses)


def host_flops(
    config: ModelConfig,
    batch_size: int,
    seq_len: int | None = None,
    *,
    seqs_per_call: int | None = None,
    vocab_chunk: int | None = None,
) -> dict[str, int]:
    """FLOPs per step of what `ModelRunner` still runs on the host, by name (2 per multiply-add,
    1 per elementwise op; gathers and copies count nothing), over the padded tokens it processes."""
    n_seq, s_pad, calls = call_shape(config, batch_size, seq_len, seqs_per_call)
    D, L, T = config.dim, config.n_layers, batch_size * s_pad
    norms = 2 * L + 1
    shapes = config.param_shapes()
    layer_matrices = sum(
        int(np.prod(shape))
        for name, shape in shapes.items()
        if name.startswith("layers.") and len(shape) == 2
    )
    n_params = sum(int(np.prod(shape)) for shape in shapes.values())
    flops = {
        # cpu_ops.rmsnorm_forward per token: Σx² 2D, mean + eps + sqrt + 1/ 4, x·r D, ·γ D
        "rmsnorm_forward": norms * T * (4 * D + 4),
        # cpu_ops.rmsnorm_backward per token: x̂ D, dγ 2D, g D, proj 2D + 1, dx 3D
        "rmsnorm_backward": norms * T * (9 * D + 1),
        "rmsnorm_gain_accumulation": norms * D * calls,
        "residual_adds": 4 * L * T * D,  # x + o, x2 + y forward; dx2 + dy, dx + dx2 backward
        "embedding_scatter_add": T * D,
        "weight_gradient_accumulation": layer_matrices * calls,  # fp16 kernel outputs into fp32
        "loss_scale_unscale": n_params,
        "nonfinite_check": n_params,
    }
    for name, n in classifier_host_flops(config.dim, config.vocab_size, n_seq * s_pad, vocab_chunk).items():
        flops[name] = n * calls
    return flops
