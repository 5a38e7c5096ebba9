"""The op table: one entry per MIL op anekit knows, read by every consumer.

Each entry states three facts about an op:

- its **kind**: what it does to values (see `KINDS`);
- whether it **preserves values**: every output element is a copy of an input element (or an exact
  zero), so a result of the input's dtype needs no rounding (the reference backend skips it);
- its **cost rule**: how the cost model (`anekit.perf.count`) counts its FLOPs (see `COST_RULES`).

The consumers derive what they need from it and keep no list of their own:
`anekit.backends.reference.registry.VALUE_PRESERVING`, lint's layout ops (`LAYOUT_OPS`, the ops a
`single-op-program` does not count as compute) and the cost model's FLOP rules. A test fails if an
op the reference backend registers, lint names or the cost model counts is missing here.

Adding an op that coremltools defines: its entry here, its reference semantics in
`anekit/backends/reference/ops/` (one `@op` function), and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass

#: What an op does to values.
KINDS = {
    "constant": "a value known when the program is compiled (const, constexpr_*)",
    "view": "the same elements under another shape; free on the engine",
    "movement": "copies input elements to new places (reshape, slices, concat, tile, pad, gather)",
    "conversion": "changes each element's dtype (cast): bytes like a movement, values rounded",
    "unary": "elementwise on one tensor (activations, math functions, masking by position)",
    "binary": "elementwise on two broadcast tensors",
    "ternary": "elementwise on three broadcast tensors (select)",
    "reduction": "combines the elements along axes",
    "normalization": "softmax and the norms: reductions and elementwise work over an axis",
    "quantization": "converts between floats and integers with a scale (quantize, dequantize)",
    "compute": "runs on the MAC array: conv, matmul, linear, attention",
    "recurrent": "a recurrent cell (lstm, gru, rnn)",
    "state": "reads or writes a state buffer (read_state, coreml_update_state)",
    "control": "control flow (cond, while_loop)",
    "scatter": "writes updates into copies of a tensor at indices",
    "generator": "builds a tensor from scalar operands (range_1d)",
}

#: How the cost model counts an op's FLOPs (one multiply-add = 2 FLOPs; `anekit.perf.count`).
COST_RULES = {
    "conv": "MAC array: 2 * N * Cout * (Cin/groups) * prod(kernel) * prod(out spatial) (+ bias)",
    "conv_transpose": "MAC array: 2 * N * Cin * (Cout/groups) * prod(kernel) * prod(in spatial)",
    "matmul": "MAC array: 2 * batch * M * N * K",
    "linear": "MAC array: 2 * rows * Dout * Din (+ rows * Dout with a bias)",
    "sdpa": "MAC array: two matmuls (2*B*L*S*E + 2*B*L*S*EV) + 7*B*L*S",
    "per_output": "vector unit: `flops` per output element",
    "per_input": "vector unit: `flops` per element of input x",
    "move": "0 FLOPs; costs the bytes it writes",
    "view": "0 FLOPs, free",
    "folded": "none: evaluated when the program is compiled, its bytes are its consumer's weights",
    "none": "no FLOP rule: counted as 1 FLOP per output element and named in the estimate's notes",
}


@dataclass(frozen=True)
class OpInfo:
    """One op's entry: kind (a key of KINDS), value preservation, cost rule (a key of COST_RULES)
    and, for "per_output" / "per_input", the FLOPs per element."""

    name: str
    kind: str
    value_preserving: bool
    cost: str
    flops: float = 0.0


OPS: dict[str, OpInfo] = {}


def _add(kind: str, names: str, *, preserves: bool = False, cost: str = "none", flops: float = 0.0) -> None:
    for name in names.split():
        if name in OPS:
            raise ValueError(f"op {name!r} in the op table twice")
        OPS[name] = OpInfo(name, kind, preserves, cost, flops)


# -- values known at compile time -----------------------------------------------------------------
_add("constant", "const", cost="folded")
# lut / sparse decompression outputs are copies of stored entries (or zeros)
_add("constant", "constexpr_lut_to_dense constexpr_sparse_to_dense", preserves=True, cost="folded")
_add(
    "constant",
    "constexpr_affine_dequantize constexpr_blockwise_shift_scale constexpr_cast constexpr_lut_to_sparse "
    "constexpr_sparse_blockwise_shift_scale",
    cost="folded",
)

# -- layout: views, movement, conversion ----------------------------------------------------------
_add("view", "squeeze expand_dims identity", preserves=True, cost="view")
_add("view", "shape", cost="view")  # its output is the shape, an int32 vector: no copy of x
# `reshape` is a movement: on the engine a reshape that regroups channels is a copy (Apple's ANE
# principle "minimize memory copies: no reshapes", landscape.md §3).
_add(
    "movement",
    "reshape transpose slice_by_index slice_by_size concat split stack tile pad gather gather_along_axis",
    preserves=True,
    cost="move",
)
_add("movement", "gather_nd")  # named by lint (off the engine); no reference semantics, no cost rule
# cast changes values (rounds to the new dtype) but does no arithmetic: it costs bytes like a move
# (benchmarks.md, B_move) and the fp32-io fact counts it as the price of fp32 I/O, not as compute.
_add("conversion", "cast", cost="move")

# -- elementwise ----------------------------------------------------------------------------------
_add(
    "unary",
    "abs acos asin atan atanh ceil clip cos cosh elu erf exp exp2 floor gelu inverse leaky_relu "
    "linear_activation log logical_not prelu relu relu6 round rsqrt scaled_tanh sigmoid sigmoid_hard "
    "sign silu sin sinh softplus softsign sqrt square tan tanh threshold clamped_relu",
    cost="per_output",
    flops=1,
)
# band_part keeps x inside the band and writes exact zeros outside: values preserved, but the engine
# still decides per element (like `maximum`), so it is elementwise work, not a move.
_add("unary", "band_part", preserves=True, cost="per_output", flops=1)
_add(
    "binary",
    "add sub mul real_div pow maximum minimum floor_div mod equal not_equal greater greater_equal less "
    "less_equal logical_and logical_or logical_xor",
    cost="per_output",
    flops=1,
)
# select copies a or b per element (values preserved) after testing cond: elementwise work.
_add("ternary", "select", preserves=True, cost="per_output", flops=1)

# -- reductions and normalizations ----------------------------------------------------------------
_add(
    "reduction",
    "reduce_sum reduce_mean reduce_max reduce_min reduce_prod reduce_sum_square reduce_l1_norm "
    "reduce_l2_norm reduce_log_sum reduce_log_sum_exp reduce_argmax reduce_argmin topk",
    cost="per_input",
    flops=1,
)
_add("normalization", "softmax", cost="per_output", flops=5)  # max, subtract, exp, sum, divide
_add("normalization", "layer_norm instance_norm", cost="per_output", flops=7)
_add("normalization", "batch_norm", cost="per_output", flops=2)
_add("normalization", "l2_norm", cost="per_output", flops=3)
_add("quantization", "quantize dequantize", cost="per_output", flops=2)  # scale and round/offset

# -- the MAC array --------------------------------------------------------------------------------
_add("compute", "conv", cost="conv")
_add("compute", "conv_transpose", cost="conv_transpose")
_add("compute", "matmul", cost="matmul")
_add("compute", "linear", cost="linear")
_add("compute", "scaled_dot_product_attention", cost="sdpa")

# -- the rest -------------------------------------------------------------------------------------
_add("recurrent", "lstm gru rnn")
_add("state", "read_state coreml_update_state")
_add("control", "cond while_loop")
_add("scatter", "scatter scatter_nd scatter_along_axis")
_add("generator", "range_1d")


def info(name: str) -> OpInfo | None:
    """The table's entry for op `name`, or None for an op anekit does not know."""
    return OPS.get(name)


def names(*, kinds=None, cost=None, value_preserving=None) -> frozenset[str]:
    """Names of the ops whose kind is in `kinds`, cost rule in `cost`, value preservation as given."""
    return frozenset(
        n
        for n, i in OPS.items()
        if (kinds is None or i.kind in kinds)
        and (cost is None or i.cost in cost)
        and (value_preserving is None or i.value_preserving == value_preserving)
    )


#: Ops whose outputs are copies of input elements (the reference backend skips their rounding).
VALUE_PRESERVING = names(value_preserving=True)

#: Kinds that do no arithmetic on the engine's compute units: a program of these plus one other op is
#: a single-op program (lint's `single-op-program`). cast is one: it converts at the I/O boundary.
LAYOUT_KINDS = frozenset({"constant", "view", "movement", "conversion", "state"})
