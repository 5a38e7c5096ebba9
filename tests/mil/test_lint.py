"""Tests of anekit.mil.lint: each rule fires on a minimal program and stays quiet on a close variant."""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from collections.abc import Callable

import numpy as np
import pytest

from anekit._coreml import Program, ct, mb, types
from anekit.mil.lint import CHIP_FAMILIES, RULES, SEVERITIES, Finding, lint, normalize_chip

# `anekit.mil` re-exports the function `lint`, which shadows the submodule's attribute.
lint_program = importlib.import_module("anekit.mil.lint.program")
lint_weights = importlib.import_module("anekit.mil.lint.weights")

FP16, FP32 = types.fp16, types.fp32
IOS18 = ct.target.iOS18
S = (1, 64, 1, 64)  # a well-shaped [1, C, 1, S] fp16 surface


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------


def one(body: Callable, shape=S, dtype=FP16, opset=IOS18):
    """A program of one input `x`."""

    @mb.program(input_specs=[mb.TensorSpec(shape=shape, dtype=dtype)], opset_version=opset)
    def prog(x):
        return body(x)

    return prog


def two(body: Callable, shape_a=S, shape_b=S, dtype=FP16):
    """A program of two inputs `a`, `b`."""

    @mb.program(
        input_specs=[mb.TensorSpec(shape=shape_a, dtype=dtype), mb.TensorSpec(shape=shape_b, dtype=dtype)],
        opset_version=IOS18,
    )
    def prog(a, b):
        return body(a, b)

    return prog


def with_state(state_shape):
    @mb.program(
        input_specs=[mb.TensorSpec(shape=S, dtype=FP16), mb.StateTensorSpec(shape=state_shape, dtype=FP16)],
        opset_version=IOS18,
    )
    def prog(x, st):
        s = mb.read_state(input=st)
        mb.coreml_update_state(state=st, value=mb.mul(x=s, y=np.float16(0.5)))
        return mb.relu(x=x)

    return prog


def zeros(*shape, dtype=np.float16):
    """A constant of any size without the memory (a broadcast view)."""
    return np.broadcast_to(dtype(0.01), shape)


def conv(x, cin: int, cout: int, kw: int = 1, **kw_args):
    return mb.conv(x=x, weight=zeros(cout, cin, 1, kw), **kw_args)


def runtime_weight_conv(x, groups: int):
    """A 1x1 conv whose weight is sliced out of the input (the dynamic-weight idiom)."""
    cin = 64 // groups
    w = mb.slice_by_size(x=x, begin=[0, 0, 0, 0], size=[1, 64, 1, cin])
    return mb.conv(x=x, weight=mb.reshape(x=w, shape=[64, cin, 1, 1]), groups=groups)


def relu2(x):
    """Two compute ops, so the single-op rule stays quiet."""
    return mb.relu(x=mb.relu(x=x))


def ids(findings) -> list[str]:
    return [f.rule for f in findings]


# ---------------------------------------------------------------------------------------------
# Cases: rule id -> (program that triggers it, close variant that does not, chip)
# ---------------------------------------------------------------------------------------------


def _sdpa(mask: bool):
    def body(x):
        q = mb.reshape(x=x, shape=[1, 1, 64, 64])
        m = {"attn_mask": np.zeros((1, 1, 64, 64), np.float16)} if mask else {}
        return mb.reshape(x=mb.scaled_dot_product_attention(query=q, key=q, value=q, **m), shape=list(S))

    return one(body)


def _causal_attention(x, heads: int, hd: int, seq: int):
    """Decomposed attention with a finite causal mask (the ANE-safe form of SDPA)."""
    q = mb.transpose(x=mb.reshape(x=x, shape=[1, heads, hd, seq]), perm=[0, 1, 3, 2])
    scores = mb.matmul(x=q, y=q, transpose_y=True)
    scores = mb.mul(x=scores, y=np.float16(1 / np.sqrt(hd)))
    mask = np.triu(np.full((seq, seq), -65504, np.float16), k=1)[None, None]
    probs = mb.softmax(x=mb.add(x=scores, y=mask), axis=-1)
    out = mb.transpose(x=mb.matmul(x=probs, y=q), perm=[0, 1, 3, 2])
    return mb.reshape(x=out, shape=[1, heads * hd, 1, seq])


