"""How a pretrained decoder is cut into engine programs: the `DecoderPlan`, and `choose_plan`.

A plan fixes four things the runner (`anekit.llm.decoder.Decoder`) builds its programs from:

- `layers_per_program`: transformer layers fused into one program (the decode program and the prefill
  program of a group use the same grouping);
- `residual`: where the residual stream lives between programs: ``"fp32-host"`` (each program takes the
  residual in and returns it; the host keeps it in float32 between programs) or ``"fp16"`` (it stays
  fp16 in the programs' I/O);
- `vocab_chunk`: classifier rows per output chunk (the engine's axis, channel and SRAM limits);
- `prefill_chunk`: prompt tokens per prefill call.

`choose_plan` picks them from the cost model (`anekit.llm.predict`) and the engine's facts; its
docstring gives the reasoning.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine_limits import (
    DEFAULT_LOADED_PROGRAM_BUDGET,
    MAX_AXIS,
    MAX_SPATIAL,
    ROW_ALIGN,
    SRAM_BYTES,
    WEIGHT_FILE_BYTES,
)
from ..errors import AnekitError

__all__ = [
    "RESIDUALS",
    "QUANTS",
    "DecoderPlan",
    "PlanError",
    "choose_plan",
    "default_plan",
    "group_channels",
    "group_input_shape",
    "program_count",
    "weight_bytes_per_element",
]

#: Where the residual stream can live between programs (see `DecoderPlan`).
RESIDUALS = ("fp32-host", "fp16")
#: Weight formats the decoder bakes (anekit.kernels.quant): fp16, or int8 / int4 through the
#: constexpr dequantization ops (ane-private-api.md §10.4).
QUANTS = ("fp16", "int8", "int4")

#: An fp16 residual stream between dispatches failed past ~16 layers at dim 4096 (Llama 3.1 8B);
#: ane-private-api.md §10.4 (MidasMulli/ane-compiler README). Beyond either bound the residual is
#: kept in fp32 on the host.
FP16_RESIDUAL_MAX_LAYERS = 16
FP16_RESIDUAL_MAX_DIM = 4096
#: Prompt tokens per prefill call unless max_len is shorter: a prefill program's activations are
#: [dim, chunk]; 128 positions keep a 1x1 conv past the small-spatial, weight-read-bound regime
#: (ane-private-api.md §4.1: M3 Pro 9.98 TFLOPS at S=64 vs 16.77 at S=2048) while a group's
#: activations stay far below the SRAM (32 MB) for models up to dim 8192.
DEFAULT_PREFILL_CHUNK = 128


try:  # the package's error root for LLM errors, once it exists (anekit.llm.errors, helper H3)
    from .errors import LLMError as _Base
except ImportError:  # pragma: no cover - until llm/errors.py lands
    _Base = AnekitError


class PlanError(_Base, ValueError):
    """A decoder plan that is malformed or does not fit the model / the engine; says which field."""


def weight_bytes_per_element(quant: str) -> float:
    """Stored bytes of one weight element (scales not included): fp16 2, int8 1, int4 0.5."""
    try:
        return {"fp16": 2.0, "int8": 1.0, "int4": 0.5}[quant]
    except (KeyError, TypeError):
        raise PlanError(f"weights {quant!r} is not supported; choose one of {', '.join(QUANTS)}") from None


@dataclass(frozen=True)
class DecoderPlan:
    """How the decoder's layers are grouped into programs (see the module docstring)."""

    layers_per_program: int  #: transformer layers fused into one program (decode and prefill)
    residual: str  #: "fp32-host" or "fp16"
    vocab_chunk: int  #: classifier rows per output chunk
    prefill_chunk: int  #: prompt tokens per prefill call

    def __post_init__(self):
        for name in ("layers_per_program", "vocab_chunk", "prefill_chunk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PlanError(f"DecoderPlan.{name} must be a positive integer, got {v!r}")
        if self.residual not in RESIDUALS:
            valid = ", ".join(map(repr, RESIDUALS))
            raise PlanError(f"DecoderPlan.residual must be one of {valid}, got {self.residual!r}")
        if self.vocab_chunk > MAX_AXIS:
            # no tensor axis longer than MAX_AXIS (docs/ane-facts.md#axis-cap)
            raise PlanError(
                f"DecoderPlan.vocab_chunk {self.vocab_chunk} exceeds the engine's axis limit {MAX_AXIS}; "
                "use a smaller chunk"
            )

    def n_groups(self, n_layers: int) -> int:
        """Layer groups (= decode programs per token, before the classifier) for `n_layers` layers."""
        return -(-n_layers // self.layers_per_program)

    def n_vocab_chunks(self, vocab_size: int) -> int:
        return -(-vocab_size // self.vocab_chunk)

    def check(self, config, quant: str = "fp16", max_len: int | None = None) -> DecoderPlan:
        """Raise `PlanError` if this plan does not fit `config` with `quant` weights (and a cache of
        `max_len` positions); return self."""
        if self.layers_per_program > config.n_layers:
            raise PlanError(
                f"DecoderPlan.layers_per_program {self.layers_per_program} exceeds the model's "
                f"{config.n_layers} layers"
            )
        width = _round(min(self.prefill_chunk, max_len if max_len is not None else self.prefill_chunk))
        channels = group_channels(config, self.layers_per_program, width)
        if channels > MAX_AXIS:
            raise PlanError(
                f"DecoderPlan.layers_per_program {self.layers_per_program}: the group's K/V caches need "
                f"{channels} channels in one input, over the engine's axis limit {MAX_AXIS} "
                "(docs/ane-facts.md#axis-cap); use fewer layers per program"
            )
        if max_len is not None:
            columns = group_input_shape(config, self.layers_per_program, width, _round(max_len))[1]
            if columns > MAX_SPATIAL:
                raise PlanError(
                    f"DecoderPlan.prefill_chunk {self.prefill_chunk} with a cache of {max_len}: the packed "
                    f"input is {width} + {_round(max_len)} columns wide, over the engine's width limit "
                    f"{MAX_SPATIAL} (docs/ane-facts.md#spatial-cap); use a smaller prefill_chunk or max_len"
                )
        per_layer = _layer_weight_bytes(config, quant)
        if per_layer * self.layers_per_program >= WEIGHT_FILE_BYTES:
            raise PlanError(
                f"DecoderPlan.layers_per_program {self.layers_per_program}: one program's weights "
                f"({per_layer * self.layers_per_program / 2**30:.2f} GiB) reach the engine's 2 GiB "
                "weight-file limit (mil-text.md §2.7); use fewer layers per program"
            )
        n = program_count(config, self)
        if n > DEFAULT_LOADED_PROGRAM_BUDGET:
            raise PlanError(
                f"the plan needs {n} loaded programs, more than the {DEFAULT_LOADED_PROGRAM_BUDGET} anekit "
                "keeps loaded per process (the driver's cap is 128, ane-private-api.md §10.1); use more "
                "layers per program"
            )
        chunks = self.n_vocab_chunks(config.vocab_size)
        if chunks * ROW_ALIGN > MAX_SPATIAL:
            raise PlanError(
                f"DecoderPlan.vocab_chunk {self.vocab_chunk}: {chunks} classifier chunks x width {ROW_ALIGN} "
                f"exceed the engine's width limit {MAX_SPATIAL}; use a larger vocab_chunk"
            )
        return self


def _round(n: int) -> int:
    """n rounded up to whole 64-byte rows of fp16 (ROW_ALIGN elements)."""
    return -(-n // ROW_ALIGN) * ROW_ALIGN


def group_input_shape(config, layers: int, width: int, max_len: int) -> tuple[int, int]:
    """(channels, columns) of a group program's packed input, as `anekit.kernels.decoder` lays it out
    (`group_input_shape` there; a test keeps the two equal): the per-call rows (residual, RoPE rows,
    chunk mask) stacked in the first `width` columns, every layer's K and V cache plus the cache mask
    rows in the next `max_len`."""
    channels = max(config.dim + 2 * config.head_dim + width, 2 * layers * config.kv_dim + width)
    return channels, _round(width + max_len)


def group_channels(config, layers: int, width: int = ROW_ALIGN) -> int:
    """Channels of a group program's packed input of `width` columns per call (see `group_input_shape`)."""
    return group_input_shape(config, layers, width, 1)[0]


def _prefill_chunk(max_len: int | None) -> int:
    """DEFAULT_PREFILL_CHUNK, at most the cache, and narrow enough that the prefill program's packed
    input (chunk + cache columns) stays within the width limit (docs/ane-facts.md#spatial-cap)."""
    if max_len is None:
        return DEFAULT_PREFILL_CHUNK
    room = (MAX_SPATIAL - _round(max_len)) // ROW_ALIGN * ROW_ALIGN
    return max(1, min(DEFAULT_PREFILL_CHUNK, max_len, max(ROW_ALIGN, room)))


def _layer_weight_bytes(config, quant: str) -> float:
    """Stored bytes of one transformer layer's matrices at `quant` (norm vectors and scales excluded)."""
    D, H, Q, KV = config.dim, config.hidden_dim, config.q_dim, config.kv_dim
    return (D * Q + 2 * D * KV + Q * D + 3 * D * H) * weight_bytes_per_element(quant)


def program_count(config, plan: DecoderPlan, max_len: int | None = None) -> int:
    """Programs the decoder keeps loaded (as `anekit.llm.decoder.Decoder` builds them): per layer group
    a decode program (width ROW_ALIGN) and a prefill program unless the prefill chunk rounds to that
    width, plus one classifier program holding every vocabulary chunk."""
    cache_len = max_len or config.seq_len
    prefill = -(-max(1, min(plan.prefill_chunk, cache_len)) // ROW_ALIGN) * ROW_ALIGN
    return plan.n_groups(config.n_layers) * (1 if prefill == ROW_ALIGN else 2) + 1


def _vocab_chunk(config, quant: str) -> int:
    """The largest classifier chunk whose weight stays within the SRAM (a MAC op whose working set
    passes ~32 MB slows down, ane-private-api.md §4.3) and the axis limit, a multiple of ROW_ALIGN,
    split evenly over the vocabulary."""
    per_row = config.dim * weight_bytes_per_element(quant)
    cap = min(MAX_AXIS, int(SRAM_BYTES // 2 // per_row), config.vocab_size)
    cap = max(ROW_ALIGN, cap // ROW_ALIGN * ROW_ALIGN)
    n = -(-config.vocab_size // cap)
    even = -(-config.vocab_size // n)
    return min(cap, -(-even // ROW_ALIGN) * ROW_ALIGN)


def _residual(config) -> str:
    deep = config.n_layers > FP16_RESIDUAL_MAX_LAYERS or config.dim >= FP16_RESIDUAL_MAX_DIM
    return "fp32-host" if deep else "fp16"


def default_plan(config, *, quant: str = "fp16", max_len: int | None = None) -> DecoderPlan:
    """A plan from the facts alone (no cost model): every layer in as few programs as the weight-file
    limit allows, the residual per §10.4, the classifier chunk per the SRAM."""
    weight_bytes_per_element(quant)
    per_layer = _layer_weight_bytes(config, quant)
    lpp = max(1, min(config.n_layers, int((WEIGHT_FILE_BYTES - 1) // max(per_layer, 1))))
    residual = _residual(config)
    if residual == "fp32-host":
        # inside a program the residual is fp16: no program carries it through more layers than §10.4 saw work
        lpp = min(lpp, FP16_RESIDUAL_MAX_LAYERS)
    while lpp > 1 and group_channels(config, lpp, DEFAULT_PREFILL_CHUNK) > MAX_AXIS:
        lpp -= 1
    return DecoderPlan(lpp, residual, _vocab_chunk(config, quant), _prefill_chunk(max_len))


def choose_plan(config, *, quant: str = "fp16", chip: str = "m4", max_len: int | None = None) -> DecoderPlan:
    """The plan the cost model predicts decodes fastest on `chip` (`anekit.llm.predict.best_plan`).

    Reasoning (each step cites the fact it rests on; figures are the model's predictions for M4 at a
    512-position cache, never measurements):

    1. **Decode is bandwidth-bound.** One token streams every weight once and does ~2 FLOPs per weight
       byte (fp16), so time ≈ dispatches x ~0.09 ms + (weights + KV cache) / bandwidth
       (ane-private-api.md §10.4; M4: 93 GB/s fitted, `anekit.perf` params). Qwen3-0.6B in fp16 moves
       1.19 GB per token: ~13 ms of the predicted 14.5 ms. Everything else is second order.
    2. **Layers per program: as many as the limits allow.** Each program costs a dispatch (~0.09 ms on
       M4, §4.2; Llama-3.2-1B went from 42.2 to 50.2 tok/s by fusing 40 -> 25 dispatches, §10.5) and
       re-exposes its first weight load; more layers per program only removes those. The limits: one
       program's weights stay below the 2 GiB weight-file limit (mil-text.md §2.7; Llama-3.2-1B's 16
       fp16 layers are 1.95 GB, just inside), all programs (a decode and a prefill program per group,
       one classifier) within the loaded-program budget (§10.1), the caches of a group within the
       65536-channel axis of the packed input (`anekit.kernels.decoder`). The search tries each group
       count at its balanced size (28 layers in 2 programs are 14 + 14, not 16 + 12). Qwen3-0.6B int8:
       14 layers/program (3 dispatches/token with the classifier) predicts 123 tok/s against 95 tok/s
       with a program per layer (29 dispatches).
    3. **Residual.** An fp16 residual between dispatches failed past ~16 layers at dim 4096 (§10.4).
       A model deeper than `FP16_RESIDUAL_MAX_LAYERS` or as wide as `FP16_RESIDUAL_MAX_DIM` keeps it in
       fp32 on the host ("fp32-host": programs return the change, the host adds it in float32) and no
       program carries the fp16 stream through more than 16 layers. Cost: a few KB of I/O and one
       host add per program, and for 17-32 layer models one extra dispatch (Qwen3-0.6B: 2 programs
       instead of 1, predicted -1 %). Shallower, narrower models (Llama-3.2-1B: 16 layers, dim 2048)
       keep "fp16", where the residual never leaves its single program anyway.
    4. **Classifier.** One program holding every vocabulary chunk (a dispatch, not one per chunk);
       among chunk sizes within the axis limit the model's fastest, ties (within 0.5 %) to fewer
       chunks: chunks far past the 32 MB SRAM slow their op (§4.3), and the whole vocabulary in one
       op is beyond the axis limit for both benchmark models.
    5. **Prefill chunk.** `DEFAULT_PREFILL_CHUNK` (128), or less for a short cache or where the packed
       input's width limit needs it. Predicted prefill of a 512-token prompt (`predict_prefill`,
       Qwen3-0.6B int8, M4, cache 2048): 5342 / 6075 / 6365 / 6135 tok/s at chunks of 64 / 128 / 256 /
       512; 128 is within 5 % of the best while padding a short prompt to at most 128 columns.

    Falls back to `default_plan` (the same limits without the cost model) if `anekit.llm.predict`
    cannot be imported.
    """
    try:
        from .predict import best_plan
    except ImportError:  # pragma: no cover - only without the cost model
        return default_plan(config, quant=quant, max_len=max_len)
    return best_plan(config, quant=quant, chip=chip, max_len=max_len)
