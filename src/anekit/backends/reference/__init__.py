"""The reference backend: any MIL program, executed with NumPy under the ANE's numerics."""

from __future__ import annotations

from ..base import NoSuchFunction
from .interpreter import ReferenceKernel
from .registry import (
    MAX_TENSOR_BYTES,
    NUMERICS,
    OPS,
    Numerics,
    OpContext,
    ProgramError,
    TensorTooLarge,
    UnsupportedOp,
    op,
)

__all__ = [
    "ReferenceKernel",
    "MAX_TENSOR_BYTES",
    "NUMERICS",
    "OPS",
    "NoSuchFunction",
    "Numerics",
    "OpContext",
    "ProgramError",
    "TensorTooLarge",
    "UnsupportedOp",
    "op",
    "compile",
    "availability",
]


def availability() -> tuple[bool, str]:
    return True, "NumPy, runs anywhere"


def compile(
    source, function: str | None = None, numerics: str = "ane", ignore_sdpa_mask: bool = False
) -> ReferenceKernel:
    """Bind a Program (or MilModel) to the reference backend.

    function: which function of a multi-function program to run; None runs the program's default
        (`main`, or the first function of MIL text that has no `main`). An unknown name is a
        `NoSuchFunction` error listing the functions.
    numerics: "ane" (fp16 storage, fp32 math, overflow to inf, as on the engine) or "exact" (float64).
    ignore_sdpa_mask: emulate the engine dropping scaled_dot_product_attention's mask (mil-text.md §3.11).
    """
    from ...mil.model import MilModel

    program = source.program() if isinstance(source, MilModel) else source
    return ReferenceKernel(program, function=function, numerics=numerics, ignore_sdpa_mask=ignore_sdpa_mask)
