"""Predicted decode speed of a pretrained decoder on the Neural Engine: tokens/s and dispatches/token.

    from anekit.llm.predict import predict_decode, SHAPES
    p = predict_decode(SHAPES["qwen3-0.6b"], quant="int8", chip="m4", max_len=512)
    p.tokens_per_s, p.dispatches, p.weight_bytes      # a prediction, never a measurement

How (one model, not a second one): each program the runner (`anekit.llm.decoder.Decoder`) evaluates
per token is described as a `ProgramCost` (`decode_program_cost`: the ops of its layers with their
FLOPs, stored weight bytes incl. int8/int4 scales, activation bytes, the KV cache it reads and the I/O
it moves), and timed by the calibrated cost model `anekit.perf.model.predict` (dispatch, I/O at the
chip's bandwidth, the first weighted op's exposed weight load, MAC / operand-read / vector / move op
terms, the SRAM factor). The description is analytical, written op for op like the published
benchmarks' programs in `anekit.perf.workloads`; once `anekit.kernels.decoder` builds the real
programs, `count_ops` on them can replace it (the test suite compares the two where it can).

One term is added on top of `predict`, the **weight-streaming bound**. The calibrated form charges the
weight load of the *first* weighted op only ("later ops' weights arrive while earlier ops run",
model.py); every calibration dataset computes long enough per weight byte for that to hold. Decode
does ~2 FLOPs per weight byte, so the later ops' weights do *not* arrive for free: a program cannot
finish before all its weights (and the cache it reads) have streamed from memory. The bound
generalises the model's own exposed-load term from the first op to the whole program:

    time = predict(cost).time + max(0, (weights + cache) / BW - (ops + exposed first load))

which equals the calibrated model whenever the ops take longer than the stream (every dataset it was
fitted on) and is `dispatch + io + bytes / BW` for decode — the form ANEForge's cost model and the
"decode is bandwidth-bound" fact state (ane-private-api.md §10.4, §10.7).

Quantized weights: int8 and int4 are counted at their stored size plus fp16 scales (one per output
channel for int8, one per `INT4_BLOCK` input elements for int4), the counting rule of `count_ops` for
`constexpr_*` weights. Two published hardware facts qualify that (ane-private-api.md §10.4,
MidasMulli/ane-compiler README "Hardware Characterization"):

- **Q4 pays a 31 % latency penalty** against Q8 (per layer): applied as a stated factor,
  `Q4_SLOWDOWN`, to the non-dispatch time of every int4 program (the int8 time of the same program
  times 1.31, or the int4 byte stream if that is longer). So the model predicts int4 *slower* than int8.
- **Q8 ran at 97.4 % of FP16 per-layer throughput** at 50.4 % of the memory. That contradicts "weight
  bytes set tokens/s" for int8 on that setup (Llama-3.1-8B layers). The default prediction follows the
  bytes (the cost model's form); `quant_rates="published"` applies the published ratio instead
  (int8 = fp16 / 0.974, int4 = that x 1.31) and the design-choice table shows both.

Every number here is a prediction of the cost model; `DecodePrediction.kind` says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace

from ..engine_limits import (
    DEFAULT_LOADED_PROGRAM_BUDGET,
    MAX_AXIS,
    ROW_ALIGN,
    WEIGHT_FILE_BYTES,
)
from ..errors import AnekitError
from ..model.config import PRESETS, ModelConfig, RopeScaling, preset
from ..perf.count import OpCost, ProgramCost
from ..perf.model import Params, default_params, predict
from .plan import group_input_shape

__all__ = [
    "DecodeOptions",
    "DecodePrediction",
    "PrefillPrediction",
    "DecodeError",
    "PUBLISHED_DECODE",
    "Q4_SLOWDOWN",
    "Q8_RELATIVE_THROUGHPUT",
    "SHAPES",
    "best_plan",
    "decode_program_cost",
    "design_choices",
    "predict_decode",
    "predict_prefill",
    "shape",
]

FP16, FP32 = 2, 4
#: "Q4 pays 31% latency penalty" (against Q8, per layer): MidasMulli/ane-compiler README,
#: ane-private-api.md §10.4.
Q4_SLOWDOWN = 1.31
#: "Q8 ... 97.4% of FP16 per-layer throughput at 50.4% memory cost": same source.
Q8_RELATIVE_THROUGHPUT = 0.974
#: int4 weights carry one fp16 scale per this many input elements (blockwise, the layout of
#: `constexpr_blockwise_shift_scale`, mil-text.md); int8 one per output channel.
INT4_BLOCK = 32
#: Plans predicted within this fraction of the fastest count as equally fast (`best_plan`).
TIE_TOLERANCE = 0.005
#: Elementwise FLOPs per element of an RMSNorm built from MIL ops (square, mean, add eps, rsqrt, two
#: multiplies) and of RoPE on interleaved pairs (two multiplies, one add).
RMSNORM_FLOPS, ROPE_FLOPS = 6.0, 3.0


class DecodeError(AnekitError, ValueError):
    """A decode prediction asked for with an option out of range; says which and the valid values."""


@dataclass(frozen=True)
class DecodeOptions:
    """The design choices a decode program embodies; the defaults are anekit's choices, each toggled
    in `design_choices` to show its predicted effect."""

    #: materialise each kv head n_heads/n_kv_heads times before attention (False: each query group
    #: attends its kv head directly; the repeat was 72 % of attention cost, §10.4)
    gqa_repeat: bool = False
    #: the KV cache is a bound engine buffer written in place; False: the whole cache goes into and
    #: out of every program on every token
    cache_in_place: bool = True
    #: positions a decode program computes: one token padded to a 64-byte row (ROW_ALIGN fp16
    #: elements, docs/ane-facts.md#rows-64-bytes); 1 is what an unpadded layout would cost
    width: int = ROW_ALIGN
    #: how a baked weight is applied: a 1x1 "conv" (the MAC array's full rate) or a "matmul"
    #: (~1/3 of it, ane-private-api.md §4.2)
    mac_kind: str = "conv"
    #: "bytes": int8/int4 time follows the stored bytes (x Q4_SLOWDOWN for int4); "published": the
    #: measured per-layer ratios of §10.4 (int8 = fp16 / 0.974)
    quant_rates: str = "bytes"
    #: "one": every classifier chunk is an op of one program (anekit); "per-chunk": a program per
    #: chunk, one dispatch each (maderix PR #26 ran its LM head as 16 chunk kernels, §9 table)
    classifier_programs: str = "one"

    def __post_init__(self):
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise DecodeError(f"DecodeOptions.width must be a positive integer, got {self.width!r}")
        if self.mac_kind not in ("conv", "matmul"):
            raise DecodeError(f"DecodeOptions.mac_kind must be 'conv' or 'matmul', got {self.mac_kind!r}")
        if self.classifier_programs not in ("one", "per-chunk"):
            raise DecodeError(
                "DecodeOptions.classifier_programs must be 'one' or 'per-chunk', "
                f"got {self.classifier_programs!r}"
            )
        if self.quant_rates not in ("bytes", "published"):
            raise DecodeError(
                f"DecodeOptions.quant_rates must be 'bytes' or 'published', got {self.quant_rates!r}"
            )


@dataclass(frozen=True)
class DecodePrediction:
    """The cost model's prediction for decoding one token (not a measurement)."""

    model: str
    chip: str
    quant: str
    max_len: int
    plan: object  #: the DecoderPlan predicted
    ms_per_token: float
    dispatches: int  #: program evaluations per token
    programs: int  #: programs kept loaded (decode + prefill groups + classifier chunks)
    weight_bytes: float  #: weight bytes streamed per token (stored size, incl. scales)
    cache_bytes: float  #: KV-cache bytes read per token
    flops: float
    breakdown: dict[str, float] = field(default_factory=dict)  #: ms per term, summed over programs
    notes: tuple[str, ...] = ()
    kind: str = "predicted"

    @property
    def tokens_per_s(self) -> float:
        return 1000.0 / self.ms_per_token

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["plan"] = dataclasses.asdict(self.plan)
        d["tokens_per_s"] = self.tokens_per_s
        return d


