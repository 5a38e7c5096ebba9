"""Rules on ops the engine does not run: ops that fail to compile, that give wrong results, that Core
ML places off the engine, and control flow."""

from __future__ import annotations

from collections.abc import Iterator

from .engine import _rule
from .program import _Fn, _Hit, _ops


@_rule(
    "rsqrt-not-compiled",
    "error",
    "rsqrt fails to compile on the ANE",
    fact="rsqrt-inverse",
    url="https://github.com/maderix/ane-prefill-bench",
)
def _check_rsqrt(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "rsqrt"):
        yield fn.op_hit(op, "rsqrt fails to compile for the ANE; use pow(x, -0.5) (as in maderix's RMSNorm)")


@_rule(
    "inverse-not-compiled",
    "error",
    "inverse fails to compile on the ANE",
    fact="rsqrt-inverse",
    url="https://github.com/maderix/ane-prefill-bench",
)
def _check_inverse(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "inverse"):
        yield fn.op_hit(op, "inverse fails to compile for the ANE; use real_div(1, x)")


@_rule(
    "sdpa-attn-mask-ignored",
    "error",
    "scaled_dot_product_attention ignores attn_mask on the ANE (wrong results)",
    fact="sdpa-mask-ignored",
    url="https://github.com/maderix/ane-prefill-bench",
)
def _check_sdpa_mask(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "scaled_dot_product_attention"):
        if op.inputs.get("attn_mask") is not None:
            yield fn.op_hit(
                op,
                "scaled_dot_product_attention compiles but the ANE ignores attn_mask (inline, BLOBFILE "
                "or input), so masked positions are attended. Decompose it: matmul(q, k, transpose_y) "
                "-> mul(1/sqrt(d)) -> add(mask const, -65504 for masked) -> softmax -> matmul(v)",
            )


#: Ops Core ML places off the ANE, with what to do instead (mil-text.md §5 #15).
_OFF_ANE = {
    "gather": "gather/embedding lookups run on the CPU; do the lookup on the CPU",
    "gather_nd": "gather ops run on the CPU; do the lookup on the CPU",
    "gather_along_axis": "gather_along_axis leaves the ANE; do it on the CPU",
    "scatter": "scatter falls off the ANE; do it on the CPU",
    "scatter_nd": "scatter_nd falls off the ANE; do it on the CPU",
    "scatter_along_axis": "scatter_along_axis falls off the ANE; do it on the CPU",
    "topk": "topk (and the tile/gather consuming its indices) leaves the ANE; do it on the CPU",
    "lstm": "LSTM cells run on the CPU; unroll them into matmul/conv and elementwise ops",
    "gru": "GRU cells run on the CPU; unroll them into matmul/conv and elementwise ops",
    "rnn": "RNN cells run on the CPU; unroll them into matmul/conv and elementwise ops",
}


@_rule(
    "op-falls-off-ane",
    "warning",
    "Op that Core ML places off the ANE (gather*, scatter*, topk, lstm/gru/rnn)",
    fact="ops-off-engine",
    url="https://github.com/apple/coremltools/issues/1780",
)
def _check_off_ane(fn: _Fn) -> Iterator[_Hit]:
    for op in fn.ops:
        if op.op_type in _OFF_ANE:
            yield fn.op_hit(
                op,
                f"{_OFF_ANE[op.op_type]}. The private in-memory path has no CPU fallback, so expect "
                "the compile to fail",
            )


@_rule(
    "control-flow",
    "error",
    "Control flow (cond, while_loop) is not supported on the ANE",
    fact="static-graphs",
    url="https://github.com/hollance/neural-engine/blob/master/docs/unsupported-layers.md",
)
def _check_control_flow(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "cond", "while_loop"):
        yield fn.op_hit(
            op,
            f"{op.op_type} is control flow, which the ANE does not support; compute both branches and "
            "select, unroll the loop, or keep the control on the CPU and compile one kernel per path",
        )