def _rmsnorm(x, channels: int):
    sq = mb.mul(x=x, y=x)
    ss = mb.reduce_sum(x=sq, axes=[1], keep_dims=True)
    rrms = mb.pow(
        x=mb.add(x=mb.mul(x=ss, y=np.float16(1 / channels)), y=np.float16(1e-5)), y=np.float16(-0.5)
    )
    return mb.mul(x=mb.mul(x=x, y=rrms), y=np.ones((1, channels, 1, 1), np.float16))


def realistic():
    """Chain of 1x1 convs, RMSNorm via pow(-0.5), decomposed causal attention, residual: ANE-clean."""
    rng = np.random.default_rng(0)

    def body(x):
        h = _rmsnorm(x, 256)
        for _ in range(3):
            h = mb.conv(x=h, weight=(rng.standard_normal((256, 256, 1, 1)) * 0.05).astype(np.float16))
        h = _causal_attention(h, heads=4, hd=64, seq=64)
        h = mb.conv(x=h, weight=(rng.standard_normal((256, 256, 1, 1)) * 0.05).astype(np.float16))
        return mb.add(x=x, y=mb.sigmoid(x=h))

    return one(body, shape=(1, 256, 1, 64))


CASES: dict[str, tuple[Callable, Callable, str | None]] = {
    "inner-dim-not-multiple-of-32": (
        lambda: one(relu2, shape=(1, 64, 1, 50)),
        lambda: one(relu2, shape=(1, 64, 1, 96)),
        "m4",
    ),
    "fp32-io": (
        lambda: one(lambda x: mb.cast(x=relu2(mb.cast(x=x, dtype="fp16")), dtype="fp32"), dtype=FP32),
        lambda: one(relu2),
        "m4",
    ),
    "io-dtype-unsupported": (
        lambda: one(lambda x: relu2(mb.cast(x=x, dtype="fp16")), dtype=types.int32),
        lambda: one(relu2),
        "m4",
    ),
    "multiple-inputs": (
        lambda: two(lambda a, b: relu2(mb.add(x=a, y=b))),
        lambda: one(relu2),
        "m4",
    ),
    "io-slot-order": (
        lambda: two(lambda a, b: relu2(mb.concat(values=[a, b], axis=3)), (1, 64, 1, 128), (1, 64, 1, 64)),
        lambda: two(lambda a, b: relu2(mb.concat(values=[a, b], axis=3)), (1, 64, 1, 64), (1, 64, 1, 128)),
        "m4",
    ),
    "output-not-computed": (
        lambda: one(lambda x: x),
        lambda: one(lambda x: mb.identity(x=x)),
        "m4",
    ),
    "io-not-4d": (
        lambda: one(relu2, shape=(64, 64)),
        lambda: one(relu2),
        "m4",
    ),
    "state-dim-not-multiple-of-32": (
        lambda: with_state((1, 64, 1, 100)),
        lambda: with_state((1, 64, 1, 128)),
        "m4",
    ),
    "axis-over-65536": (
        lambda: one(relu2, shape=(1, 65537, 1, 32)),
        lambda: one(relu2, shape=(1, 65536, 1, 32)),
        "m4",
    ),
    "spatial-dim-over-16384": (
        lambda: one(relu2, shape=(1, 32, 1, 16416)),
        lambda: one(relu2, shape=(1, 32, 1, 16384)),
        "m4",
    ),
    "rank-over-5": (
        lambda: one(relu2, shape=(1, 2, 2, 2, 2, 64)),
        lambda: one(relu2, shape=(1, 2, 2, 2, 64)),
        "m4",
    ),
    "dynamic-shape": (
        lambda: one(relu2, shape=(1, 64, 1, ct.RangeDim(1, 128).symbol)),
        lambda: one(relu2),
        "m4",
    ),
    "spatial-width-0x1d-band": (
        lambda: one(
            lambda x: relu2(mb.slice_by_size(x=x, begin=[0, 0, 0, 0], size=[1, 32, 1, 14600])),
            shape=(1, 32, 1, 14624),
        ),
        lambda: one(
            lambda x: relu2(mb.slice_by_size(x=x, begin=[0, 0, 0, 0], size=[1, 32, 1, 14592])),
            shape=(1, 32, 1, 14624),
        ),
        "m4",
    ),
    "rsqrt-not-compiled": (
        lambda: one(lambda x: relu2(mb.rsqrt(x=x))),
        lambda: one(lambda x: relu2(mb.pow(x=x, y=np.float16(-0.5)))),
        "m4",
    ),
    "inverse-not-compiled": (
        lambda: one(lambda x: relu2(mb.inverse(x=x))),
        lambda: one(lambda x: relu2(mb.real_div(x=np.float16(1), y=x))),
        "m4",
    ),
    "sdpa-attn-mask-ignored": (lambda: _sdpa(mask=True), lambda: _sdpa(mask=False), "m4"),
    "op-falls-off-ane": (
        lambda: one(lambda x: relu2(mb.gather(x=x, indices=np.arange(32, dtype=np.int32), axis=1))),
        lambda: one(lambda x: relu2(mb.slice_by_size(x=x, begin=[0, 0, 0, 0], size=[1, 32, 1, 64]))),
        "m4",
    ),
    "control-flow": (
        lambda: one(
            lambda x: mb.cond(
                pred=mb.greater(x=mb.reduce_sum(x=x), y=np.float16(0)),
                _true_fn=lambda: mb.relu(x=x),
                _false_fn=lambda: mb.sigmoid(x=x),
            )
        ),
        lambda: one(lambda x: mb.select(cond=mb.greater(x=x, y=np.float16(0)), a=mb.relu(x=x), b=x)),
        "m4",
    ),
    "conv-input-channels-rejected": (
        lambda: one(lambda x: conv(x, 32000, 32), shape=(1, 32000, 1, 32)),
        lambda: one(lambda x: conv(x, 16384, 32), shape=(1, 16384, 1, 32)),
        "m4",
    ),
    "conv-input-channels-large": (
        lambda: one(lambda x: conv(x, 16416, 32), shape=(1, 16416, 1, 32)),
        lambda: one(lambda x: conv(x, 16384, 32), shape=(1, 16384, 1, 32)),
        "m4",
    ),
    "conv-kernel-too-wide": (
        lambda: one(lambda x: relu2(conv(x, 64, 64, kw=15, pad_type="same"))),
        lambda: one(lambda x: relu2(conv(x, 64, 64, kw=13, pad_type="same"))),
        "m4",
    ),
    "conv-dilated": (
        lambda: one(lambda x: relu2(conv(x, 64, 64, kw=3, pad_type="same", dilations=[1, 2]))),
        lambda: one(lambda x: relu2(conv(x, 64, 64, kw=3, pad_type="same"))),
        "m4",
    ),
    "matmul-inner-dim-not-multiple-of-32": (
        lambda: two(lambda a, b: relu2(mb.matmul(x=a, y=b)), (1, 1, 64, 48), (1, 1, 48, 64)),
        lambda: two(lambda a, b: relu2(mb.matmul(x=a, y=b)), (1, 1, 48, 64), (1, 1, 64, 48)),
        "m4",
    ),
    "matmul-operands-from-different-inputs": (
        lambda: two(lambda a, b: relu2(mb.matmul(x=a, y=b, transpose_y=True))),
        lambda: two(lambda a, b: mb.add(x=mb.matmul(x=a, y=a, transpose_y=True), y=b)),
        "m4",
    ),
    "matmul-const-weight": (
        lambda: one(lambda x: relu2(mb.matmul(x=x, y=zeros(64, 64))), shape=(1, 1, 64, 64)),
        lambda: one(lambda x: relu2(conv(x, 64, 64))),
        "m4",
    ),
    "reduce-arg-axis-over-2048": (
        lambda: one(lambda x: mb.reduce_argmax(x=mb.relu(x=x), axis=-1), shape=(1, 1, 1, 4096)),
        lambda: one(lambda x: mb.reduce_argmax(x=mb.relu(x=x), axis=-1), shape=(1, 1, 1, 2048)),
        "m4",
    ),
    "fp16-square-overflow": (
        lambda: one(lambda x: mb.mul(x=x, y=mb.reduce_sum(x=mb.mul(x=x, y=x), axes=[1], keep_dims=True))),
        lambda: one(lambda x: mb.mul(x=x, y=mb.reduce_sum(x=mb.mul(x=x, y=x), axes=[3], keep_dims=True))),
        "m4",
    ),
    "cast-unsupported-m1-m2": (
        lambda: one(lambda x: mb.cast(x=relu2(mb.cast(x=x, dtype="fp32")), dtype="fp16")),
        lambda: one(relu2),
        "m1",
    ),
    "const-cast-unsupported-m1-m2": (
        lambda: one(
            lambda x: relu2(mb.mul(x=x, y=mb.cast(x=mb.const(val=np.full(S, 0.5, np.float32)), dtype="fp16")))
        ),
        lambda: one(lambda x: relu2(mb.mul(x=x, y=mb.const(val=np.full(S, 0.5, np.float16))))),
        "m1",
    ),
    "cast-at-io-boundary": (
        lambda: one(lambda x: relu2(mb.cast(x=x, dtype="fp16")), dtype=FP32),
        lambda: one(lambda x: mb.cast(x=relu2(mb.cast(x=x, dtype="fp32")), dtype="fp16")),
        "m4",
    ),
    "non-finite-constant": (
        lambda: one(lambda x: relu2(mb.add(x=x, y=np.full((1, 1, 1, 64), -np.inf, np.float16)))),
        lambda: one(lambda x: relu2(mb.add(x=x, y=np.full((1, 1, 1, 64), -65504, np.float16)))),
        "m4",
    ),
    "constant-overflows-fp16": (
        lambda: one(lambda x: relu2(mb.add(x=x, y=np.full((1, 1, 1, 64), -1e9, np.float32))), dtype=FP32),
        lambda: one(lambda x: relu2(mb.add(x=x, y=np.full((1, 1, 1, 64), -65504, np.float32))), dtype=FP32),
        "m4",
    ),
    "weights-exceed-sram": (
        # 4096 x 4096 fp16 = 32 MB: where the M4 Max probe collapsed (ane-private-api.md §4.3).
        lambda: one(lambda x: relu2(conv(x, 4096, 4096)), shape=(1, 4096, 1, 32)),
        lambda: one(lambda x: relu2(conv(x, 3584, 3584)), shape=(1, 3584, 1, 32)),
        "m4",
    ),
    "large-operand": (
        lambda: one(lambda x: relu2(conv(x, 1024, 2048)), shape=(1, 1024, 1, 32)),
        lambda: one(lambda x: relu2(conv(x, 1024, 1024)), shape=(1, 1024, 1, 32)),
        "m4",
    ),
    "weights-over-2gb": (
        lambda: one(lambda x: conv(x, 16384, 65536), shape=(1, 16384, 1, 32)),
        lambda: one(lambda x: conv(x, 16383, 65536), shape=(1, 16383, 1, 32)),
        "m4",
    ),
    "m3-conv-channels-not-512": (
        lambda: one(lambda x: relu2(conv(x, 256, 256)), shape=(1, 256, 1, 64)),
        lambda: one(lambda x: relu2(conv(x, 512, 512)), shape=(1, 512, 1, 64)),
        "m3",
    ),
    "matmul-sdpa-on-m1-m2": (
        lambda: two(lambda a, b: relu2(mb.matmul(x=a, y=b, transpose_y=True))),
        lambda: one(lambda x: relu2(conv(x, 64, 64))),
        "m2",
    ),
    "runtime-weight-grouped-conv": (
        lambda: one(lambda x: runtime_weight_conv(x, groups=2)),
        lambda: one(lambda x: runtime_weight_conv(x, groups=1)),
        "m1",
    ),
    "gelu-lut-error": (
        lambda: one(lambda x: relu2(mb.gelu(x=x))),
        lambda: one(lambda x: relu2(mb.silu(x=x))),
        "m1",
    ),
    "opset-newer-than-ios16-on-m1-m2": (
        lambda: one(relu2),
        lambda: one(relu2, opset=ct.target.iOS16),
        "m1",
    ),
    "single-op-program": (
        lambda: one(lambda x: mb.cast(x=conv(mb.cast(x=x, dtype="fp16"), 64, 64), dtype="fp32"), dtype=FP32),
        lambda: one(relu2),
        "m4",
    ),
}


