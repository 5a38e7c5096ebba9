"""What one training step costs: the share of its FLOPs that runs in kernels, and the cost model's
prediction of the engine's time per step, kernel by kernel.

Both read the step's schedule (`anekit.train.schedule.schedule`: every kernel a step runs and how many
times) and the host work it leaves (`anekit.train.schedule.host_flops`), so they count exactly what
`ModelRunner` runs; nothing is compiled. FLOPs follow the project's conventions: a kernel's matmul
FLOPs are `KernelSpec.flops` (2 per multiply-add); its elementwise work is what the cost model's
counter (`anekit.perf.count_ops`) adds on top; the host's are `host_flops` entries.

The engine time is a prediction of the calibrated cost model (`anekit.perf.predict`), never a
measurement: this machine has no Neural Engine. Beside it stand the reference project's published
Stories110M step times (ane-private-api.md §4.8).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.config import ModelConfig

__all__ = ["KernelCost", "StepCost", "step_cost", "PUBLISHED_STEP_MS"]

#: Published Stories110M training steps on the engine (ane-private-api.md §4.8), shown beside predictions.
PUBLISHED_STEP_MS = {
    "stories110m": [
        {
            "chip": "m4",
            "step_ms": 91.0,
            "engine_ms": 49.0,
            "what": "maderix/ANE dynamic pipeline, batch 1 x 256: whole step 91 ms (README); engine part "
            "ane_fwd 21 + ane_bwd 28 ms at its introduction (commit cb474e1)",
            "source": "ane-private-api.md §4.8",
        },
        {
            "chip": "m4",
            "step_ms": 91.8,
            "engine_ms": None,
            "what": "maderix/ANE train_large_ane (PR #19), static weights",
            "source": "ane-private-api.md §4.8",
        },
    ]
}


@dataclass(frozen=True)
class KernelCost:
    """One kernel of the step: calls per step, FLOPs per call (matmul and all ops), predicted ms per call
    (None when the chip has no calibrated parameters)."""

    name: str
    calls: int
    matmul_flops: int
    flops: float
    predicted_ms: float | None

    @property
    def step_ms(self) -> float | None:
        return None if self.predicted_ms is None else self.predicted_ms * self.calls


@dataclass(frozen=True)
class StepCost:
    """A training step's work split between kernels and host, and its predicted engine time."""

    model: str
    batch_size: int
    seq_len: int
    chip: str
    kernels: tuple[KernelCost, ...]
    host_flops: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def kernel_matmul_flops(self) -> int:
        return sum(k.matmul_flops * k.calls for k in self.kernels)

    @property
    def kernel_flops(self) -> float:
        return sum(k.flops * k.calls for k in self.kernels)

    @property
    def host_total(self) -> int:
        return sum(self.host_flops.values())

    @property
    def share(self) -> float:
        """Kernel FLOPs (every op the counter sees) over all FLOPs of the step."""
        total = self.kernel_flops + self.host_total
        return self.kernel_flops / total if total else 0.0

    @property
    def engine_ms(self) -> float | None:
        times = [k.step_ms for k in self.kernels]
        return None if any(t is None for t in times) else sum(times)

    @property
    def dispatches(self) -> int:
        return sum(k.calls for k in self.kernels)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "chip": self.chip,
            "kernels": [
                {
                    "name": k.name,
                    "calls": k.calls,
                    "matmul_flops": k.matmul_flops,
                    "flops": k.flops,
                    "predicted_ms_per_call": k.predicted_ms,
                    "predicted_ms_per_step": k.step_ms,
                }
                for k in self.kernels
            ],
            "host_flops": dict(self.host_flops),
            "kernel_flops": self.kernel_flops,
            "kernel_matmul_flops": self.kernel_matmul_flops,
            "host_total_flops": self.host_total,
            "kernel_share": self.share,
            "dispatches": self.dispatches,
            "predicted_engine_ms": self.engine_ms,
            "published": PUBLISHED_STEP_MS.get(self.model, []),
            "notes": list(self.notes),
        }


def step_cost(
    config: ModelConfig,
    batch_size: int = 1,
    *,
    seq_len: int | None = None,
    seqs_per_call: int | None = None,
    chip: str = "m4",
) -> StepCost:
    """Count and predict one step of `ModelRunner(config, batch_size, seq_len=..., seqs_per_call=...)`
    on `chip`. Kernels with the same name (one per layer) are reported once with their call count."""
    from ..perf import UncalibratedChip, count_ops, predict
    from .schedule import host_flops, schedule

    uses = schedule(config, batch_size, seq_len=seq_len, seqs_per_call=seqs_per_call)
    merged: dict[str, KernelCost] = {}
    notes: list[str] = []
    for use in uses:
        if use.name in merged:  # the same program again: add its calls
            k = merged[use.name]
            merged[use.name] = KernelCost(
                k.name, k.calls + use.calls_per_step, k.matmul_flops, k.flops, k.predicted_ms
            )
            continue
        cost = count_ops(use.spec.program)
        try:
            est = predict(cost, chip)
            ms: float | None = est.time_ms
            notes.extend(n for n in est.notes if n not in notes)
        except UncalibratedChip as e:
            ms = None
            if str(e) not in notes:
                notes.append(str(e))
        merged[use.name] = KernelCost(use.name, use.calls_per_step, use.spec.flops, cost.flops, ms)
    s = config.seq_len if seq_len is None else seq_len
    return StepCost(
        config.name,
        batch_size,
        s,
        chip,
        tuple(merged.values()),
        dict(host_flops(config, batch_size, seq_len=seq_len)),
        tuple(notes),
    )
