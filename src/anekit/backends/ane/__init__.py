"""The `ane` backend: MIL compiled in memory and run on the Neural Engine through the private
`AppleNeuralEngine.framework` classes (ane-private-api.md §1). macOS on Apple silicon only.
"""

from __future__ import annotations

import os
import platform
import sys

from ..base import BackendUnavailable

#: ane-private-api.md §1.1 step 1.
FRAMEWORK = "/System/Library/PrivateFrameworks/AppleNeuralEngine.framework/AppleNeuralEngine"


def availability() -> tuple[bool, str]:
    """Whether the engine can be driven from here; the reason names what is missing."""
    if sys.platform != "darwin":
        return False, f"needs macOS on Apple silicon (this is {platform.system() or sys.platform})"
    if platform.machine() != "arm64":
        return False, f"needs an Apple silicon Mac (this machine is {platform.machine()})"
    if not os.path.exists(os.path.dirname(FRAMEWORK)):
        return False, f"{os.path.dirname(FRAMEWORK)} is missing"
    try:
        import objc  # noqa: F401  (PyObjC)
    except ImportError:
        return False, "PyObjC is not installed (pip install pyobjc-core pyobjc-framework-Cocoa)"
    return True, "AppleNeuralEngine.framework and PyObjC found"


def compile(source, **options):
    ok, why = availability()
    if not ok:
        raise BackendUnavailable(f"the ane backend is unavailable: {why}")
    from .runtime import compile_model  # the Objective-C bridge, imported only on a Mac

    return compile_model(source, **options)
