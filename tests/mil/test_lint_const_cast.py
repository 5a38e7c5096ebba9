"""The `const-cast-unsupported-m1-m2` rule: a constant baked in fp32 and `cast` to fp16 in the graph
cannot run on the M1/M2 engines, which lack `cast` (docs/ane-facts.md#cast-m1-m2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from anekit._coreml import ct, mb, types
from anekit.cli import app
from anekit.kernels.common import float_const
from anekit.mil import dumps, lint

RULE = "const-cast-unsupported-m1-m2"
S = (1, 64, 1, 64)


def scaled(const_dtype: str | None):
    """x * c for a constant c baked in `const_dtype` and cast to fp16 (None: baked fp16, no cast)."""

    @mb.program(input_specs=[mb.TensorSpec(shape=S, dtype=types.fp16)], opset_version=ct.target.iOS18)
    def prog(x):
        if const_dtype is None:
            c = mb.const(val=np.full(S, 0.5, np.float16), name="c")
        else:
            c = mb.cast(x=mb.const(val=np.full(S, 0.5, const_dtype), name="c"), dtype="fp16", name="c16")
        return mb.relu(x=mb.mul(x=x, y=c), name="y")

    return prog


def hits(program, chip):
    return [f for f in lint(program, chip=chip) if f.rule == RULE]


@pytest.mark.parametrize("chip", ["m1", "m1-pro", "m2", "M2 Max"])
def test_fires_as_an_error_on_m1_and_m2(chip):
    (f,) = hits(scaled("float32"), chip)
    assert f.severity == "error" and f.op == "c16"
    assert "constant 'c' (fp32) is cast to fp16" in f.message and "precision='fp16'" in f.message
    assert f.source == "docs/ane-facts.md#cast-m1-m2" and f.url == "https://github.com/maderix/ANE/pull/6"


@pytest.mark.parametrize("chip", ["m3", "m4", "m5"])
def test_quiet_on_chips_that_run_cast(chip):
    assert hits(scaled("float32"), chip) == []


def test_without_a_chip_it_warns_naming_the_chips():
    (f,) = hits(scaled("float32"), None)
    assert f.severity == "warning" and "M1, M2 only" in f.message


@pytest.mark.parametrize("chip", [None, "m1", "m2"])
def test_quiet_when_the_constant_is_baked_in_fp16(chip):
    assert hits(scaled(None), chip) == []


def test_a_cast_of_an_input_is_the_other_rule_and_a_const_cast_is_reported_once():
    @mb.program(input_specs=[mb.TensorSpec(shape=S, dtype=types.fp16)], opset_version=ct.target.iOS18)
    def prog(x):
        wide = mb.cast(x=x, dtype="fp32", name="up")
        c = mb.cast(x=mb.const(val=np.full(S, 0.5, np.float32), name="c"), dtype="fp16", name="c16")
        return mb.relu(x=mb.mul(x=mb.cast(x=wide, dtype="fp16", name="down"), y=c), name="y")

    by_op = {(f.rule, f.op) for f in lint(prog, chip="m1") if "cast" in f.rule}
    assert by_op == {
        ("cast-unsupported-m1-m2", "up"),
        ("cast-unsupported-m1-m2", "down"),
        (RULE, "c16"),
    }


@pytest.mark.parametrize(("precision", "fires"), [("fp32", True), ("fp16", False)])
def test_kernel_float_constants(precision, fires):
    """The kernels' own constant tables (anekit.kernels.common.float_const) in both precisions."""

    @mb.program(input_specs=[mb.TensorSpec(shape=S, dtype=types.fp16)], opset_version=ct.target.iOS18)
    def prog(x):
        return mb.relu(x=mb.mul(x=x, y=float_const(np.full(S, 0.25), "scale", precision)), name="y")

    assert bool(hits(prog, "m2")) == fires


def test_found_in_model_mil_text_through_the_command(tmp_path):
    """The rule holds on a program read back from `model.mil` text, as `anekit lint` reads it."""
    root = dumps(scaled("float32")).save(tmp_path / "m")
    assert "cast(" in (root / "model.mil").read_text()
    result = CliRunner().invoke(app, ["lint", str(root), "--chip", "m1", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert [f["rule"] for f in report["findings"] if f["rule"] == RULE] == [RULE]
    result = CliRunner().invoke(app, ["lint", str(dumps(scaled(None)).save(tmp_path / "ok")), "--chip", "m1"])
    assert RULE not in result.output
