"""anekit: program, measure and train on Apple's Neural Engine from Python.

import anekit
kernel = anekit.compile(program)          # a coremltools MIL Program, MilModel or model dir
outputs = kernel(x=array)                 # dict of NumPy arrays by output name
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import compile  # noqa: E402
from .backends import BackendUnavailable, Kernel, KernelInputError  # noqa: E402

__all__ = ["compile", "Kernel", "BackendUnavailable", "KernelInputError", "__version__"]
