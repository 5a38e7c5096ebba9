"""The `ane` backend: MIL compiled in memory and run on the Neural Engine through the private
`AppleNeuralEngine.framework` classes (ane-private-api.md §1). macOS on Apple silicon only.

    kernel = anekit.compile(program, backend="ane")     # -> runtime.AneKernel
    outputs = kernel(x=array)
    layer = kernel.new_binding(); layer.write(w=weights); layer.run(x=activations)

Modules: `bridge` (the only Objective-C code, macOS only), `runtime` (kernels, cache,
loaded-program budget), `layout` (surface sizes, strides, packing, the engine's I/O entries),
`weights` (weights dictionary, shared temp dirs),
`errors` (ANEError), `selectors` (what is called), `doctor` (`anekit doctor` on a Mac). Everything
but `bridge` imports on any machine. See docs/ane-backend.md.
"""

from __future__ import annotations

import os
import platform
import sys

from ..base import BackendUnavailable
from .errors import ANEError
from .selectors import FRAMEWORK as FRAMEWORK_BUNDLE

#: ane-private-api.md §1.1 step 1.
FRAMEWORK = FRAMEWORK_BUNDLE + "/AppleNeuralEngine"

__all__ = ["ANEError", "FRAMEWORK", "availability", "compile", "doctor_report", "loaded_program_report"]

_probe_result: tuple[bool, str] | None = None


def availability() -> tuple[bool, str]:
    """Whether the engine can be driven from here; the reason names what is missing."""
    global _probe_result
    if sys.platform != "darwin":
        return False, f"needs macOS on Apple silicon (this is {platform.system() or sys.platform})"
    if platform.machine() != "arm64":
        return False, f"needs an Apple silicon Mac (this machine is {platform.machine()})"
    if not os.path.exists(FRAMEWORK_BUNDLE):
        return False, f"{FRAMEWORK_BUNDLE} is missing"
    try:
        import Foundation  # noqa: F401  (pyobjc-framework-Cocoa)
        import objc  # noqa: F401  (PyObjC)
    except ImportError:
        return False, "PyObjC is not installed (pip install pyobjc-core pyobjc-framework-Cocoa)"
    if _probe_result is None:
        from . import bridge

        missing = bridge.probe().missing  # §6: feature-detect every selector before use
        _probe_result = (
            (False, "missing: " + ", ".join(missing))
            if missing
            else (True, "AppleNeuralEngine.framework, every needed class and selector, PyObjC")
        )
    return _probe_result


def compile(source, **options):
    """Compile for the engine; see `runtime.compile_model` for the options."""
    ok, why = availability()
    if not ok:
        raise BackendUnavailable(f"the ane backend is unavailable: {why}")
    from .runtime import compile_model

    return compile_model(source, **options)


def doctor_report(console=None) -> dict:
    """`anekit doctor` on a Mac: chip, OS, ANE device info, classes/selectors, the loaded-program
    budget (ane-private-api.md §10.1), smoke test. Returns it as plain JSON-ready values (for
    `--json`) and prints it when a console is given."""
    from .doctor import doctor_report as report

    return report(console)


def loaded_program_report() -> dict:
    """The loaded-program budget and this process's counts, on any machine (no engine needed)."""
    from .runtime import loaded_program_report as report

    return report()
