"""What a training run will cost before it starts: memory (estimated) and time per step (predicted).

Memory is counted from the model's shapes, part by part, the way `anekit.train.step.ModelRunner`
and `anekit.train.loop.Trainer` hold them:

- weights: the fp32 master copy the optimizer updates, plus the runner's copy in its CPU dtype;
- gradients: one set in the CPU dtype (two while micro-batches are accumulated);
- AdamW state: the two fp32 moments, plus one parameter's worth of temporaries for the update check;
- kernel buffers: every layer's weights staged into its four kernels' inputs (ane-private-api.md §5.4:
  attention forward/backward hold Wq, Wk, Wv, Wo; FFN forward/backward hold W1, W2, W3) in the
  buffer dtype (fp16; float64 under exact reference numerics), plus their activation blocks;
- activations: what each layer's forward keeps for its backward, per token (`step._Saved`);
- working set: the largest transient of one step: the classifier's logits for one vocabulary chunk,
  or one kernel call's values (a layer's weights unpacked, the FFN's hidden values, the attention
  scores and probabilities per head);
- runtime: the Python process with NumPy, coremltools and the tokenizer loaded (measured on Linux,
  CPython 3.12: 340 MB).

It is an estimate. Measured peaks (max RSS, reference backend, Linux, 2 steps): tiny batch 8
435 MB (estimated 432 MB); stories15m shapes with vocab 512 at batch 2 / 8 / 16: 554 / 988 / 1432 MB
(estimated 603 / 955 / 1425 MB). The run is refused only when the estimate exceeds the machine's
physical memory, where it would swap or be killed.

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
VOCAB_CHUNK = 8192  #: classifier rows per chunk (`ModelRunner(vocab_chunk=...)` default)


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
    available: int | None = None,
) -> MemoryEstimate:
    """Peak memory of training `config` with `batch` sequences per micro-batch (see module docstring).

    exact: the reference backend's exact numerics (float64 buffers and CPU side) instead of fp16/fp32.
    available: the machine's memory to compare with (default: `physical_memory()`)."""
    from ..kernels.layout import ROW_ALIGN, round_up

    cpu = 8 if exact else 4
    buf = 8 if exact else 2
    n = config.n_params()
    D, H, Q, KV, L = config.dim, config.hidden_dim, config.q_dim, config.kv_dim, config.n_layers
    layer = 2 * Q * D + 2 * KV * D + 3 * H * D  # one layer's matrices
    biggest = max(a * b for a, b in ((config.vocab_size, D), (H, D), (Q, D)))
    tokens = batch * round_up(config.seq_len, ROW_ALIGN)
    per_token_saved = 6 * D + 2 * Q + 2 * KV + 3 * H  # x, norms, residuals, attention and FFN taps
    s_pad = round_up(config.seq_len, ROW_ALIGN)
    parts = {
        "weights": n * 4 + n * cpu,
        "gradients": n * cpu * (2 if accum > 1 else 1),
        "AdamW state": 2 * n * 4 + 3 * biggest * 4,
        "kernel buffers": L * (2 * layer * buf + tokens * (4 * D + 2 * Q + 2 * H) * buf),
        "activations": L * tokens * per_token_saved * cpu,
        "working set": max(
            3 * tokens * min(config.vocab_size, VOCAB_CHUNK) * cpu,  # logits, softmax, dlogits
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