def test_every_rule_has_a_case():
    assert set(CASES) == set(RULES)


def test_every_rule_module_is_imported_and_registers_rules():
    """A rule module registers its rules when the package imports it; one left out would drop them."""
    package = sys.modules["anekit.mil.lint"]
    engine = sys.modules["anekit.mil.lint.engine"]
    names = {m.name for m in pkgutil.iter_modules(package.__path__)} - {"engine", "program"}
    assert names and all(f"anekit.mil.lint.{n}" in sys.modules for n in names)
    registered = {check.__module__.rsplit(".", 1)[1] for check, _ in engine._CHECKS.values()}
    assert registered == names


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_fires(rule_id):
    make, _, chip = CASES[rule_id]
    findings = [f for f in lint(make(), chip=chip) if f.rule == rule_id]
    assert findings, f"{rule_id} did not fire"
    rule = RULES[rule_id]
    for f in findings:
        assert f.severity == rule.severity and f.source == rule.source and f.message


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_quiet_on_close_variant(rule_id):
    _, make, chip = CASES[rule_id]
    assert rule_id not in ids(lint(make(), chip=chip))


# ---------------------------------------------------------------------------------------------
# Details of individual rules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("inner", "dtype", "bad"), [(48, FP32, False), (40, FP32, True), (32, FP16, False)])
def test_inner_dim_rows_are_64_bytes(inner, dtype, bad):
    prog = one(lambda x: mb.cast(x=relu2(mb.cast(x=x, dtype="fp16")), dtype="fp32"), (1, 64, 1, inner), dtype)
    if dtype == FP16:
        prog = one(relu2, (1, 64, 1, inner))
    found = [f for f in lint(prog, chip="m4") if f.rule == "inner-dim-not-multiple-of-32"]
    assert bool(found) == bad
    if bad:  # both the input and the output surface
        assert {f.var for f in found} == {"x", prog.functions["main"].outputs[0].name}


