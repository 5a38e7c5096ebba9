"""The op catalogue of the engine tests, checked on any machine: every reference op has a case (or a
stated reason why not), and every case is a valid fp16 program that runs on the reference backend,
survives the MIL text round trip the engine sees, and fits the dense surface layout."""

from __future__ import annotations

import numpy as np
import pytest
from ane_op_catalogue import CASES, NOT_ON_ENGINE

from anekit.backends.ane.layout import surface_layout
from anekit.backends.ane.runtime import prepare
from anekit.backends.reference import OPS
from anekit.backends.reference import compile as reference_compile
from anekit.mil import dumps


def test_every_reference_op_has_an_engine_case():
    covered = {c.op for c in CASES}
    assert len(covered) == len(CASES), "one case per op"
    missing = sorted(set(OPS) - covered - set(NOT_ON_ENGINE))
    assert not missing, (
        f"reference ops without an engine comparison: {missing}. Add a one-op program to "
        "tests/ane/ane_op_catalogue.py (or a reason to NOT_ON_ENGINE)."
    )
    unknown = sorted((covered | set(NOT_ON_ENGINE)) - set(OPS))
    assert not unknown, f"catalogue names ops the reference backend lacks: {unknown}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_runs_on_the_reference_backend_and_fits_a_surface(case):
    program = case.program()
    assert case.op in {op.op_type for op in program.functions["main"].operations}
    prepared = prepare(dumps(program))  # the text the engine compiles, parsed back
    for spec in list(prepared.inputs.values()) + list(prepared.outputs.values()):
        surface_layout(spec)  # dense layout valid: no LayoutError
    out = reference_compile(prepared.model)(**case.sample())
    for name, value in out.items():
        assert np.all(np.isfinite(value)), f"{case.op}: non-finite values in {name}"
