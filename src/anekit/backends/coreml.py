"""The `coreml` backend: the same program run through Core ML, to compare against the direct path.

Core ML prediction exists only on macOS (coremltools builds `libcoremlpython` only there).
"""

from __future__ import annotations

import sys

from .base import BackendUnavailable, Kernel, var_spec


def availability() -> tuple[bool, str]:
    if sys.platform != "darwin":
        return False, "Core ML prediction needs macOS (coremltools has no predict API elsewhere)"
    try:
        import coremltools.libcoremlpython  # noqa: F401
    except ImportError as e:
        return False, f"coremltools was built without its Core ML bridge ({e})"
    return True, "coremltools with Core ML"


class CoreMLKernel(Kernel):
    backend = "coreml"

    def __init__(self, program, compute_units: str = "CPU_AND_NE"):
        from .._coreml import ct

        func = program.functions["main"]
        self.inputs = {n: var_spec(v) for n, v in func.inputs.items()}
        self.outputs = {v.name: var_spec(v) for v in func.outputs}
        self.model = ct.convert(
            program, convert_to="mlprogram", compute_units=getattr(ct.ComputeUnit, compute_units)
        )

    def run(self, inputs):
        return dict(self.model.predict(inputs))


def compile(source, compute_units: str = "CPU_AND_NE", **_options) -> CoreMLKernel:
    ok, why = availability()
    if not ok:
        raise BackendUnavailable(f"the coreml backend is unavailable: {why}")
    from ..mil.model import MilModel

    program = source.program() if isinstance(source, MilModel) else source
    return CoreMLKernel(program, compute_units)
