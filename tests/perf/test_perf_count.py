"""FLOP and byte counting of MIL programs, op kind by op kind, against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from anekit.mil import ct, mb, types
from anekit.perf import count_ops
from anekit.perf import workloads as wl

F16 = np.float16


def _prog(shape, body, dtype=types.fp16):
    @mb.program(input_specs=[mb.TensorSpec(shape=shape, dtype=dtype)], opset_version=ct.target.iOS18)
    def prog(x):
        return body(x)

    return prog


def _only(cost, op_type):
    ops = [o for o in cost.ops if o.op_type == op_type]
    assert len(ops) == 1, [o.op_type for o in cost.ops]
    return ops[0]


def test_conv_1x1_is_2_c_c_s():
    c_in, c_out, s = 48, 80, 24
    w = np.zeros((c_out, c_in, 1, 1), F16)
    cost = count_ops(_prog((1, c_in, 1, s), lambda x: mb.conv(x=x, weight=w)))
    op = _only(cost, "conv")
    assert op.kind == "conv"
    assert op.flops == 2 * c_out * c_in * s  # ane-private-api.md §4: 2*C*C*S
    assert op.weight_bytes == c_out * c_in * 2
    assert op.operand_bytes == c_out * c_in * 2
    assert op.act_bytes == (c_in + c_out) * s * 2
    assert cost.input_bytes == c_in * s * 2 and cost.output_bytes == c_out * s * 2


def test_conv_3x3_grouped_with_bias():
    n, c_in, c_out, groups, h, w_ = 2, 16, 32, 4, 10, 12
    w = np.zeros((c_out, c_in // groups, 3, 3), F16)
    b = np.zeros((c_out,), F16)
    cost = count_ops(
        _prog((n, c_in, h, w_), lambda x: mb.conv(x=x, weight=w, bias=b, groups=groups, pad_type="same"))
    )
    op = _only(cost, "conv")
    # per output element: (Cin/groups)*3*3 MACs = 2x FLOPs, plus one add for the bias
    out_elems = n * c_out * h * w_
    assert op.flops == out_elems * (2 * (c_in // groups) * 9 + 1)
    assert op.weight_bytes == (c_out * (c_in // groups) * 9 + c_out) * 2


def test_conv_strided_uses_output_size():
    w = np.zeros((8, 4, 2, 2), F16)
    cost = count_ops(_prog((1, 4, 8, 8), lambda x: mb.conv(x=x, weight=w, strides=[2, 2])))
    assert _only(cost, "conv").flops == 2 * 8 * 4 * 2 * 2 * 4 * 4


@pytest.mark.parametrize("tx,ty", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_batched_with_transposes(tx, ty):
    b, m, k, n = 3, 5, 7, 11
    xs = (b, k, m) if tx else (b, m, k)
    ys = (b, n, k) if ty else (b, k, n)
    y = np.zeros(ys, F16)
    cost = count_ops(_prog(xs, lambda x: mb.matmul(x=x, y=y, transpose_x=tx, transpose_y=ty)))
    op = _only(cost, "matmul")
    assert op.kind == "matmul"
    assert op.flops == 2 * b * m * n * k
    assert op.weight_bytes == b * k * n * 2  # the constant operand


def test_linear_with_bias():
    rows, din, dout = 6, 20, 12
    w = np.zeros((dout, din), F16)
    bias = np.zeros((dout,), F16)
    cost = count_ops(_prog((rows, din), lambda x: mb.linear(x=x, weight=w, bias=bias)))
    op = _only(cost, "linear")
    assert op.flops == 2 * rows * dout * din + rows * dout
    assert op.weight_bytes == (dout * din + dout) * 2


def test_elementwise_reduction_softmax_norm():
    shape = (1, 8, 1, 16)
    n = 8 * 16

    def body(x):
        a = mb.add(x=x, y=x, name="add")
        r = mb.relu(x=a, name="relu")
        e = mb.exp(x=r, name="exp")
        s = mb.softmax(x=e, axis=1, name="softmax")
        ln = mb.layer_norm(x=s, axes=[1], name="ln")
        return mb.reduce_sum(x=ln, axes=[1], keep_dims=True, name="rsum")

    cost = count_ops(_prog(shape, body))
    by = {o.op_type: o for o in cost.ops}
    assert by["add"].flops == n and by["relu"].flops == n and by["exp"].flops == n
    assert by["softmax"].flops == 5 * n
    assert by["layer_norm"].flops == 7 * n
    assert by["reduce_sum"].flops == n  # one per input element
    assert all(by[t].kind == "vector" for t in ("add", "relu", "exp", "softmax", "layer_norm", "reduce_sum"))


def test_sdpa_counts_two_matmuls_and_softmax():
    b, h, lq, s, e = 1, 2, 8, 8, 4

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(b, h, lq, e), dtype=types.fp16)] * 3, opset_version=ct.target.iOS18
    )
    def prog(q, k, v):
        return mb.scaled_dot_product_attention(query=q, key=k, value=v)

    op = _only(count_ops(prog), "scaled_dot_product_attention")
    assert op.flops == b * h * (2 * lq * s * e + 2 * lq * s * e + 7 * lq * s)


def test_moves_are_free_of_flops_and_views_free_of_bytes():
    def body(x):
        t = mb.transpose(x=x, perm=[0, 1, 3, 2], name="t")
        r = mb.reshape(x=t, shape=[1, 16, 8], name="r")
        return mb.expand_dims(x=r, axes=[0], name="e")

    cost = count_ops(_prog((1, 4, 4, 8), body))
    by = {o.op_type: o for o in cost.ops}
    assert by["transpose"].kind == "move" and by["transpose"].flops == 0
    assert by["transpose"].act_bytes == 2 * 128 * 2
    assert by["reshape"].kind == "move"
    assert by["expand_dims"].kind == "view"
    assert cost.flops == 0


def test_int8_weights_counted_at_stored_size_and_w8a8_detected():
    c, s = 32, 16
    q = np.ones((c, c, 1, 1), np.int8)

    def body(x):
        w = mb.constexpr_affine_dequantize(quantized_data=q, zero_point=np.int8(0), scale=F16(0.5), axis=0)
        y = mb.conv(x=x, weight=w, name="c0")
        d = mb.dequantize(input=mb.quantize(input=y, scale=F16(0.125), output_dtype="int8"), scale=F16(0.125))
        return mb.conv(x=d, weight=w, name="c1")

    cost = count_ops(_prog((1, c, 1, s), body))
    convs = [o for o in cost.ops if o.op_type == "conv"]
    assert [o.int8_act for o in convs] == [False, True]
    assert convs[0].weight_bytes == c * c  # int8: one byte per weight (scale and zero point are scalars)
    qd = [o for o in cost.ops if o.op_type in ("quantize", "dequantize")]
    assert [o.flops for o in qd] == [2 * c * s] * 2
    assert not any(o.op_type.startswith("constexpr") for o in cost.ops)


def test_dynamic_weight_matmul_has_no_constant_weight():
    c, s = 16, 8

    def body(p):
        act = mb.reshape(x=mb.slice_by_size(x=p, begin=[0, 0, 0, 0], size=[1, c, 1, s]), shape=[c, s])
        wt = mb.reshape(x=mb.slice_by_size(x=p, begin=[0, 0, 0, s], size=[1, c, 1, c]), shape=[c, c])
        return mb.matmul(x=wt, y=act, transpose_x=True)

    cost = count_ops(_prog((1, c, 1, s + c), body))
    mm = _only(cost, "matmul")
    assert mm.flops == 2 * c * c * s
    assert mm.weight_bytes == 0 and mm.operand_bytes == c * s * 2  # the "y" operand, an activation
    assert cost.input_bytes == c * (s + c) * 2


def test_unknown_op_is_counted_and_named():
    cost = count_ops(_prog((4, 4), lambda x: mb.cumsum(x=x, axis=0)))
    assert cost.flops == 16
    assert any("cumsum" in n for n in cost.notes)


def test_hand_written_workloads_agree_with_counting_built_programs():
    """The calibration's analytic conv chains (workloads.py) match count_ops on the same built program."""
    c, s, depth = 64, 32, 3
    ws = [np.zeros((c, c, 1, 1), F16) for _ in range(depth)]

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, c, 1, s), dtype=types.fp32)], opset_version=ct.target.iOS18
    )
    def prog(x):
        h = mb.cast(x=x, dtype="fp16")
        for w in ws:
            h = mb.conv(x=h, weight=w)
        return mb.cast(x=h, dtype="fp32")

    built = count_ops(prog)
    analytic = wl.conv_chain(c, s, depth)
    assert built.flops == analytic.flops == 2 * c * c * s * depth
    assert built.weight_bytes == analytic.weight_bytes
    assert built.input_bytes == analytic.input_bytes and built.output_bytes == analytic.output_bytes
    assert built.working_set == analytic.working_set
    assert built.n_ops == analytic.n_ops == depth + 2


def test_static_forward_kernels_flops_match_maderix_accounting():
    """fwdAttn + fwdFFN projections are the `fwd` term of ane-private-api.md §5.4 (43.49 GFLOP)."""
    m = wl.STORIES110M
    kernels = dict(wl.static_forward_kernels(m))
    mac = sum(o.flops * o.count for k in kernels.values() for o in k.ops if o.op_type == "conv") * m.layers
    assert mac == pytest.approx(43.49e9, rel=1e-3)
    attn = sum(o.flops for o in kernels["fwdAttn"].ops if o.op_type == "matmul")
    assert attn == 2 * (2 * m.heads * m.seq * m.seq * m.head_dim)
    assert wl.static_ane_flops(m) == pytest.approx(93.0e9, rel=1e-3)
