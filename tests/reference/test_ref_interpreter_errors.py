"""What the reference interpreter says when a program or its inputs are wrong: flexible dims bound
inconsistently, empty tensors, unknown functions, failing ops, tensors over MAX_TENSOR_BYTES. Every
case is an anekit error naming what was wrong and where, never a raw NumPy exception."""

from __future__ import annotations

import numpy as np
import pytest
from coremltools.converters.mil.mil import get_new_symbol
from oracle_helpers import build

import anekit
from anekit._coreml import mb, types
from anekit.backends.base import KernelInputError
from anekit.backends.reference import (
    MAX_TENSOR_BYTES,
    OPS,
    NoSuchFunction,
    ProgramError,
    TensorTooLarge,
    UnsupportedOp,
)
from anekit.backends.reference import compile as ref_compile
from anekit.errors import AnekitError
from anekit.mil import loads

TWO_FUNCTIONS = """program(1.3)
{
    func main<ios18>(tensor<fp32, [2]> a) {
            tensor<fp32, [2]> b = add(x = a, y = a)[name = string("b")];
    } -> (b);
    func triple<ios18>(tensor<fp32, [3]> a) {
            tensor<fp32, [3]> b = mul(x = a, y = a)[name = string("b")];
    } -> (b);
}
"""


def _flexible_add():
    """Text with two independent `?` dims: each becomes its own symbol (mil-text.md §1.4)."""
    return loads(_flexible_add_text())


def _flexible_add_text() -> str:
    return """program(1.3)
{
    func main<ios18>(tensor<fp32, [?, 3]> x, tensor<fp32, [?, 3]> y) {
            tensor<fp32, [?, 3]> z = add(x = x, y = y)[name = string("z")];
    } -> (z);
}
"""


# -- flexible dims --------------------------------------------------------------------------------


def test_one_flexible_dim_bound_to_two_sizes_names_both_inputs_and_dims():
    s = get_new_symbol()
    prog = build(
        lambda a, b: mb.add(x=a, y=mb.transpose(x=b, perm=[1, 0])),
        {"a": ((2, s), types.fp32), "b": ((s, 2), types.fp32)},
    )
    kernel = ref_compile(prog)
    (out,) = kernel(a=np.ones((2, 5)), b=np.ones((5, 2))).values()
    assert out.shape == (2, 5)
    with pytest.raises(KernelInputError) as info:
        kernel(a=np.ones((2, 5)), b=np.ones((4, 2)))
    msg = str(info.value)
    assert "input 'b' dim 0 has size 4" in msg and "input 'a' dim 1 has size 5" in msg


def test_flexible_dims_that_meet_in_an_op_and_disagree_are_an_input_error():
    kernel = ref_compile(_flexible_add())
    (z,) = kernel(x=np.ones((4, 3)), y=np.ones((4, 3))).values()
    assert z.shape == (4, 3)
    with pytest.raises(KernelInputError) as info:
        kernel(x=np.ones((2, 3)), y=np.ones((5, 3)))
    msg = str(info.value)
    assert "op 'z' (add, function 'main')" in msg
    assert "x dim 0 (2) is input 'x' dim 0" in msg and "y dim 0 (5) is input 'y' dim 0" in msg
    assert isinstance(info.value.__cause__, ValueError)  # NumPy's broadcast error, kept as the cause


def test_a_fixed_size_slice_of_a_too_small_flexible_input_is_an_input_error():
    s = get_new_symbol()
    prog = build(
        lambda x: mb.slice_by_size(x=x, begin=[0, 0], size=[4, 3], name="head"), {"x": ((s, 3), types.fp32)}
    )
    kernel = ref_compile(prog)
    assert kernel(x=np.ones((6, 3)))["head"].shape == (4, 3)
    with pytest.raises(KernelInputError) as info:
        kernel(x=np.ones((2, 3)))
    msg = str(info.value)
    assert (
        "op 'head' (slice_by_size, function 'main')" in msg
        and "produced shape (2, 3), the program declares (4, 3)" in msg
    )
    assert "x dim 0 (2) is input 'x' dim 0" in msg


@pytest.mark.parametrize("shape,dim", [((0, 3), 0), ((2, 0), 1)])
def test_an_empty_input_names_the_input_and_the_dim(shape, dim):
    kernel = ref_compile(_flexible_add())
    with pytest.raises(KernelInputError, match=rf"input 'x' has size 0 in dim {dim}"):
        kernel.run({"x": np.ones(shape), "y": np.ones((2, 3))})