# ------------------------------------------------------------------------------------------------
# Model shapes (the two the issue benchmarks); fields from the models' Hugging Face config.json
# ------------------------------------------------------------------------------------------------


def _config(**kw) -> ModelConfig:
    # qk_norm / qkv_bias / sliding_window exist once helper H1's ModelConfig fields land
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in kw.items() if k in names})


#: Benchmark shapes by name (ModelConfig), from the models' Hugging Face config.json.
SHAPES: dict[str, ModelConfig] = {
    # Qwen/Qwen3-0.6B: 28 layers, hidden 1024, 16 heads, 8 kv, head_dim 128, intermediate 3072,
    # vocab 151936, tied, rope_theta 1e6, rms_norm_eps 1e-6, per-head q/k RMSNorm
    "qwen3-0.6b": _config(
        name="qwen3-0.6b",
        dim=1024,
        hidden_dim=3072,
        n_layers=28,
        n_heads=16,
        n_kv_heads=8,
        head_dim=128,
        vocab_size=151936,
        seq_len=40960,
        rope_theta=1e6,
        norm_eps=1e-6,
        tie_embeddings=True,
        qk_norm=True,
    ),
    # meta-llama/Llama-3.2-1B: 16 layers, hidden 2048, 32 heads, 8 kv, head_dim 64, intermediate 8192,
    # vocab 128256, tied, rope_theta 5e5, llama3 RoPE scaling factor 32
    "llama-3.2-1b": _config(
        name="llama-3.2-1b",
        dim=2048,
        hidden_dim=8192,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        head_dim=64,
        vocab_size=128256,
        seq_len=131072,
        rope_theta=5e5,
        norm_eps=1e-5,
        tie_embeddings=True,
        rope_scaling=RopeScaling(
            factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
        ),
    ),
}


