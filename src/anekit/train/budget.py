"""What a training run will cost before it starts: memory (estimated) and time per step (predicted).

Memory is counted from the model's shapes, part by part, the way `anekit.train.step.ModelRunner`
and `anekit.train.loop.Trainer` hold them:

- weights: the fp32 master copy the optimizer updates, plus the runner's embedding, norms and head
  in its CPU dtype (the layer matrices live only in the kernels' inputs);
- gradients: one set in the CPU dtype (two while micro-batches are accumulated);
- AdamW state: the two fp32 moments, plus the fused pass's scratch blocks;
- kernel buffers: every layer's six kernel inputs (`anekit.train.step`): attention and FFN forward
  and backward hold the layer's matrices (ane-private-api.md §5.4 "Stage") and their activation
  segments; the weight-gradient kernels hold activations; in the buffer dtype (fp16; float64 under
  exact reference numerics);
- classifier buffers: the classifier's weight as the host keeps it (Wᵀ per chunk, CPU dtype) and in
  its chunks' forward and backward inputs, with the tokens' activations per chunk
  (`anekit.train.classifier`);
- activations: what each layer's forward keeps on the host for its backward (x, x2, two rrms);
- working set: the largest transient of one step: one classifier chunk's logits while its kernel
  runs, or one kernel call's values (a layer's weights unpacked, the FFN's hidden values, the
  attention scores and probabilities per head);
- runtime: the Python process with NumPy, coremltools and the tokenizer loaded (measured on Linux,
  CPython 3.12: 340 MB).

It is an estimate. Measured peaks (max RSS of 2 steps with AdamW and restaging, reference backend,
Linux): tiny batch 8 436 MB (estimated 443 MB); stories15m shapes with vocab 512 at batch 8 1046 MB
(estimated 1038 MB); stories110m batch 1 3992 MB (estimated 3384 MB: 15 % under). The run is
refused only when the estimate exceeds the machine's physical memory, where it would swap or be
killed.

Time: on the engine, the cost model predicts every kernel of the step (`anekit.train.cost`), times
``accum``; that is a prediction for the kernels only, labelled so. Off the engine nothing predicts
the CPU emulation's speed: the first step is measured instead.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ..model.config import ModelConfig

MB = 1 << 20
GB = 1 << 30
RUNTIME_BYTES = 340 * MB  #: the interpreter with anekit's imports (see module docstring)


@dataclass(frozen=True)
class MemoryEstimate:
    parts: dict[str, int]  #: bytes by part (see module docstring)
    available: int | None  #: physical memory of this machine, None when unknown

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= self.available

    def describe(self) -> str:
        parts = ", ".join(f"{k} {_size(v)}" for k, v in self.parts.items() if v >= MB)
        have = f" of {_size(self.available)} on this machine" if self.available else ""
        return f"~{_size(self.total)} estimated{have} ({parts})"


def _size(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / MB:.0f} MB"


def physical_memory() -> int | None:
    """Bytes of RAM (SC_PHYS_PAGES x SC_PAGE_SIZE, which macOS answers too), None when unknown."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    if pages > 0 and size > 0:
        return int(pages) * int(size)
    if sys.platform == "darwin":  # pragma: no cover - sysconf answers on macOS; this is a fallback
        import subprocess

        try:
            out = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, timeout=5)
            return int(out.stdout.strip())
        except (OSError, ValueError, subprocess.SubprocessError):
            return None
    return None


def estimate_memory(
    config: ModelConfig,
    batch: int,
    accum: int = 1,
    *,
    exact: bool = False,
    reference: bool = False,
    available: int | None = None,
) -> MemoryEstimate:
    """Peak memory of training `config` with `batch` sequences per micro-batch (see module docstring).

    exact: the reference backend's exact numerics (float64 buffers and CPU side) instead of fp16/fp32.
    reference: the kernels run on the reference backend, whose bindings hold fp16 inputs as float32
    (the values the interpreter computes with, `ReferenceBinding`): twice the engine's bytes.
    available: the machine's memory to compare with (default: `physical_memory()`)."""
    from ..kernels.classifier import default_vocab_chunk
    from ..kernels.layout import ROW_ALIGN, round_up
    from .optim import SCRATCH_BYTES, AdamW

    cpu = 8 if exact else 4
    buf = 8 if exact else (4 if reference else 2)  # bytes a binding holds per input element
    n = config.n_params()
    D, H, Q, KV, L, V = (
        config.dim, config.hidden_dim, config.q_dim, config.kv_dim, config.n_layers, config.vocab_size
    )  # fmt: skip
    layer = 2 * Q * D + 2 * KV * D + 3 * H * D  # one layer's matrices
    s_pad = round_up(config.seq_len, ROW_ALIGN)
    tokens = batch * s_pad
    chunk = min(V, default_vocab_chunk(D, tokens, V))
    parts = {
        # the fp32 master copy; the runner keeps only the embedding, norms and head (the layer
        # matrices live in the kernels' inputs)
        "weights": n * 4 + (n - L * layer) * cpu,
        "gradients": n * cpu * (2 if accum > 1 else 1),
        "AdamW state": 2 * n * 4 + AdamW.threads * SCRATCH_BYTES,
        # per layer: the forward and backward kernels each hold the layer's matrices and their
        # activation segments; the weight-gradient kernels hold only activations
        "kernel buffers": L
        * (
            2 * layer * buf
            + tokens * (4 * D + 2 * Q + 2 * H) * buf
            + tokens * (4 * round_up(D, ROW_ALIGN) + 2 * Q + 2 * KV + 3 * H) * buf
        ),
        # the classifier's weight (once as staged, once per direction in its chunk bindings) and x
        "classifier buffers": V * D * cpu + 2 * V * D * buf + 2 * -(-V // chunk) * tokens * D * buf,
        # what a layer's forward keeps on the host for its backward: x, x2 and two rrms per token
        "activations": L * tokens * (2 * D + 2) * cpu,
        "working set": max(
            3 * tokens * chunk * 4,  # one classifier chunk's logits, exp and products while it runs
            # one kernel call: its layer's weights unpacked, the FFN's and the attention's values
            # (scores, probabilities and their gradients per head), fitted to the measured peaks
            layer * 4 + tokens * (10 * H + 8 * D + 6 * config.n_heads * s_pad) * 4,
        ),
        "runtime": RUNTIME_BYTES,
    }
    return MemoryEstimate(parts, physical_memory() if available is None else available)


def predict_engine_step_ms(config: ModelConfig, batch: int, accum: int = 1, chip: str = "m4") -> float:
    """The cost model's time for the kernels of one optimizer step on `chip`'s engine, in ms: every
    kernel the step runs (`anekit.train.cost.step_cost`) once per micro-batch. Host work (norms,
    residuals, AdamW) is not included."""
    from .cost import step_cost

    cost = step_cost(config, batch, chip=chip)
    if cost.engine_ms is None:
        raise ValueError("; ".join(cost.notes) or f"no cost-model parameters for {chip}")
    return cost.engine_ms * accum
