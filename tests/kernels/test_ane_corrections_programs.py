"""Issue 8 §4: every program anekit generates for the engine (the kernels, the benchmark programs,
doctor's smoke test, the training step's kernels) bakes its constants so that M1/M2 can run it:
no fp32 constant followed by `cast` (those engines cannot run `cast`, ane-private-api.md §1.8),
and no op named like a function input (MIL binds values by variable name, mil-text.md §1.1).
And fp16 tables change no result under the engine's numerics: they hold exactly what the
fp32 const + cast form held after its cast."""

from __future__ import annotations

import numpy as np
import pytest

from anekit.backends.ane.doctor import conv1x1_program
from anekit.backends.reference import compile as ref_compile
from anekit.bench import programs as bench
from anekit.kernels import attention_backward, attention_forward, ffn_backward, ffn_forward, rmsnorm_forward
from anekit.mil import types
from anekit.model import PRESETS, ModelConfig, preset
from anekit.train.step import ModelRunner

PADDED = ModelConfig(
    "pad", dim=128, hidden_dim=128, n_layers=1, n_heads=16, n_kv_heads=4, vocab_size=64, seq_len=32
)
KERNELS = (attention_forward, attention_backward, ffn_forward, ffn_backward)


def generated_programs():
    """(label, program) for each generator and each mode it has, at small sizes (the constants'
    types do not depend on the sizes)."""
    for name, cfg in PRESETS.items():
        for kernel in KERNELS:
            yield f"{kernel.__name__}[{name}]", kernel(cfg, n_seq=1).program
    for cfg, n_seq in ((preset("tiny"), 2), (PADDED, 3)):
        for kernel in KERNELS:
            yield f"{kernel.__name__}[{cfg.name} x{n_seq}]", kernel(cfg, n_seq=n_seq).program
    yield "rmsnorm_forward", rmsnorm_forward(64, 32).program
    for label, kwargs in (
        ("fp16", {}), ("int8 weights", {"weights": "int8"}), ("w8a8", {"w8a8": True}),
        ("2-d spatial", {"spatial2d": True}), ("checked rows", {"check_rows": 8}),
    ):  # fmt: skip
        yield f"bench conv_chain {label}", bench.conv_chain(64, 32, 3, **kwargs).program
    yield "bench matmul_const", bench.matmul_const(64, 32).program
    yield "bench matmul_dynamic", bench.matmul_dynamic(64, 32).program
    yield "doctor conv1x1", conv1x1_program()
    with ModelRunner(preset("tiny"), 2, backend="reference") as runner:  # what `anekit train` compiles
        for name, spec in runner.specs.items():
            yield f"training step {name}", spec.program


PROGRAMS = list(generated_programs())


def fp32_const_casts(program) -> list[str]:
    """Every `cast` whose input is an fp32 `const` (checked here, not with anekit's own helpers)."""
    found = []
    for fn in program.functions.values():
        producers = {v.name: op for op in fn.operations for v in op.outputs}
        for op in fn.operations:
            if op.op_type != "cast":
                continue
            src = producers.get(op.inputs["x"].name)
            if (
                src is not None
                and src.op_type == "const"
                and types.builtin_to_string(src.outputs[0].dtype) == "fp32"
            ):
                found.append(f"{src.name} -> {op.name}")
    return found


def input_names_reused(program) -> list[str]:
    found = []
    for fn in program.functions.values():
        for op in fn.operations:
            for name in {op.name, *(v.name for v in op.outputs)}:
                if name in fn.inputs:
                    found.append(f"{op.op_type} {name!r}")
    return found


def test_the_checks_see_what_they_look_for():
    old = attention_forward(preset("tiny"), const_precision="fp32").program  # the former default
    assert len(fp32_const_casts(old)) == 4  # cos/sin tables for q and k

    from anekit.mil import ct, mb

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 4, 1, 32), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def clash(x):
        return mb.relu(x=mb.add(x=x, y=np.float16(1), name="x_plus"), name="x")

    assert input_names_reused(clash) == ["relu 'x'"]


def test_the_walk_covers_every_generator():
    labels = " ".join(label for label, _ in PROGRAMS)
    for what in (*(k.__name__ for k in KERNELS), "rmsnorm_forward", "conv_chain", "matmul_const",
                 "matmul_dynamic", "doctor", "training step"):  # fmt: skip
        assert what in labels


@pytest.mark.parametrize("label,program", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_no_fp32_constant_is_cast_and_no_op_takes_an_input_name(label, program):
    assert fp32_const_casts(program) == [], label
    assert input_names_reused(program) == [], label


@pytest.mark.parametrize("kernel", [attention_forward, attention_backward])
def test_fp16_tables_compute_the_same_bits_as_the_fp32_cast_form_under_engine_numerics(kernel):
    cfg = ModelConfig(
        "gqa", dim=64, hidden_dim=96, n_layers=1, n_heads=8, n_kv_heads=2, vocab_size=64, seq_len=32
    )
    new, old = kernel(cfg, n_seq=2), kernel(cfg, n_seq=2, const_precision="fp32")
    x = (np.random.default_rng(0).standard_normal(new.input_layout.shape) * 0.5).astype(np.float16)
    a = ref_compile(new.program, numerics="ane")(x=x)["out"]
    b = ref_compile(old.program, numerics="ane")(x=x)["out"]
    assert a.dtype == np.float16 and np.isfinite(a).all()
    np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


def test_the_training_step_is_bit_identical_to_the_fp32_cast_form():
    """The step `anekit train` runs (reference backend, engine numerics): loss and every gradient
    the same bits with the default (fp16) tables as with the former fp32 const + cast tables."""
    cfg = preset("tiny")
    rng = np.random.default_rng(0)
    params = {k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in cfg.param_shapes().items()}
    tok = rng.integers(0, cfg.vocab_size, (2, cfg.seq_len))
    tgt = rng.integers(0, cfg.vocab_size, (2, cfg.seq_len))
    results = []
    for precision in (None, "fp32"):
        with ModelRunner(cfg, 2, backend="reference", const_precision=precision) as runner:
            runner.set_params(params)
            results.append(runner.step(tok, tgt))
    new, old = results
    assert new.loss == old.loss
    for k in old.grads:
        np.testing.assert_array_equal(new.grads[k], old.grads[k], err_msg=k)