def shape(name: str) -> ModelConfig:
    """A benchmark shape or an anekit preset, by name."""
    if name in SHAPES:
        return SHAPES[name]
    if name in PRESETS:
        return preset(name)
    raise DecodeError(f"unknown model {name!r}; choose one of {', '.join([*SHAPES, *PRESETS])}")


#: Published decode rates on the engine (ane-private-api.md §10.5), beside which predictions are shown.
PUBLISHED_DECODE = {
    "qwen3-0.6b": [
        {
            "tok_s": 75.0,
            "weights": "not stated",
            "chip": "not stated",
            "source": "ANEForge docs/llm.md @00063a6",
        }
    ],
    "llama-3.2-1b": [
        {
            "tok_s": 50.2,
            "weights": "not stated",
            "chip": "not stated (its dispatch floor was measured on M5 Pro)",
            "dispatches": 25,
            "source": "MidasMulli/ane-compiler README",
        }
    ],
    "qwen2.5-0.5b": [
        {"tok_s": 82.0, "weights": "not stated", "chip": "m4-pro", "source": "maderix/ANE PR #26"}
    ],
    "tinyllama-1.1b": [
        {"tok_s": 62.0, "weights": "not stated", "chip": "m5-pro", "source": "ANEForge docs/llm.md @00063a6"}
    ],
    "llama-3.1-8b": [
        {"tok_s": 7.9, "weights": "int8", "chip": "not stated", "source": "MidasMulli/ane-compiler"}
    ],
}


# ------------------------------------------------------------------------------------------------
# The programs of one decode step
# ------------------------------------------------------------------------------------------------


def _check_quant(quant: str) -> None:
    if quant not in ("fp16", "int8", "int4"):
        raise DecodeError(f"weights {quant!r} is not supported; choose one of fp16, int8, int4")


def matrix_bytes(rows: int, cols: int, quant: str) -> float:
    """Stored bytes of a [rows, cols] weight (y = W x) at `quant`, incl. its fp16 scales."""
    _check_quant(quant)
    n = rows * cols
    if quant == "fp16":
        return n * FP16
    if quant == "int8":
        return n + rows * FP16  # one scale per output channel
    return n / 2 + (n / INT4_BLOCK) * FP16  # packed nibbles, a scale per block of INT4_BLOCK inputs


def _mac(name: str, rows: int, cols: int, quant: str, width: int, kind: str) -> OpCost:
    wb = matrix_bytes(rows, cols, quant)
    return OpCost(
        name,
        kind,
        kind,
        2.0 * rows * cols * width,
        weight_bytes=wb,
        operand_bytes=wb,
        act_bytes=(rows + cols) * width * FP16,
    )


def _vector(name: str, flops_per_elem: float, elems: float, op_type: str = "elementwise") -> OpCost:
    return OpCost(name, op_type, "vector", flops_per_elem * elems, act_bytes=2 * elems * FP16)


def _move(name: str, written_bytes: float) -> OpCost:
    # the model's move term charges half of act_bytes (input + output) as bytes written
    return OpCost(name, "tile", "move", 0.0, act_bytes=2 * written_bytes)