def test_rsqrt_finding_text():
    prog = one(lambda x: relu2(mb.rsqrt(x=x, name="r0")))
    (f,) = [f for f in lint(prog) if f.rule == "rsqrt-not-compiled"]
    assert f.op == "r0"
    assert str(f).startswith("error rsqrt-not-compiled at op 'r0': ")
    assert str(f).endswith("[docs/ane-facts.md#rsqrt-inverse; https://github.com/maderix/ane-prefill-bench]")
    assert "pow(x, -0.5)" in f.message


def test_shape_fault_reported_where_it_starts():
    prog = one(lambda x: mb.sigmoid(x=mb.relu(x=mb.relu(x=x))), shape=(1, 70000, 1, 32))
    found = [f for f in lint(prog, chip="m4") if f.rule == "axis-over-65536"]
    assert [(f.op, f.var) for f in found] == [(None, "x")]


def test_conv_channel_rules_do_not_overlap():
    prog = one(lambda x: conv(x, 32000, 32), shape=(1, 32000, 1, 32))
    found = ids(lint(prog, chip="m4"))
    assert "conv-input-channels-rejected" in found and "conv-input-channels-large" not in found


def test_matmul_inner_dim_with_transpose_x():
    prog = two(lambda a, b: relu2(mb.matmul(x=a, y=b, transpose_x=True)), (1, 1, 40, 64), (1, 1, 40, 64))
    assert "matmul-inner-dim-not-multiple-of-32" in ids(lint(prog, chip="m4"))


