"""The op table (anekit.mil.optable): every op a consumer knows is in it, the consumers' sets derive
from it, and the op added through it (clamped_relu) matches a float64 oracle."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest
import torch

from anekit._coreml import Function, Program, ct, mb, types
from anekit.backends.reference import OPS as REFERENCE_OPS
from anekit.backends.reference import compile as ref_compile
from anekit.backends.reference.registry import VALUE_PRESERVING
from anekit.mil import optable
from anekit.mil.lint import ops as lint_ops
from anekit.mil.lint import whole_function
from anekit.perf import count

lint_pkg = importlib.import_module("anekit.mil.lint")  # `anekit.mil.lint` the attribute is the function


def _lint_op_names() -> set[str]:
    """Op names lint's rules test for: `_ops(fn, "a", "b")` calls, `x.op_type == "a"` and
    `x.op_type in ("a", ...)` comparisons in every module of the lint package, and the keys of
    op-falls-off-ane's table."""
    found = set(lint_ops._OFF_ANE)
    for mod in pkgutil.iter_modules(lint_pkg.__path__):
        tree = ast.parse(Path(lint_pkg.__path__[0], mod.name + ".py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_ops":
                found |= {
                    a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                }
            if isinstance(node, ast.Compare) and getattr(node.left, "attr", None) == "op_type":
                for right in node.comparators:
                    items = right.elts if isinstance(right, (ast.Tuple, ast.List, ast.Set)) else [right]
                    found |= {
                        i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)
                    }
    return found


def test_every_reference_op_is_in_the_table():
    missing = sorted(set(REFERENCE_OPS) - set(optable.OPS))
    assert not missing, f"reference ops missing from anekit.mil.optable: {missing}"


def test_every_op_lint_names_is_in_the_table():
    names = _lint_op_names()
    assert {"conv", "cast", "cond", "gather_nd"} <= names  # the scan finds what the rules name
    missing = sorted(names - set(optable.OPS))
    assert not missing, f"ops lint's rules name, missing from anekit.mil.optable: {missing}"


def test_every_op_the_cost_model_has_a_rule_for_is_in_the_table():
    # the cost model's rules are the table's; what it counts on its own is const/constexpr_* folding
    assert {n for n in optable.OPS if n == "const" or n.startswith("constexpr_")} == optable.names(
        cost={"folded"}
    )
    assert count.MAC_KINDS == ("conv", "matmul")


def test_entries_are_well_formed():
    for name, entry in optable.OPS.items():
        assert entry.name == name
        assert entry.kind in optable.KINDS, name
        assert entry.cost in optable.COST_RULES, name
        assert (entry.flops > 0) == (entry.cost in ("per_output", "per_input")), name
        if entry.kind == "compute":
            assert not entry.value_preserving, name


def test_consumers_derive_from_the_table():
    assert VALUE_PRESERVING is optable.VALUE_PRESERVING
    assert whole_function._LAYOUT_OPS == optable.names(kinds=optable.LAYOUT_KINDS)


def test_the_former_lists_agree_with_the_table():
    """What the three lists said before the table, kept: the value-preserving ops of the reference
    backend, lint's layout ops (now a subset) and the cost model's groups."""
    old_value_preserving = set(
        "reshape transpose slice_by_size slice_by_index concat split stack expand_dims squeeze tile identity "
        "gather gather_along_axis pad band_part select constexpr_lut_to_dense constexpr_sparse_to_dense".split()
    )
    assert VALUE_PRESERVING == old_value_preserving
    old_layout = set(
        "const identity cast reshape transpose squeeze expand_dims slice_by_size slice_by_index concat split "
        "stack read_state coreml_update_state".split()
    )
    assert old_layout <= whole_function._LAYOUT_OPS
    # decided on the facts: these move data (or are folded when compiling) and do no arithmetic
    added = whole_function._LAYOUT_OPS - old_layout
    assert added == {"shape", "tile", "pad", "gather", "gather_along_axis", "gather_nd"} | optable.names(
        kinds={"constant"}
    ) - {"const"}
    assert optable.names(cost={"view"}) == {"squeeze", "expand_dims", "identity", "shape"}
    assert optable.names(cost={"move"}) == {
        "reshape", "transpose", "slice_by_index", "slice_by_size", "concat", "split", "stack", "tile", "pad",
        "gather", "gather_along_axis", "cast",
    }  # fmt: skip


def test_decisions_where_the_lists_disagreed():
    cast = optable.info("cast")
    assert not cast.value_preserving  # it rounds to the new dtype
    assert "cast" in whole_function._LAYOUT_OPS  # no arithmetic: the price of fp32 I/O (fp32-io fact)
    for name in ("band_part", "select"):
        e = optable.info(name)
        assert e.value_preserving and e.cost == "per_output" and e.flops == 1  # per-element work
        assert name not in whole_function._LAYOUT_OPS
    for name in ("tile", "pad", "gather", "gather_along_axis"):
        e = optable.info(name)
        assert e.value_preserving and e.kind == "movement" and name in whole_function._LAYOUT_OPS


# -- the op added through the table: clamped_relu (coremltools iOS15 activation) -------------------


def _run_clamped_relu(x: np.ndarray, alpha: float, beta: float, numerics: str) -> np.ndarray:
    dt = types.fp16 if x.dtype == np.float16 else types.fp32
    with Function({"x": mb.TensorSpec(shape=x.shape, dtype=dt)}, ct.target.iOS18) as func:
        fdt = np.float16 if x.dtype == np.float16 else np.float32
        func.set_outputs([mb.clamped_relu(x=func.inputs["x"], alpha=fdt(alpha), beta=fdt(beta))])
    prog = Program()
    prog.add_function("main", func)
    (out,) = ref_compile(prog, numerics=numerics)(x=x).values()
    return out


def _oracle(x, alpha, beta) -> np.ndarray:
    t = torch.from_numpy(np.asarray(x, dtype=np.float64))
    return torch.clamp(torch.where(t >= 0, t, alpha * t), max=beta).numpy()


@pytest.mark.parametrize(("alpha", "beta"), [(0.1, 1.5), (0.5, 6.0), (2.0, 0.25), (0.0, 100.0)])
def test_clamped_relu_matches_float64_oracle(alpha, beta):
    x = (np.random.default_rng(3).standard_normal((2, 5, 7)) * 4).astype(np.float32)
    x[0, 0, :3] = (0.0, -0.0, beta)  # the branch point and the clamp
    got = _run_clamped_relu(x, alpha, beta, "exact")
    want = _oracle(x, np.float64(np.float32(alpha)), np.float64(np.float32(beta)))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_clamped_relu_fp16_under_engine_numerics():
    x = (np.random.default_rng(4).standard_normal((1, 8, 1, 32)) * 3).astype(np.float16)
    got = _run_clamped_relu(x, 0.1, 1.5, "ane")
    assert got.dtype == np.float16
    want = _oracle(x.astype(np.float64), float(np.float16(0.1)), float(np.float16(1.5)))
    np.testing.assert_array_equal(got, want.astype(np.float16))  # one rounding of the exact result


def test_clamped_relu_in_the_table_and_the_cost_model():
    e = optable.info("clamped_relu")
    assert (e.kind, e.value_preserving, e.cost, e.flops) == ("unary", False, "per_output", 1)
    with Function({"x": mb.TensorSpec(shape=(1, 8, 1, 32), dtype=types.fp16)}, ct.target.iOS18) as func:
        func.set_outputs([mb.clamped_relu(x=func.inputs["x"], alpha=np.float16(0.1), beta=np.float16(1.5))])
    prog = Program()
    prog.add_function("main", func)
    cost = count.count_ops(prog)
    (op,) = cost.ops
    assert (op.op_type, op.kind, op.flops) == ("clamped_relu", "vector", 256.0)
    assert cost.notes == ()  # it has a FLOP rule