def _cache_columns(max_len: int) -> int:
    """Cache positions a program attends over: max_len rounded up to 64-byte rows. The programs are
    compiled for it and a sliding window is only a mask (`anekit.kernels.decoder`), so the cost does
    not depend on how full the cache is or on the window."""
    return -(-max_len // ROW_ALIGN) * ROW_ALIGN


def _layer_ops(config, i: int, quant: str, span: int, o: DecodeOptions) -> list[OpCost]:
    """The ops of one transformer layer decoding `o.width` positions against a cache of `span` keys
    (plus the `width` new keys of the call itself, scored by a second matmul pair)."""
    D, H, Q, KV, W = config.dim, config.hidden_dim, config.q_dim, config.kv_dim, o.width
    nh = config.n_heads
    # q and k head dims are padded to whole 64-byte rows before the score matmul (kernels.decoder)
    hd = -(-config.head_dim // ROW_ALIGN) * ROW_ALIGN
    k = o.mac_kind
    p = f"l{i}."
    norm_w = D * FP16
    ops = [
        replace(_vector(p + "attn_norm", RMSNORM_FLOPS, D * W, "rms_norm"), weight_bytes=norm_w),
        # q, k and v from one conv (kernels.decoder fuses them: fewer, larger ops, same bytes)
        _mac(p + "wqkv", Q + 2 * KV, D, quant, W, k),
    ]
    if getattr(config, "qkv_bias", False):
        ops.append(_vector(p + "qkv_bias", 1.0, (Q + 2 * KV) * W, "add"))
    if getattr(config, "qk_norm", False):
        ops.append(_vector(p + "qk_norm", RMSNORM_FLOPS, (Q + KV) * W, "rms_norm"))
    ops.append(_vector(p + "rope", ROPE_FLOPS, (Q + KV) * W, "rope"))
    for tag, keys in (("cache", span), ("new", W)):
        kv_bytes = keys * KV * FP16  # K or V of these keys, as stored
        if o.gqa_repeat and config.gqa_ratio > 1:
            # each kv head materialised once per query head of its group before the matmuls
            ops.append(_move(p + f"repeat_k_{tag}", keys * Q * FP16))
            ops.append(_move(p + f"repeat_v_{tag}", keys * Q * FP16))
            kv_bytes = keys * Q * FP16
        scores = nh * W * keys
        ops += [
            OpCost(
                p + f"qk_{tag}",
                "matmul",
                "matmul",
                2.0 * scores * hd,
                operand_bytes=kv_bytes,
                act_bytes=Q * W * FP16 + kv_bytes + scores * FP16,
            ),
            OpCost(
                p + f"av_{tag}",
                "matmul",
                "matmul",
                2.0 * scores * config.head_dim,
                operand_bytes=kv_bytes,
                act_bytes=scores * FP16 + kv_bytes + Q * W * FP16,
            ),
        ]
    # scale, mask, softmax over the cache and new keys together (count.py's sdpa rule: 7 per score)
    ops.append(_vector(p + "softmax", 7.0, nh * W * (span + W), "softmax"))
    ops += [
        _mac(p + "wo", D, Q, quant, W, k),
        _vector(p + "residual_attn", 1.0, D * W, "add"),
        replace(_vector(p + "ffn_norm", RMSNORM_FLOPS, D * W, "rms_norm"), weight_bytes=norm_w),
        _mac(p + "w13", 2 * H, D, quant, W, k),  # W1 and W3 as one conv (kernels.decoder)
        _vector(p + "silu_mul", 2.0, H * W, "silu"),
        _mac(p + "w2", D, H, quant, W, k),
        _vector(p + "residual_ffn", 1.0, D * W, "add"),
    ]
    return ops


def decode_program_cost(
    config,
    layers: range,
    *,
    quant: str = "fp16",
    max_len: int,
    residual: str = "fp32-host",
    options: DecodeOptions = DecodeOptions(),
) -> tuple[ProgramCost, float]:
    """The `ProgramCost` of the decode program of `layers`, and the KV-cache bytes it reads.

    As `anekit.kernels.decoder.group_program` builds it: one packed fp16 input (the residual, RoPE
    rows and masks for `width` positions, and every layer's K and V cache, bound once and read in
    place, so the cache crosses memory once per token as the program reads it) and one fp16 output
    (the residual, or with "fp32-host" its change, which the host adds to its float32 copy: a few KB,
    no program op; then each layer's new K/V rows, which the host writes into the cache in place).
    Without `cache_in_place` the whole cache also goes back out every token.
    """
    o = options
    W, D, KV = o.width, config.dim, config.kv_dim
    span = _cache_columns(max_len)
    ops: list[OpCost] = []
    for i in layers:
        ops += _layer_ops(config, i, quant, span, o)
    n = len(layers)
    cache = n * 2 * span * KV * FP16
    # the packed input `[1, rows, 1, cols]` (kernels.decoder.group_input_layout, llm.plan.group_input_shape)
    rows, cols = group_input_shape(config, n, W, span)
    inputs = rows * cols * FP16
    outputs = (D + n * 2 * KV) * W * FP16
    if not o.cache_in_place:
        outputs += cache
    return ProgramCost(tuple(ops), float(inputs), float(outputs)), float(cache)


def classifier_program_cost(
    config,
    vocab_chunk: int,
    *,
    quant: str,
    options: DecodeOptions = DecodeOptions(),
    chunks: int | None = None,
) -> ProgramCost:
    """The classifier program (`anekit.kernels.decoder.classifier_program`): final RMSNorm, then one
    1x1 conv per `vocab_chunk` rows (the last chunk padded to full size), logits out in fp16.
    chunks: how many chunks the program holds (default: all of the vocabulary)."""
    o, D = options, config.dim
    n = chunks or -(-config.vocab_size // vocab_chunk)
    ops = [replace(_vector("final_norm", RMSNORM_FLOPS, D * o.width, "rms_norm"), weight_bytes=D * FP16)]
    ops += [_mac(f"cls{j}", vocab_chunk, D, quant, o.width, o.mac_kind) for j in range(n)]
    return ProgramCost(tuple(ops), float(D * o.width * FP16), float(n * vocab_chunk * o.width * FP16))


def _time(cost: ProgramCost, streamed: float, chip: str, params: Params) -> tuple[float, dict, list]:
    """`predict` plus the weight-streaming bound (module docstring)."""
    est = predict(cost, chip, params)
    bw = params.chip(chip).bandwidth_gbs * 1e6  # bytes per ms
    b = dict(est.breakdown)
    ops_time = est.time_ms - b["dispatch"] - (cost.input_bytes + cost.output_bytes) / bw
    stream = max(0.0, streamed / bw - ops_time)
    b["stream"] = stream
    return est.time_ms + stream, b, list(est.notes)


def _program_time(
    cost, streamed, quant, chip, params, o: DecodeOptions, relative_cost=None
) -> tuple[float, dict, list]:
    """Time of one program at `quant`, with the §10.4 quantization facts applied (module docstring).
    `relative_cost(q)` gives the same program's (cost, streamed) at weights `q`."""
    t, b, notes = _time(cost, streamed, chip, params)
    dispatch = b["dispatch"]
    if quant == "fp16" or relative_cost is None:
        return t, b, notes
    if o.quant_rates == "published":
        c16, s16 = relative_cost("fp16")
        t16, _, _ = _time(c16, s16, chip, params)
        t8 = dispatch + (t16 - dispatch) / Q8_RELATIVE_THROUGHPUT
    else:
        c8, s8 = relative_cost("int8")
        t8 = _time(c8, s8, chip, params)[0] if quant == "int4" else t
    if quant == "int8":
        b["quant"] = t8 - t
        return t8, b, notes
    t4 = max(t, dispatch + (t8 - dispatch) * Q4_SLOWDOWN)
    b["quant"] = t4 - t
    return t4, b, notes


class _Timer:
    """Times of a model's decode programs at one setting, memoised by program size (every group of
    the same size costs the same, and so does every classifier chunk of the same rows)."""

    def __init__(self, config, quant, chip, max_len, residual, options, params):
        self.config, self.quant, self.chip, self.max_len = config, quant, chip, max_len
        self.residual, self.options, self.params = residual, options, params
        self._memo: dict = {}

    def _costs(self, what, n):
        c = self.config

        def cost(q):
            if what == "group":
                pc, kv = decode_program_cost(
                    c, range(n), quant=q, max_len=self.max_len, residual=self.residual, options=self.options
                )
                return pc, pc.weight_bytes + kv
            pc = classifier_program_cost(
                c, n, quant=q, options=self.options, chunks=1 if what == "chunk" else None
            )
            return pc, pc.weight_bytes

        return cost

    def __call__(self, what: str, n: int):
        """(ms, breakdown, notes, weight bytes, cache bytes, flops) of a group of `n` layers
        (what="group") or of the classifier program in chunks of `n` rows (what="classifier")."""
        key = (what, n)
        if key not in self._memo:
            cost = self._costs(what, n)
            pc, streamed = cost(self.quant)
            t, b, notes = _program_time(pc, streamed, self.quant, self.chip, self.params, self.options, cost)
            self._memo[key] = (t, b, notes, pc.weight_bytes, streamed - pc.weight_bytes, pc.flops)
        return self._memo[key]


def _split(total: int, size: int) -> list[int]:
    return [min(size, total - s) for s in range(0, total, size)]


def predict_decode(
    config,
    *,
    quant: str = "fp16",
    chip: str = "m4",
    max_len: int = 512,
    plan=None,
    options: DecodeOptions = DecodeOptions(),
    params: Params | None = None,
    _timer: _Timer | None = None,
) -> DecodePrediction:
    """Predicted time per decoded token of `config` with `quant` weights on `chip`, the programs
    attending over a cache of `max_len` positions (the programs are compiled for that length, so the
    cost does not depend on how full the cache is), grouped as `plan` (default: `choose_plan`'s).

    Per token the runner evaluates one program per layer group, then the classifier program (all its
    chunks in one program); the embedding row is gathered on the host (a few KB)."""
    from .plan import choose_plan, program_count

    _check_quant(quant)
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise DecodeError(f"max_len must be a positive integer, got {max_len!r}")
    p = params or default_params()
    p.chip(chip)  # an unknown or uncalibrated chip fails here, with the calibrated ones listed
    if plan is None:
        plan = choose_plan(config, quant=quant, chip=chip, max_len=max_len)
    timer = _timer or _Timer(config, quant, chip, max_len, plan.residual, options, p)
    total = weights = cache = flops = 0.0
    parts: dict[str, float] = {}
    notes: list[str] = []
    programs = [("group", n) for n in _split(config.n_layers, plan.layers_per_program)]
    if options.classifier_programs == "one":
        programs.append(("classifier", plan.vocab_chunk))
    else:
        programs += [("chunk", plan.vocab_chunk)] * -(-config.vocab_size // plan.vocab_chunk)
    for what, n in programs:
        t, b, ns, w, kv, f = timer(what, n)
        total += t
        weights += w
        cache += kv
        flops += f
        for k, v in b.items():
            parts[k] = parts.get(k, 0.0) + v
        notes.extend(x for x in ns if x not in notes)
    if quant == "int4":
        notes.append(
            f"int4: x{Q4_SLOWDOWN} the int8 time (Q4's published latency penalty, ane-private-api.md §10.4)"
        )
    return DecodePrediction(
        model=config.name,
        chip=chip,
        quant=quant,
        max_len=max_len,
        plan=plan,
        ms_per_token=total,
        dispatches=len(programs),
        programs=program_count(config, plan, max_len),
        weight_bytes=weights,
        cache_bytes=cache,
        flops=flops,
        breakdown=parts,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class PrefillPrediction:
    """The cost model's prediction for prefilling `tokens` prompt tokens (not a measurement)."""

    model: str
    chip: str
    quant: str
    tokens: int
    width: int  #: columns per prefill program call
    time_ms: float
    dispatches: int
    flops: float
    kind: str = "predicted"

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / (self.time_ms / 1e3)


def predict_prefill(
    config,
    tokens: int,
    *,
    quant: str = "fp16",
    chip: str = "m4",
    max_len: int = 512,
    plan=None,
    params: Params | None = None,
) -> PrefillPrediction:
    """Predicted time to prefill `tokens` prompt tokens: as the runner does it, the prompt in chunks of
    the prefill width (`plan.prefill_chunk` rounded to 64-byte rows, at most the cache), each chunk
    through every group's prefill program, then the classifier once for the last position. The group
    programs are the decode programs' ops at the wider width (`anekit.kernels.decoder` builds both
    from one function)."""
    from .plan import choose_plan

    _check_quant(quant)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise DecodeError(f"tokens must be a positive integer, got {tokens!r}")
    p = params or default_params()
    p.chip(chip)
    if plan is None:
        plan = choose_plan(config, quant=quant, chip=chip, max_len=max_len)
    cols = _cache_columns(max_len)
    width = -(-min(plan.prefill_chunk, cols) // ROW_ALIGN) * ROW_ALIGN
    wide = _Timer(config, quant, chip, max_len, plan.residual, DecodeOptions(width=width), p)
    narrow = _Timer(config, quant, chip, max_len, plan.residual, DecodeOptions(), p)
    calls = -(-tokens // width)
    groups = _split(config.n_layers, plan.layers_per_program)
    t = calls * sum(wide("group", n)[0] for n in groups) + narrow("classifier", plan.vocab_chunk)[0]
    flops = calls * sum(wide("group", n)[5] for n in groups) + narrow("classifier", plan.vocab_chunk)[5]
    return PrefillPrediction(config.name, chip, quant, tokens, width, t, calls * len(groups) + 1, flops)


# ------------------------------------------------------------------------------------------------
# Choosing the plan
# ------------------------------------------------------------------------------------------------


def _vocab_candidates(vocab: int) -> list[int]:
    """Classifier chunk sizes worth trying: the vocabulary split into n even, row-aligned chunks."""
    out = []
    for n in range(1, 129):
        per = -(-vocab // n)
        c = -(-per // ROW_ALIGN) * ROW_ALIGN
        if c <= MAX_AXIS and c not in out:
            out.append(c)
    return out


def best_plan(
    config, *, quant: str = "fp16", chip: str = "m4", max_len: int | None = None, options=DecodeOptions()
):
    """The `DecoderPlan` with the least predicted time per token (see `anekit.llm.plan.choose_plan`
    for the reasoning); ties go to fewer loaded programs, then to smaller (balanced) groups."""
    from .plan import _residual, default_plan

    _check_quant(quant)
    base = default_plan(config, quant=quant, max_len=max_len)
    ctx = max_len if max_len is not None else min(config.seq_len, 4096)
    residual = _residual(config)
    timer = _Timer(config, quant, chip, ctx, residual, options, default_params())
    # group time and classifier time add up, so each is minimised over its own candidates
    groups = _group_times(config, quant, residual, base.prefill_chunk, timer)
    chunks = _classifier_times(config, quant, timer)
    found = _plans_within_budget(config, groups, chunks, residual, base.prefill_chunk, max_len)
    return _fastest(found) if found else base


def _group_times(config, quant: str, residual: str, prefill_chunk: int, timer: _Timer) -> dict[int, float]:
    """Layers per program -> predicted time of all the layer groups, for each size that fits: more
    layers per program only ever removes dispatches, and each group count is tried at its balanced size."""
    from .plan import FP16_RESIDUAL_MAX_LAYERS, _layer_weight_bytes, group_channels

    lpp_max = config.n_layers
    if residual == "fp32-host":
        lpp_max = min(lpp_max, FP16_RESIDUAL_MAX_LAYERS)
    per_layer = _layer_weight_bytes(config, quant)
    groups = {}
    for n_groups in range(1, config.n_layers + 1):
        lpp = -(-config.n_layers // n_groups)
        if lpp in groups or lpp > lpp_max or per_layer * lpp >= WEIGHT_FILE_BYTES:
            continue
        if group_channels(config, lpp, prefill_chunk) > MAX_AXIS:  # caches in one input (axis cap)
            continue
        groups[lpp] = sum(timer("group", n)[0] for n in _split(config.n_layers, lpp))
    return groups


def _classifier_times(config, quant: str, timer: _Timer) -> dict[int, float]:
    """Classifier chunk rows -> predicted classifier time, for each chunking whose weights fit a file."""
    chunks = {}
    for chunk in _vocab_candidates(config.vocab_size):
        n_chunks = -(-config.vocab_size // chunk)
        if matrix_bytes(n_chunks * chunk, config.dim, quant) >= WEIGHT_FILE_BYTES:
            continue
        chunks[chunk] = timer("classifier", chunk)[0]
    return chunks


def _plans_within_budget(config, groups: dict, chunks: dict, residual: str, prefill_chunk: int, max_len):
    """(time, programs, classifier chunks, layers per program, plan) of every combination of
    `groups` and `chunks` that loads at most `DEFAULT_LOADED_PROGRAM_BUDGET` programs."""
    from .plan import DecoderPlan, program_count

    found = []
    for lpp, tg in groups.items():
        for chunk, tc in chunks.items():
            plan = DecoderPlan(lpp, residual, chunk, prefill_chunk)
            n_prog = program_count(config, plan, max_len)
            if n_prog <= DEFAULT_LOADED_PROGRAM_BUDGET:
                found.append((tg + tc, n_prog, plan.n_vocab_chunks(config.vocab_size), lpp, plan))
    return found


def _fastest(found: list):
    """The plan of `found` (`_plans_within_budget`) to use: within TIE_TOLERANCE of the fastest, the
    fewest programs, then the fewest classifier ops: the model's finer differences (e.g. a smaller
    first op exposing less of its load) are below its error."""
    fastest = min(f[0] for f in found)
    close = [f for f in found if f[0] <= fastest * (1 + TIE_TOLERANCE)]
    return min(close, key=lambda f: (f[1], f[2], f[3], f[0]))[4]


# ------------------------------------------------------------------------------------------------
# The design-choice table
# ------------------------------------------------------------------------------------------------


def design_choices(config, *, quant: str = "int8", chip: str = "m4", max_len: int = 512) -> list[dict]:
    """Each design choice with its predicted effect: the prediction with anekit's choice and with the
    choice toggled (everything else kept), as tokens/s; `effect` = ours / alternative. Predictions of
    the cost model, not measurements."""
    from .plan import FP16_RESIDUAL_MAX_LAYERS, DecoderPlan

    kw = dict(quant=quant, chip=chip, max_len=max_len)
    base_plan = best_plan(config, **kw)
    base = predict_decode(config, plan=base_plan, **kw)
    rows = []

    def row(choice, ours, alternative, pred):
        rows.append(
            {
                "choice": choice,
                "ours": ours,
                "alternative": alternative,
                "tok_s_ours": base.tokens_per_s,
                "tok_s_alternative": pred.tokens_per_s,
                "effect": base.tokens_per_s / pred.tokens_per_s,
                "dispatches_ours": base.dispatches,
                "dispatches_alternative": pred.dispatches,
            }
        )

    lpp = base_plan.layers_per_program
    row(
        "layers per program",
        f"{lpp}",
        "1 (a program per layer)",
        predict_decode(config, plan=replace(base_plan, layers_per_program=1), **kw),
    )
    row(
        "no GQA head repeat",
        "each query group reads its kv head",
        "kv heads repeated (tile) first",
        predict_decode(config, plan=base_plan, options=DecodeOptions(gqa_repeat=True), **kw),
    )
    for q in ("fp16", "int8", "int4"):
        if q != quant:
            alt = predict_decode(config, quant=q, chip=chip, max_len=max_len)
            row("weights", quant, q, alt)
    if base_plan.residual == "fp32-host":
        alt_plan = DecoderPlan(config.n_layers, "fp16", base_plan.vocab_chunk, base_plan.prefill_chunk)
    else:
        alt_plan = replace(
            base_plan, residual="fp32-host", layers_per_program=min(lpp, FP16_RESIDUAL_MAX_LAYERS)
        )
    row(
        "residual between programs",
        f"{base_plan.residual} ({lpp} layers/program)",
        f"{alt_plan.residual} ({alt_plan.layers_per_program} layers/program)",
        predict_decode(config, plan=alt_plan, **kw),
    )
    row(
        "classifier chunking",
        f"{base_plan.vocab_chunk}-row chunks, one program",
        f"{base_plan.vocab_chunk}-row chunks, a program each",
        predict_decode(config, plan=base_plan, options=DecodeOptions(classifier_programs="per-chunk"), **kw),
    )
    if base_plan.vocab_chunk != MAX_AXIS:
        row(
            "classifier chunking",
            f"{base_plan.vocab_chunk}-row chunks",
            f"{MAX_AXIS}-row chunks (the axis limit)",
            predict_decode(config, plan=replace(base_plan, vocab_chunk=MAX_AXIS), **kw),
        )
    row(
        "cache written in place",
        "bound once, new rows written in place",
        "whole cache in and out every token",
        predict_decode(config, plan=base_plan, options=DecodeOptions(cache_in_place=False), **kw),
    )
    row(
        "decode width",
        f"{ROW_ALIGN} columns, 1 real token (64-byte rows)",
        "1 column (not a legal layout: shows the padding's cost)",
        predict_decode(config, plan=base_plan, options=DecodeOptions(width=1), **kw),
    )
    row(
        "baked weights applied as",
        "1x1 conv",
        "matmul",
        predict_decode(config, plan=base_plan, options=DecodeOptions(mac_kind="matmul"), **kw),
    )
    if quant != "fp16":
        pub = DecodeOptions(quant_rates="published")
        row(
            f"{quant} rate assumed",
            "stored bytes at the bandwidth (cost model)",
            "published per-layer ratios (§10.4: Q8 97.4% of FP16)",
            predict_decode(config, plan=best_plan(config, options=pub, **kw), options=pub, **kw),
        )
    return rows
