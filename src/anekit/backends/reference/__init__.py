"""The reference backend: any MIL program, executed with NumPy under the ANE's numerics."""

from __future__ import annotations

from .interpreter import ReferenceKernel
from .registry import NUMERICS, OPS, Numerics, OpContext, UnsupportedOp, op

__all__ = [
    "ReferenceKernel",
    "NUMERICS",
    "OPS",
    "Numerics",
    "OpContext",
    "UnsupportedOp",
    "op",
    "compile",
    "availability",
]


def availability() -> tuple[bool, str]:
    return True, "NumPy, runs anywhere"


def compile(
    source, function: str = "main", numerics: str = "ane", ignore_sdpa_mask: bool = False
) -> ReferenceKernel:
    """Bind a Program (or MilModel) to the reference backend.

    numerics: "ane" (fp16 storage, fp32 math, overflow to inf, as on the engine) or "exact" (float64).
    ignore_sdpa_mask: emulate the engine dropping scaled_dot_product_attention's mask (mil-text.md §3.11).
    """
    from ...mil.model import MilModel

    program = source.program() if isinstance(source, MilModel) else source
    return ReferenceKernel(program, function=function, numerics=numerics, ignore_sdpa_mask=ignore_sdpa_mask)
