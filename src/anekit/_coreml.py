"""Import coremltools quietly.

coremltools logs a warning for every native proxy it cannot load (all of them off macOS) and for
an untested PyTorch version. None of that concerns anekit, which only uses its MIL builder, type
inference and op definitions, so those loggers are silenced for the duration of the import.
"""

from __future__ import annotations

import logging
import warnings


def _import():
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools as ct
            from coremltools.converters.mil import Builder as mb
            from coremltools.converters.mil.mil import Function, Program, types
    finally:
        logger.setLevel(level)
    return ct, mb, types, Function, Program


ct, mb, types, Function, Program = _import()

#: Text spelling of each opset, as in `func main<ios18>` (mil-text.md §1.7).
OPSETS: dict[str, object] = {
    "ios15": ct.target.iOS15,
    "ios16": ct.target.iOS16,
    "ios17": ct.target.iOS17,
    "ios18": ct.target.iOS18,
}
#: Third-party fixtures spell the same opsets by their protobuf names (mil-text.md §1.7).
OPSET_ALIASES = {"CoreML5": "ios15", "CoreML6": "ios16", "CoreML7": "ios17", "CoreML8": "ios18"}


def opset_name(target) -> str:
    """The text spelling (`ios18`) of a coremltools deployment target."""
    for name, value in OPSETS.items():
        if value == target:
            return name
    raise ValueError(f"opset {target!r} is not one of {', '.join(OPSETS)}")