def test_square_via_pow_2():
    prog = one(lambda x: mb.reduce_mean(x=mb.pow(x=x, y=np.float16(2)), axes=[1], keep_dims=True))
    assert "fp16-square-overflow" in ids(lint(prog, chip="m4"))


def test_other_off_ane_ops():
    prog = one(lambda x: mb.topk(x=mb.relu(x=x), k=2)[0])
    assert "op-falls-off-ane" in ids(lint(prog, chip="m4"))


def test_constant_output_is_not_computed():
    prog = one(lambda x: (mb.relu(x=mb.relu(x=x)), mb.const(val=np.zeros(S, np.float16))))
    assert "output-not-computed" in ids(lint(prog, chip="m4"))


def test_io_slot_order_outputs_must_descend():
    small = one(lambda x: (relu2(mb.slice_by_size(x=x, begin=[0] * 4, size=[1, 32, 1, 64])), relu2(x)))
    large = one(lambda x: (relu2(x), relu2(mb.slice_by_size(x=x, begin=[0] * 4, size=[1, 32, 1, 64]))))
    assert "io-slot-order" in ids(lint(small, chip="m4"))
    assert "io-slot-order" not in ids(lint(large, chip="m4"))


def test_blob_limit_counts_every_function(monkeypatch):
    monkeypatch.setattr(lint_weights, "_BLOB_LIMIT_BYTES", 2 * 64 * 64 * 2)
    fn = mb.function(input_specs=[mb.TensorSpec(shape=S, dtype=FP16)], opset_version=IOS18)
    prog = Program()
    prog.add_function("a", fn(lambda x: relu2(conv(x, 64, 64))))
    prog.add_function("b", fn(lambda x: relu2(conv(x, 64, 64))))
    found = [f for f in lint(prog, chip="m4") if f.rule == "weights-over-2gb"]
    assert len(found) == 1 and found[0].function is None
    assert "weights-over-2gb" not in ids(lint(prog, chip="m4", function="a"))


