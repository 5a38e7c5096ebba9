"""The per-chip cost model: a program's time on the Neural Engine from its FLOPs, bytes and working set.

Form (all times in ms; every term has a published dataset that pins it, see calibrate.py):

    time = dispatch                                    host round trip per evaluation (XPC + IOKit)
         + (input + output) / BW                       the I/O surfaces cross memory once
         + max(0, W_first / BW - t_first)              exposed load: the first weighted op cannot start
                                                       before its weights stream in (later ops' weights
                                                       arrive while earlier ops run)
         + sum over ops of  t_op * sram(ws_op)         (the first op's exposed load is scaled too)

    t_op = flops / (P * eff_kind * int8)               MAC array (conv: eff 1; matmul: eff_matmul)
         + operand_bytes / B_onchip                    reading the op's weight into the MAC array
    t_op = flops / (P * eff_vector)                    elementwise, reductions, softmax, quantization
    t_op = bytes written / B_move                      data movement (reshape, transpose, slice, concat, cast)

    sram(ws) = 1 + alpha * max(0, ws / SRAM - 1) ** gamma     gradual slow-down beyond the cliff

Why this form:
- `dispatch` + exposed load give the utilisation-versus-depth curve of ane-private-api.md §4.1: both are
  paid once per program, so a single op wastes most of the engine (the blog's "up to ~70 %",
  landscape.md §8) while 32-128 chained ops approach the marginal rate; the chained-conv table is a
  straight line in depth with an intercept of ~0.09 ms on M4 (§4.1 against §4.2).
- The operand-read term makes throughput depend on spatial size: a 1x1 conv does `2*S` FLOPs per weight
  byte pair, so small S is weight-read bound (M3 Pro: 9.98 TFLOPS at S=64, 16.77 at S=2048, §4.1).
- The exposed load is what makes one large conv slow (§4.2: 2048 ch takes 0.237 ms for 0.54 GFLOP, about
  the time to stream its 8 MB of weights at 60-90 GB/s, the ANE bandwidth of base chips, landscape.md §4).
- matmul runs at a fraction of a 1x1 conv (blog: conv ~3x faster, §4.2); W8A8 MAC ops run `int8`
  times faster (§4.4, 1.88x); weight-only int8 only shrinks the bytes (mil-text.md §3.12).
- Data movement gets its own bandwidth: Apple's own ANE guidance is to minimise copies, "no reshapes,
  one transpose" (landscape.md §3), and the training kernels, rich in reshapes, transposes and concats,
  run ~1.5x slower than their FLOPs and bytes alone predict (§4.8); that dataset pins `B_move`.
- The SRAM term is applied per op (the engine streams op by op; a 128-deep chain with 64 MB of weights
  keeps its rate, §4.1, while one op with a 128 MB weight collapses, §4.3).

Utilisation = FLOPs / (P * time). The chip parameters are fitted, not published: see params.json and
`anekit.perf.calibrate` for how, and for the error on every published row.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources

from ..errors import AnekitError
from .chips import CHIPS, chip_id
from .count import MAC_KINDS, OpCost, ProgramCost, count_ops

MB = 1024 * 1024  # the benchmarks print MiB and call it MB (ane-private-api.md §4.1 `W(MB)`)


@dataclass(frozen=True)
class GlobalParams:
    """Parameters shared by every chip (the engine's micro-architecture is one design, M1-M5)."""

    onchip_tbs: float  #: on-chip bandwidth reading a MAC op's weight operand, TB/s
    matmul_eff: float  #: matmul rate / 1x1-conv rate
    vector_eff: float  #: elementwise rate / peak MAC rate (assumed: no published figure isolates it)
    move_gbs: float  #: bandwidth of data-movement ops (bytes written), GB/s
    int8_speedup: float  #: W8A8 MAC rate / FP16 rate
    sram_alpha: float  #: slow-down scale beyond the SRAM cliff
    sram_gamma: float  #: how fast it grows with the overshoot


@dataclass(frozen=True)
class ChipParams:
    """One chip's fitted parameters; `provenance` says for each where it came from."""

    peak_tflops: float
    bandwidth_gbs: float
    dispatch_ms: float
    sram_mb: float
    provenance: dict[str, str] = field(default_factory=dict)
    assumed_from: str | None = None  #: set when the chip has no calibration data of its own


@dataclass(frozen=True)
class Params:
    globals: GlobalParams
    chips: dict[str, ChipParams]
    setups: dict[str, float]  #: dispatch ms of measurement setups that differ from their chip's default
    fit: dict = field(default_factory=dict)  #: how the values were obtained (objective, rows, date)

    def chip(self, name: str) -> ChipParams:
        cid = chip_id(name)
        if cid not in self.chips:
            raise UncalibratedChip(cid, sorted(self.chips))
        return self.chips[cid]

    def to_json(self) -> dict:
        return {
            "globals": asdict(self.globals),
            "chips": {k: asdict(v) for k, v in self.chips.items()},
            "setups": dict(self.setups),
            "fit": self.fit,
        }

    @classmethod
    def from_json(cls, data: dict) -> Params:
        return cls(
            globals=GlobalParams(**data["globals"]),
            chips={k: ChipParams(**v) for k, v in data["chips"].items()},
            setups=dict(data.get("setups", {})),
            fit=dict(data.get("fit", {})),
        )


class UncalibratedChip(AnekitError, ValueError):
    """The chip is in the table but no published measurement calibrates the model for it."""

    def __init__(self, cid: str, calibrated: list[str]):
        chip = CHIPS[cid]
        super().__init__(
            f"no calibration for {chip.name}: nothing published measures its Neural Engine "
            f"(see anekit.perf.CHIPS[{cid!r}]); calibrated chips: {', '.join(calibrated)}"
        )
        self.chip = cid


@lru_cache(maxsize=1)
def default_params() -> Params:
    """The fitted parameters shipped with anekit (`params.json`, written by `calibrate --fit`)."""
    text = resources.files(__package__).joinpath("params.json").read_text(encoding="utf-8")
    return Params.from_json(json.loads(text))


@dataclass(frozen=True)
class OpTime:
    name: str
    op_type: str
    kind: str
    flops: float
    time_ms: float
    working_set: float
    count: int = 1


@dataclass(frozen=True)
class Estimate:
    """A predicted evaluation time on one chip, with what it is made of."""

    chip: str
    time_ms: float
    flops: float
    bytes: float  #: inputs + outputs + weights moved per evaluation
    working_set: float  #: largest single op's working set, bytes
    input_bytes: float
    output_bytes: float
    weight_bytes: float
    n_ops: int
    breakdown: dict[str, float]  #: ms per term: dispatch, load, mac, operand_read, vector, move, sram
    utilisation: float  #: flops / (peak * time)
    ops: tuple[OpTime, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def tflops(self) -> float:
        return self.flops / (self.time_ms * 1e9) if self.time_ms > 0 else 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["tflops"] = self.tflops
        return d


def sram_factor(ws_bytes: float, sram_mb: float, g: GlobalParams) -> float:
    """Slow-down of an op whose working set is `ws_bytes`: 1 below the cliff, growing gradually beyond."""
    over = ws_bytes / (sram_mb * MB) - 1.0
    return 1.0 + g.sram_alpha * over**g.sram_gamma if over > 0 else 1.0


def _op_terms(op: OpCost, cp: ChipParams, g: GlobalParams) -> dict[str, float]:
    """Milliseconds of one op (times its count), split by term, before the SRAM factor."""
    peak = cp.peak_tflops * 1e9  # FLOPs per ms
    onchip = g.onchip_tbs * 1e9  # bytes per ms
    n = op.count
    if op.kind in MAC_KINDS:
        rate = peak * (g.matmul_eff if op.kind == "matmul" else 1.0)
        if op.int8_act:
            rate *= g.int8_speedup
        return {"mac": n * op.flops / rate, "operand_read": n * op.operand_bytes / onchip}
    if op.kind == "vector":
        return {"vector": n * op.flops / (peak * g.vector_eff)}
    if op.kind == "move":
        # a move costs the bytes it writes, its output (a slice of a packed input writes only its part)
        written = op.act_bytes / 2 if op.written_bytes is None else op.written_bytes
        return {"move": n * written / (g.move_gbs * 1e6)}
    return {}


def predict(
    cost: ProgramCost, chip: str = "m4", params: Params | None = None, setup: str | None = None
) -> Estimate:
    """Predict the time of one evaluation of the program `cost` describes on `chip`.

    setup: a measurement setup with its own dispatch cost (e.g. "m4/pr23", macOS 26.3), used by the
        calibration; None = the chip's default path.
    """
    p = params or default_params()
    cid = chip_id(chip)
    cp = p.chip(cid)
    g = p.globals
    notes = list(cost.notes)
    if cp.assumed_from:
        notes.append(f"{cid}: no published data; parameters assumed from {cp.assumed_from}")
    dispatch = p.setups.get(setup, cp.dispatch_ms) if setup else cp.dispatch_ms
    bw = cp.bandwidth_gbs * 1e6  # bytes per ms
    io = (cost.input_bytes + cost.output_bytes) / bw
    parts = {
        "dispatch": dispatch,
        "load": io,
        "mac": 0.0,
        "operand_read": 0.0,
        "vector": 0.0,
        "move": 0.0,
        "sram": 0.0,
    }
    times = []
    worst = None
    first = True
    for op in cost.ops:
        terms = _op_terms(op, cp, g)
        base = sum(terms.values())
        exposed = 0.0
        if first and op.kind in MAC_KINDS and op.weight_bytes:
            # The first weighted op streams its weights from memory while it computes: it takes the longer
            # of the two. Later ops' weights arrive while earlier ops run (ane-private-api.md §4.1 vs §4.2).
            first = False
            exposed = max(0.0, op.weight_bytes / bw - base / op.count)
        factor = sram_factor(op.working_set, cp.sram_mb, g)
        for k, v in terms.items():
            parts[k] += v
        parts["load"] += exposed
        parts["sram"] += (base + exposed) * (factor - 1.0)
        if factor > 1.0 and (worst is None or op.working_set > worst.working_set):
            worst = op
        times.append(
            OpTime(
                op.name,
                op.op_type,
                op.kind,
                op.flops * op.count,
                (base + exposed) * factor,
                op.working_set,
                op.count,
            )
        )
    if worst is not None:
        notes.append(
            f"op {worst.name!r} works on {worst.working_set / MB:.1f} MB, beyond the {cp.sram_mb:g} MB SRAM "
            f"cliff: slowed x{sram_factor(worst.working_set, cp.sram_mb, g):.2f}"
        )
    total = sum(parts.values())
    flops = cost.flops
    return Estimate(
        chip=cid,
        time_ms=total,
        flops=flops,
        bytes=cost.bytes,
        working_set=cost.working_set,
        input_bytes=cost.input_bytes,
        output_bytes=cost.output_bytes,
        weight_bytes=cost.weight_bytes,
        n_ops=cost.n_ops,
        breakdown=parts,
        utilisation=flops / (cp.peak_tflops * 1e9 * total) if total > 0 else 0.0,
        ops=tuple(times),
        notes=tuple(notes),
    )


def estimate(program, chip: str = "m4", params: Params | None = None) -> Estimate:
    """Predict `program`'s time per evaluation on `chip`'s Neural Engine.

    program: a coremltools Program, an `anekit.mil.MilModel`, a path to a model directory or `model.mil`,
        or an already counted `ProgramCost`.
    """
    if isinstance(program, ProgramCost):
        cost = program
    else:
        if isinstance(program, (str, os.PathLike)):
            from ..mil.model import load

            program = load(program)
        cost = count_ops(program)
    return predict(cost, chip, params)
