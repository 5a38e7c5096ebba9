"""Rules on a function as a whole: a program that computes a single op wastes the engine."""

from __future__ import annotations

from collections.abc import Iterator

from ..optable import LAYOUT_KINDS, names
from .engine import _rule
from .program import _Fn, _Hit

#: Ops that move data without computing (kinds the op table calls layout: constants, views,
#: movements, conversions, state); a program made of these plus one op is a single-op program.
_LAYOUT_OPS = names(kinds=LAYOUT_KINDS)


@_rule(
    "single-op-program",
    "info",
    "Program computes a single op (one op uses ~30% of the engine; chain 16-64)",
    fact="single-op-waste",
    url="https://github.com/maderix/ANE/issues/3",
)
def _check_single_op(fn: _Fn) -> Iterator[_Hit]:
    compute = [op for op in fn.ops if op.op_type not in _LAYOUT_OPS]
    if len(compute) == 1:
        op = compute[0]
        yield fn.op_hit(
            op,
            f"function '{fn.name}' computes a single {op.op_type}; one op per dispatch wastes up to ~70% "
            "of the engine and the ~0.1 ms dispatch overhead dominates. Chain 16-64 ops in one program",
        )
