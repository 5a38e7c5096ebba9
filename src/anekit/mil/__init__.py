"""MIL programs: build them (coremltools' Builder), print and parse the `model.mil` text dialect the
ANE compiler reads, read and write weight blobs, and lint for known ANE limits.

    from anekit.mil import mb, types, dumps, loads
    model = dumps(program)            # MilModel(text, weights)
    model.save("out/")                # out/model.mil, out/weights/*.bin
    program = loads(model.text, model.weights)
"""

from .._coreml import ct, mb, types
from .blob import BlobError, BlobWriter, list_blobs, read_blob, write_blob
from .lint import Finding, lint
from .model import MilModel, WeightPathError, load
from .parser import MilParseError, load_program, loads
from .printer import DEFAULT_BUILD_INFO, dumps

__all__ = [
    "ct",
    "mb",
    "types",
    "dumps",
    "loads",
    "load",
    "load_program",
    "lint",
    "Finding",
    "MilModel",
    "MilParseError",
    "WeightPathError",
    "BlobError",
    "BlobWriter",
    "read_blob",
    "write_blob",
    "list_blobs",
    "DEFAULT_BUILD_INFO",
]
