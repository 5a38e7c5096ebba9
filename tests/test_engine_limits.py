"""anekit.engine_limits: each engine constant is written once, there, with its source; the modules
that use one import it (a copy written as a literal elsewhere fails here)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import numpy as np
import pytest

from anekit import engine_limits as el

SRC = Path(el.__file__).resolve().parent
DOCS = SRC.parent.parent / "docs"

#: Names the constants had (or have) where they are used: none of them may be given a literal value
#: outside engine_limits.py (leading underscores ignored).
_NAMES = set(el.__all__) | {
    "ROW_BYTES",
    "MAX_TENSOR_BYTES",
    "MAX_ARRAY_BYTES",
    "DEFAULT_MAX_KERNELS",
    "BLOB_LIMIT_BYTES",
    "BAND_0X1D",
    "M3_CHANNELS",
}
#: Values distinctive enough that a literal assignment of them anywhere is a copy of the constant.
_VALUES = {
    el.FP16_MAX,
    el.MASK_VALUE,
    el.MAX_AXIS,
    el.MAX_SPATIAL,
    el.MAX_ARG_AXIS,
    el.CONV_CIN_REJECTED,
    el.SRAM_BYTES,
    el.OPERAND_BYTES,
    el.WEIGHT_FILE_BYTES,
    el.HOST_TENSOR_BYTES,
    el.WIDTH_0X1D_BAND,
}

#: Where a constant is used under its own (or a former) name: the same value, imported, not copied.
_USERS = [
    ("anekit.kernels.layout", "ROW_ALIGN", el.ROW_ALIGN),
    ("anekit.kernels", "MASK_VALUE", el.MASK_VALUE),
    ("anekit.kernels.common", "MASK_VALUE", el.MASK_VALUE),
    ("anekit.backends.ane.layout", "ROW_ALIGN_BYTES", el.ROW_ALIGN_BYTES),
    ("anekit.backends.ane.runtime", "ENGINE_PROGRAM_CAP", el.ENGINE_PROGRAM_CAP),
    ("anekit.backends.ane.runtime", "DEFAULT_LOADED_PROGRAM_BUDGET", el.DEFAULT_LOADED_PROGRAM_BUDGET),
    ("anekit.backends.worker", "DEFAULT_MAX_KERNELS", el.DEFAULT_LOADED_PROGRAM_BUDGET),
    ("anekit.mil.lint.surfaces", "_ROW_BYTES", el.ROW_ALIGN_BYTES),
    ("anekit.mil.lint.weights", "_FP16_MAX", el.FP16_MAX),
    ("anekit.mil.lint.weights", "_SRAM_BYTES", el.SRAM_BYTES),
    ("anekit.mil.lint.weights", "_OPERAND_BYTES", el.OPERAND_BYTES),
    ("anekit.mil.lint.weights", "_BLOB_LIMIT_BYTES", el.WEIGHT_FILE_BYTES),
    ("anekit.mil.lint.shapes", "_MAX_AXIS", el.MAX_AXIS),
    ("anekit.mil.lint.shapes", "_MAX_SPATIAL", el.MAX_SPATIAL),
    ("anekit.mil.lint.shapes", "_MAX_RANK", el.MAX_RANK),
    ("anekit.mil.lint.shapes", "_BAND_0X1D", el.WIDTH_0X1D_BAND),
    ("anekit.mil.lint.conv_matmul", "_CONV_CIN_REJECTED", el.CONV_CIN_REJECTED),
    ("anekit.mil.lint.conv_matmul", "_CONV_CIN_LARGE", el.CONV_CIN_LARGE),
    ("anekit.mil.lint.conv_matmul", "_MAX_KERNEL_WIDTH", el.MAX_KERNEL_WIDTH),
    ("anekit.mil.lint.conv_matmul", "_MAX_ARG_AXIS", el.MAX_ARG_AXIS),
    ("anekit.mil.lint.chips", "_M3_CHANNELS", el.M3_CONV_CHANNELS),
    ("anekit.mil.parser", "MAX_TENSOR_BYTES", el.WEIGHT_FILE_BYTES),
    ("anekit.backends.reference.registry", "MAX_TENSOR_BYTES", el.HOST_TENSOR_BYTES),
    ("anekit.backends.reference", "MAX_TENSOR_BYTES", el.HOST_TENSOR_BYTES),
    ("anekit.arrays_io", "MAX_ARRAY_BYTES", el.HOST_TENSOR_BYTES),
    ("anekit.perf.fit", "SRAM_MB", el.SRAM_MB),
]


def _is_literal(node: ast.AST) -> bool:
    """A value written out: numbers, and arithmetic or tuples of numbers (no names, no calls)."""
    allowed = (ast.Constant, ast.BinOp, ast.UnaryOp, ast.Tuple, ast.operator, ast.unaryop, ast.expr_context)
    return all(isinstance(n, allowed) for n in ast.walk(node))


def _literal_assignments():
    """(file, line, target name, value) of every assignment of a literal in src/anekit."""
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
                continue
            if not _is_literal(node.value):
                continue
            value = eval(compile(ast.Expression(node.value), str(path), "eval"))  # numbers only
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
                yield path.relative_to(SRC), node.lineno, name, value


def test_each_engine_constant_is_written_once_in_engine_limits():
    copies = []
    for rel, line, name, value in _literal_assignments():
        if rel == Path("engine_limits.py"):
            continue
        hashable = value if not isinstance(value, list) else tuple(value)
        by_value = isinstance(hashable, (int, float, tuple)) and not isinstance(hashable, bool)
        if name.lstrip("_") in _NAMES or (by_value and hashable in _VALUES):
            copies.append(f"{rel}:{line}: {name} = {value!r}")
    assert not copies, "engine constants copied instead of imported from anekit.engine_limits:\n" + "\n".join(
        copies
    )


def test_engine_limits_defines_each_constant_itself():
    defined = {name for rel, _, name, _ in _literal_assignments() if rel == Path("engine_limits.py")}
    derived = {"ROW_ALIGN", "MASK_VALUE", "SRAM_BYTES", "SRAM_MB", "OPERAND_BYTES", "HOST_TENSOR_BYTES"}
    assert set(el.__all__) == (defined - {"_MIB"}) | derived


@pytest.mark.parametrize(("module", "name", "value"), _USERS, ids=[f"{m}.{n}" for m, n, _ in _USERS])
def test_users_hold_the_engine_value(module, name, value):
    got = getattr(importlib.import_module(module), name)
    assert got == value and type(got) is type(value)


def test_the_constants_agree_with_each_other_and_with_fp16():
    assert el.ROW_ALIGN * el.FP16_BYTES == el.ROW_ALIGN_BYTES == 64 and el.ROW_ALIGN == 32
    assert el.FP16_MAX == float(np.finfo(np.float16).max) == 65504.0
    assert el.MASK_VALUE == float(np.finfo(np.float16).min) == -65504.0
    assert el.DEFAULT_LOADED_PROGRAM_BUDGET < el.ENGINE_PROGRAM_CAP == 128
    assert el.SRAM_MB == 32.0 and el.SRAM_BYTES == 32 * 2**20
    assert el.WEIGHT_FILE_BYTES == 2 * 2**30 and el.HOST_TENSOR_BYTES == 4 * 2**30
    assert el.CONV_CIN_LARGE < el.CONV_CIN_REJECTED


def test_each_cited_fact_exists():
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', (DOCS / "ane-facts.md").read_text()))
    cited = set(re.findall(r"docs/ane-facts\.md#([a-z0-9-]+)", Path(el.__file__).read_text()))
    assert cited and cited <= anchors, cited - anchors