# ---------------------------------------------------------------------------------------------
# A clean program, chips, ordering, functions, purity
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chip", ["m4", "m5", "M4 Max"])
def test_realistic_program_is_clean(chip):
    findings = lint(realistic(), chip=chip)
    assert [str(f) for f in findings if f.severity != "info"] == []
    assert "fp16-square-overflow" in ids(findings)  # the RMSNorm x*x, an info


def test_without_chip_only_chip_specific_rules_warn():
    findings = lint(realistic())
    assert not [f for f in findings if f.severity == "error"]
    for f in findings:
        if f.severity == "warning":
            assert RULES[f.rule].chips is not None and "only; pass chip=" in f.message


def test_chip_specific_errors_downgrade_without_chip():
    prog = CASES["cast-unsupported-m1-m2"][0]()
    by_chip = {c: [f for f in lint(prog, chip=c) if f.rule == "cast-unsupported-m1-m2"] for c in ("m1", "m4")}
    assert [f.severity for f in by_chip["m1"]] == ["error", "error"]
    assert by_chip["m4"] == []
    generic = [f for f in lint(prog) if f.rule == "cast-unsupported-m1-m2"]
    assert [f.severity for f in generic] == ["warning", "warning"]
    assert all("M1, M2" in f.message for f in generic)


@pytest.mark.parametrize(
    ("name", "family"),
    [("m1", "m1"), ("m1-pro", "m1"), ("M3 Max", "m3"), ("m4", "m4"), ("Apple M2 Ultra", "m2"),
     (" M4pro ", "m4"), ("m5_max", "m5")],
)  # fmt: skip
def test_normalize_chip(name, family):
    assert normalize_chip(name) == family


