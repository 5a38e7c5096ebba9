"""The cost model's behaviour: its shape (depth, SRAM, int8, matmul), the chip table, estimates."""

from __future__ import annotations

import numpy as np
import pytest

from anekit.mil import ct, mb, types
from anekit.perf import (
    CHIPS,
    UncalibratedChip,
    chip_id,
    count_ops,
    default_params,
    estimate,
    get_chip,
    predict,
)
from anekit.perf import workloads as wl
from anekit.perf.model import MB, sram_factor


def test_chip_ids_accept_common_spellings():
    assert chip_id("M4 Max") == chip_id("Apple M4 Max") == chip_id("m4_max") == "m4-max"
    assert chip_id("m3") == "m3"
    with pytest.raises(ValueError, match="known"):
        chip_id("m9")


def test_every_published_chip_number_cites_its_source_and_unknowns_say_so():
    fields = (
        "ane_cores",
        "marketed_tops",
        "peak_fp16_tflops",
        "int8_tops",
        "sram_mb",
        "ane_bandwidth_gbs",
        "dispatch_floor_ms",
    )
    for chip in CHIPS.values():
        for f in fields:
            src = chip.source(f)
            if getattr(chip, f) is None:
                assert src.startswith("unknown"), (chip.id, f)
            else:
                assert ".md §" in src, (chip.id, f, src)
    # spot checks against the references
    assert get_chip("m4").sram_mb == 32 and get_chip("m4").dispatch_floor_ms == 0.095
    assert get_chip("m1-ultra").ane_cores == 32 and get_chip("m2").marketed_tops == 15.8
    assert get_chip("m2").peak_fp16_tflops is None and get_chip("m5-pro").ane_cores is None


def test_utilisation_grows_with_chain_depth():
    """A single op wastes most of the engine; 16-64 chained ops approach the marginal rate (§4.1)."""
    util = {d: predict(wl.conv_chain(512, 64, d), "m4").utilisation for d in (1, 4, 16, 64, 128)}
    assert util[1] < 0.1
    assert all(util[a] < util[b] for a, b in zip((1, 4, 16, 64), (4, 16, 64, 128)))
    assert util[64] > 0.4
    # at a larger spatial size the MAC array is kept busier: chained ops get close to peak
    assert predict(wl.conv_chain(512, 1024, 64), "m4").utilisation > 0.8


def test_single_large_op_wastes_most_of_the_engine():
    est = predict(wl.conv_chain(2048, 64, 1), "m4")
    assert est.utilisation < 0.3  # "a single op wastes up to ~70 %" (landscape.md §8)
    assert est.breakdown["load"] > est.breakdown["mac"]  # streaming its 8 MB weight dominates


def test_sram_penalty_is_gradual_beyond_the_cliff():
    g = default_params().globals
    sizes = [8, 24, 32, 40, 64, 96, 128]
    f = [sram_factor(s * MB, 32, g) for s in sizes]
    assert f[:3] == [1.0, 1.0, 1.0]
    assert all(a < b for a, b in zip(f[2:], f[3:]))
    assert f[3] < 1.05  # just past the cliff: barely slower (gradual, cache-like: §4.3)


def test_w8a8_faster_int8_weights_not():
    fp16 = predict(wl.conv_chain(512, 64, 64, io_bytes=2, spatial2d=True), "m4").time_ms
    w8 = predict(wl.conv_chain(512, 64, 64, io_bytes=2, spatial2d=True, weights="int8"), "m4").time_ms
    w8a8 = predict(
        wl.conv_chain(512, 64, 64, io_bytes=2, spatial2d=True, weights="int8", w8a8=True), "m4"
    ).time_ms
    assert 1.6 < fp16 / w8a8 < 2.2  # §4.4: 1.88x
    assert 0.95 < fp16 / w8 < 1.1  # weight-only int8 saves bandwidth only (mil-text.md §3.12)


def test_matmul_slower_than_conv_for_the_same_flops():
    conv = predict(wl.conv_chain(2048, 2048, 1, io_bytes=2), "m4")
    mm = predict(wl.square_matmul(2048), "m4")
    assert conv.flops == mm.flops
    assert 2.0 < mm.time_ms / conv.time_ms < 4.0  # blog: conv ~3x faster (§4.2)


def test_estimate_a_program_and_uncalibrated_chips():
    w = np.zeros((256, 256, 1, 1), np.float16)

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, 256, 1, 64), dtype=types.fp16)], opset_version=ct.target.iOS18
    )
    def prog(x):
        for _ in range(8):
            x = mb.conv(x=x, weight=w)
        return x

    est = estimate(prog, chip="m4")
    assert est.flops == 2 * 256 * 256 * 64 * 8
    assert est.time_ms == pytest.approx(sum(est.breakdown.values()))
    assert est.breakdown["dispatch"] == pytest.approx(default_params().chip("m4").dispatch_ms)
    assert est.weight_bytes == 8 * 256 * 256 * 2 and est.n_ops == 8
    assert 0 < est.utilisation < 1 and est.tflops > 0
    assert est.to_json()["tflops"] == pytest.approx(est.tflops)
    # siblings of a calibrated chip are usable but say so; chips nobody measured are refused
    assert any("assumed" in n for n in estimate(prog, chip="m3").notes)
    with pytest.raises(UncalibratedChip, match="calibrated chips"):
        estimate(prog, chip="m2")


def test_sram_note_names_the_op_beyond_the_cliff():
    est = predict(wl.conv_chain(8192, 32, 1), "m4-max")
    assert est.breakdown["sram"] > 0
    assert any("SRAM" in n for n in est.notes)


def test_a_slice_costs_the_bytes_it_writes_not_its_whole_input():
    """A data-movement op costs what it writes (model.py's form): a small slice of a wide packed input
    (how the training kernels take their weights) costs its own output, like a reshape of that size."""

    def program(op):
        spec = [mb.TensorSpec(shape=(1, 64, 1, 4096), dtype=types.fp16)]

        @mb.program(input_specs=spec, opset_version=ct.target.iOS18)
        def prog(x):
            return op(x)

        return prog

    sliced = program(lambda x: mb.slice_by_size(x=x, begin=[0, 0, 0, 0], size=[1, 64, 1, 64]))
    small = [mb.TensorSpec(shape=(1, 64, 1, 64), dtype=types.fp16)]

    @mb.program(input_specs=small, opset_version=ct.target.iOS18)
    def reshaped(x):
        return mb.reshape(x=x, shape=[1, 1, 64, 64])

    g = default_params().globals
    move = predict(count_ops(sliced)).breakdown["move"]
    assert move == pytest.approx(64 * 64 * 2 / (g.move_gbs * 1e6))
    assert move == pytest.approx(predict(count_ops(reshaped)).breakdown["move"])