def test_an_input_declared_empty_is_refused_at_compile_time():
    text = TWO_FUNCTIONS.replace("[3]", "[2, 0]")
    with pytest.raises(ProgramError, match="function 'triple' declares input 'a' with size 0 in dim 1"):
        ref_compile(loads(text), function="triple")


def test_an_empty_intermediate_tensor_is_refused_naming_the_op():
    prog = build(
        lambda x, n: mb.slice_by_size(x=x, begin=[0], size=n),
        {"x": ((6,), types.fp32), "n": ((1,), types.int32)},
    )
    kernel = ref_compile(prog)
    (out,) = kernel(x=np.arange(6.0), n=np.array([2], np.int32)).values()
    np.testing.assert_array_equal(out, [0.0, 1.0])
    with pytest.raises(ProgramError, match=r"\(slice_by_size, function 'main'\): produced an empty tensor"):
        kernel(x=np.arange(6.0), n=np.array([0], np.int32))


def test_an_op_declared_to_produce_an_empty_tensor_is_refused_at_compile_time():
    prog = build(lambda x: mb.slice_by_size(x=x, begin=[1], size=[0], name="none"), {"x": ((6,), types.fp32)})
    with pytest.raises(
        ProgramError,
        match=r"op 'none' \(slice_by_size, function 'main'\): its output 'none' is declared empty",
    ):
        ref_compile(prog)


def test_run_without_an_input_is_an_input_error():
    kernel = ref_compile(_flexible_add())
    with pytest.raises(KernelInputError, match="missing input.*y"):
        kernel.run({"x": np.ones((2, 3))})


# -- functions ------------------------------------------------------------------------------------


def test_a_function_is_chosen_by_name_and_main_is_the_default():
    prog = loads(TWO_FUNCTIONS)
    default = anekit.compile(prog, backend="reference")
    assert default.function == "main"
    np.testing.assert_array_equal(default(a=np.array([1.0, 2.0]))["b"], [2.0, 4.0])
    triple = anekit.compile(prog, backend="reference", function="triple")
    assert triple.function == "triple" and triple.inputs["a"].shape == (3,)
    np.testing.assert_array_equal(triple(a=np.array([1.0, 2.0, 3.0]))["b"], [1.0, 4.0, 9.0])


def test_without_main_the_programs_default_function_runs():
    prog = loads(TWO_FUNCTIONS.replace("func main<", "func double<"))
    kernel = ref_compile(prog)
    assert kernel.function == "double"  # the parser makes the first function the default
    prog.default_function_name = "triple"
    assert ref_compile(prog).function == "triple"


def test_an_unknown_function_lists_the_functions():
    prog = loads(TWO_FUNCTIONS)
    with pytest.raises(NoSuchFunction) as info:
        anekit.compile(prog, backend="reference", function="quadruple")
    assert "'quadruple'" in str(info.value) and "'main', 'triple'" in str(info.value)
    prog.default_function_name = "gone"
    with pytest.raises(NoSuchFunction, match="no function 'gone'"):
        ref_compile(prog)


# -- raw errors become anekit errors ------------------------------------------------------------


def test_an_out_of_range_gather_names_the_op():
    prog = build(
        lambda x, i: mb.gather(x=x, indices=i, axis=0, name="pick"),
        {"x": ((4,), types.fp32), "i": ((2,), types.int32)},
    )
    kernel = ref_compile(prog)
    with pytest.raises(
        ProgramError, match=r"op 'pick' \(gather, function 'main'\) failed: IndexError"
    ) as info:
        kernel(x=np.arange(4.0), i=np.array([1, 9], np.int32))
    assert "operands: x=x (4), indices=i (2)" in str(info.value)


@pytest.mark.parametrize(
    "raised,caught",
    [
        (ZeroDivisionError("division by zero"), ProgramError),
        (IndexError("index 9 is out of bounds"), ProgramError),
        (ValueError("operands could not be broadcast"), ProgramError),
        (FloatingPointError("overflow"), ProgramError),
        (MemoryError(), TensorTooLarge),
        (UnsupportedOp("relu of a string"), UnsupportedOp),
    ],
)
def test_whatever_an_op_raises_comes_out_as_an_anekit_error(monkeypatch, raised, caught):
    def boom(ctx, x):
        raise raised

    monkeypatch.setitem(OPS, "relu", boom)
    prog = build(lambda x: mb.relu(x=x, name="r"), {"x": ((3,), types.fp32)})
    with pytest.raises(caught, match=r"op 'r' \(relu, function 'main'\)") as info:
        ref_compile(prog)(x=np.ones(3))
    assert isinstance(info.value, AnekitError) and info.value.__cause__ is raised


