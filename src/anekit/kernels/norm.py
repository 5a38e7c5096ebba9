"""Standalone RMSNorm forward kernel, with the weight streamed through the input.

The training step runs RMSNorm on the CPU (ane-private-api.md §5.4 does too: the CPU needs the
statistics for the backward pass anyway, and x² overflows fp16 for |x| > 256, mil-text.md §5 #16);
this kernel is for inference pipelines and for checking the shared `rmsnorm` helper.
"""

from __future__ import annotations

from .common import KernelSpec, build_program, input_block, rmsnorm
from .layout import Layout

__all__ = ["rmsnorm_forward"]


def rmsnorm_forward(dim: int, n_tokens: int, eps: float = 1e-5) -> KernelSpec:
    """Input (`dim` rows): `x` [dim, n_tokens] | `weight` [dim, 1] (one column, the row padded to a
    multiple of 32, ane-private-api.md §1.7). Output: `y` [dim, n_tokens]."""
    inp = Layout.spatial([("x", dim, n_tokens), ("weight", dim, 1)])
    out = Layout.stacked([("y", dim)], width=n_tokens)

    def body(x):
        xs = input_block(x, inp, "x", [1, dim, 1, n_tokens])
        w = input_block(x, inp, "weight", [1, dim, 1, 1])
        return [rmsnorm(xs, w, eps, "y")]

    program = build_program(inp, out, body)
    return KernelSpec(program, inp, out, "rmsnorm_forward", 0)
