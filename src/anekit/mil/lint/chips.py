"""Rules reported for one chip family only (M1, M2, M3): channel counts, conv-only engines,
runtime-weight grouped conv, gelu's lookup table, the opset of the M1/M2 dialect."""

from __future__ import annotations

from collections.abc import Iterator

from ..._coreml import ct, types
from ...engine_limits import M3_CONV_CHANNELS
from .engine import _rule
from .program import _conv_cin, _Fn, _Hit, _input_value, _is_const, _ops, _shape

# Thresholds. Each number is the one the cited reference gives; tests may patch them in this module.
_M3_CHANNELS = M3_CONV_CHANNELS  # mil-text.md §5 #11


@_rule(
    "m3-conv-channels-not-512",
    "warning",
    "conv channel count other than 512 on M3 (only 512 compiled in M3 Pro/Ultra benchmarks)",
    fact="m3-512-channels",
    url="https://github.com/maderix/ANE/issues/42",
    chips=("m3",),
)
def _check_m3_channels(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "conv"):
        cin, w = _conv_cin(op), _shape(op.inputs["weight"])
        cout = int(w[0]) if w and not types.symbolic.is_symbolic(w[0]) else None
        odd = [f"{k} {n}" for k, n in (("in", cin), ("out", cout)) if n is not None and n != _M3_CHANNELS]
        if odd:
            yield fn.op_hit(
                op,
                f"conv channels ({', '.join(odd)}) are not {_M3_CHANNELS}; on M3 Pro / M3 Ultra only "
                f"{_M3_CHANNELS} channels compiled in a 52-value benchmark sweep (though 768/2048 "
                f"training dims compiled on M3 Ultra). Check it compiles, or pad to {_M3_CHANNELS}",
            )


@_rule(
    "matmul-sdpa-on-m1-m2",
    "warning",
    "matmul or scaled_dot_product_attention on M1/M2 (reported conv-only by a third party)",
    fact="m1-m2-conv-only",
    url=None,
    chips=("m1", "m2"),
)
def _check_matmul_m1_m2(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "matmul", "scaled_dot_product_attention"):
        yield fn.op_hit(
            op,
            f"{op.op_type} on M1/M2: a third-party M1/M2 path reports these engines run conv only and "
            "avoids matmul/SDPA. Express constant-weight GEMMs as 1x1 conv; verify the rest compiles",
        )


@_rule(
    "runtime-weight-grouped-conv",
    "warning",
    "Grouped/depthwise conv with a runtime (non-constant) weight fails on M1",
    fact="m1-runtime-grouped-conv",
    url="https://github.com/maderix/ANE/issues/47",
    chips=("m1",),
)
def _check_runtime_grouped_conv(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "conv"):
        groups = int(_input_value(op, "groups", 1))
        if groups > 1 and not _is_const(op.inputs["weight"]):
            yield fn.op_hit(
                op,
                f"conv with groups={groups} takes its weight at run time; issue #47 reports runtime-weight "
                "grouped/depthwise convs fail on M1. Bake the weight as a constant or run it on the CPU",
            )


@_rule(
    "gelu-lut-error",
    "info",
    "gelu is a lookup-table approximation (~8% relative error reported on M1)",
    fact="gelu-lut",
    url="https://aneforge.readthedocs.io/en/latest/op-catalog/",
    chips=("m1",),
)
def _check_gelu(fn: _Fn) -> Iterator[_Hit]:
    for op in _ops(fn, "gelu"):
        yield fn.op_hit(
            op,
            "gelu runs as a lookup-table approximation with about 8% relative error reported on M1; "
            "compare against the reference backend with a loose tolerance, or compose it from "
            "sigmoid (x * sigmoid(1.702 x))",
        )


@_rule(
    "opset-newer-than-ios16-on-m1-m2",
    "info",
    "Opset newer than ios16 on M1/M2 (the M1/M2 dialect of PR #6 is program(1.0)/<ios16>)",
    fact="m1-m2-dialect",
    url="https://github.com/maderix/ANE/pull/6",
    chips=("m1", "m2"),
)
def _check_opset_m1_m2(fn: _Fn) -> Iterator[_Hit]:
    opset = fn.func.opset_version
    if opset is not None and opset > ct.target.iOS16:
        yield fn.fn_hit(
            f"function '{fn.name}' uses opset {getattr(opset, 'name', opset)}; PR #6 compiled on M1/M2 "
            "with program(1.0), <ios16> and canonical tensor<T, []> scalars, and ios18 is reported "
            "only partly working on M1. Use ios16-level ops if compiling fails there",
        )