def test_a_failure_while_folding_constants_names_the_op(monkeypatch):
    def boom(ctx, x):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(OPS, "relu", boom)
    prog = build(
        lambda x: mb.add(x=x, y=mb.relu(x=np.ones(3, np.float32), name="folded")), {"x": ((3,), types.fp32)}
    )
    with pytest.raises(
        ProgramError, match=r"op 'folded' \(relu, function 'main'\) failed: ZeroDivisionError"
    ):
        ref_compile(prog)


def test_an_op_result_of_the_wrong_shape_or_count_is_a_program_error(monkeypatch):
    prog = build(lambda x: mb.relu(x=x, name="r"), {"x": ((3,), types.fp32)})
    monkeypatch.setitem(OPS, "relu", lambda ctx, x: np.ones(4))
    with pytest.raises(
        ProgramError, match=r"op 'r' \(relu.*produced shape \(4\), the program declares \(3\)"
    ):
        ref_compile(prog)(x=np.ones(3))
    prog = build(lambda x: mb.split(x=x, num_splits=2, axis=0, name="s"), {"x": ((4,), types.fp32)})
    monkeypatch.setitem(OPS, "split", lambda ctx, **kw: np.ones(2))
    with pytest.raises(ProgramError, match=r"op 's' \(split.*wrong number of outputs"):
        ref_compile(prog)(x=np.ones(4))


def test_bad_options_are_anekit_errors():
    with pytest.raises(ProgramError, match="numerics must be one of"):
        ref_compile(loads(TWO_FUNCTIONS), numerics="float8")


# -- the size limit -------------------------------------------------------------------------------


def test_the_limit_is_a_named_constant_of_gibibytes():
    assert MAX_TENSOR_BYTES == 4 * 2**30


def test_a_static_tensor_over_the_limit_is_refused_at_compile_time():
    prog = build(lambda x: mb.tile(x=x, reps=[1 << 16, 1 << 16], name="huge"), {"x": ((2, 2), types.fp32)})
    with pytest.raises(TensorTooLarge, match=r"op 'huge' \(tile, function 'main'\).*MAX_TENSOR_BYTES"):
        ref_compile(prog)


def test_a_static_input_over_the_limit_is_refused_at_compile_time():
    prog = build(lambda x: mb.relu(x=x), {"x": ((1 << 20, 1 << 11), types.fp32)})
    with pytest.raises(TensorTooLarge, match=r"input 'x' has shape \(1048576, 2048\)"):
        ref_compile(prog)


def test_a_broadcast_of_flexible_dims_over_the_limit_is_refused_before_allocating():
    s, t = get_new_symbol(), get_new_symbol()
    prog = build(
        lambda x, y: mb.add(x=x, y=y, name="outer"), {"x": ((s, 1), types.fp32), "y": ((1, t), types.fp32)}
    )
    kernel = ref_compile(prog)
    assert kernel(x=np.ones((3, 1)), y=np.ones((1, 4)))["outer"].shape == (3, 4)
    n = 1 << 16  # 2**32 fp32 elements: 16 GiB
    with pytest.raises(TensorTooLarge, match=r"op 'outer' \(add.*\(65536, 65536\).*16 GiB"):
        kernel(x=np.ones((n, 1), np.float32), y=np.ones((1, n), np.float32))


def test_a_range_over_the_limit_is_refused_before_allocating():
    prog = build(
        lambda n: mb.range_1d(start=np.int32(0), end=mb.squeeze(x=n), step=np.int32(1), name="r"),
        {"n": ((1,), types.int32)},
    )
    kernel = ref_compile(prog)
    np.testing.assert_array_equal(kernel(n=np.array([3], np.int32))["r"], [0, 1, 2])
    with pytest.raises(TensorTooLarge, match=r"op 'r' \(range_1d"):
        kernel(n=np.array([2**31 - 1], np.int32))


@pytest.mark.parametrize(
    "name,fn,specs,args",
    [
        ("tile", lambda x, r: mb.tile(x=x, reps=r, name="t"), {"x": ((2,), types.fp32), "r": ((1,), types.int32)},
         {"x": np.ones(2), "r": np.array([1 << 30], np.int32)}),
        ("pad", lambda x, p: mb.pad(x=x, pad=p, name="t"), {"x": ((2,), types.fp32), "p": ((2,), types.int32)},
         {"x": np.ones(2), "p": np.array([0, 1 << 30], np.int32)}),
    ],
)  # fmt: skip
def test_value_sized_ops_over_the_limit_are_refused(name, fn, specs, args):
    kernel = ref_compile(build(fn, specs))
    with pytest.raises(TensorTooLarge, match=rf"op 't' \({name}"):
        kernel(**args)