@pytest.mark.parametrize("name", ["m9", "a17", "", "m", "m1 turbo", "intel"])
def test_unknown_chip_lists_families(name):
    with pytest.raises(ValueError, match="m1, m2, m3, m4, m5"):
        normalize_chip(name)
    with pytest.raises(ValueError, match="known families"):
        lint(one(relu2), chip=name)


def test_findings_follow_op_order():
    prog = one(lambda x: mb.relu(x=mb.inverse(x=mb.rsqrt(x=x, name="r0"), name="i0")), shape=(1, 64, 1, 50))
    found = [(f.rule, f.op or f.var) for f in lint(prog, chip="m4") if f.severity == "error"]
    out = prog.functions["main"].outputs[0].name
    assert found == [
        ("inner-dim-not-multiple-of-32", "x"),
        ("rsqrt-not-compiled", "r0"),
        ("inverse-not-compiled", "i0"),
        ("inner-dim-not-multiple-of-32", out),
    ]


def test_functions_selected_and_ordered():
    fn = mb.function(input_specs=[mb.TensorSpec(shape=S, dtype=FP16)], opset_version=IOS18)
    prog = Program()
    prog.add_function("main", fn(lambda x: relu2(mb.rsqrt(x=x))))
    prog.add_function("second", fn(lambda x: relu2(mb.inverse(x=x))))
    everything = [(f.function, f.rule) for f in lint(prog, chip="m4") if f.severity == "error"]
    assert everything == [("main", "rsqrt-not-compiled"), ("second", "inverse-not-compiled")]
    (only,) = [f for f in lint(prog, chip="m4", function="second") if f.severity == "error"]
    assert only.rule == "inverse-not-compiled" and "in function 'second'" in str(only)
    with pytest.raises(ValueError, match="main, second"):
        lint(prog, function="third")


def _snapshot(prog):
    ops = []
    for name, func in prog.functions.items():
        for op in lint_program._walk(func.operations):
            ins = {
                k: tuple(x.name for x in v) if isinstance(v, tuple) else v.name for k, v in op.inputs.items()
            }
            outs = [(v.name, tuple(v.shape), str(v.dtype)) for v in op.outputs]
            ops.append((name, op.op_type, op.name, ins, outs))
        ops.append((name, list(func.inputs), [v.name for v in func.outputs]))
    return str(prog), ops


def test_lint_does_not_modify_the_program():
    def body(a, b):
        h = mb.rsqrt(x=mb.add(x=a, y=np.full((1, 1, 1, 64), -np.inf, np.float16)))
        h = mb.matmul(x=h, y=b, transpose_y=True)
        return mb.gather(x=h, indices=np.arange(4, dtype=np.int32), axis=1), a

    prog = two(body)
    before = _snapshot(prog)
    for chip in (None, "m1", "m3", "m4"):
        assert lint(prog, chip=chip)
    assert _snapshot(prog) == before


# ---------------------------------------------------------------------------------------------
# The rule table itself
# ---------------------------------------------------------------------------------------------


def test_rule_table_is_well_formed():
    for rule_id, rule in RULES.items():
        assert rule.id == rule_id and re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", rule_id)
        assert rule.severity in SEVERITIES and rule.title and rule.source.strip()
        assert rule.chips is None or (rule.chips and set(rule.chips) <= set(CHIP_FAMILIES))
        assert re.fullmatch(r"docs/[\w-]+\.md#[a-z0-9-]+", rule.source), rule.source
        # Where each rule's source resolves (docs file + anchor, public URL): tests/mil/test_lint_sources.py


def test_finding_str_without_op():
    f = Finding("multiple-inputs", "warning", "two inputs", None, None, "ane-private-api.md §1.12", "main")
    assert str(f) == "warning multiple-inputs in function 'main': two inputs [ane-private-api.md §1.12]"
