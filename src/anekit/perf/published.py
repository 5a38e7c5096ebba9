"""Every published ANE measurement the cost model is calibrated on and the benchmarks are compared with.

One row per published number, with its config, unit, source (a § of ane-private-api.md or landscape.md)
and, where the data contradict themselves, a flag saying why the row is shown but not fitted. Configs
the source does not state are marked "assumed" in the row's note.

Datasets:
- `chain`: chained 1x1 convs against depth and width, TFLOPS (the §4.1 table).
- `peak`: the best chained-conv throughput per chip, TFLOPS (§4.1 "best per chip").
- `single-conv`: one 1x1 conv, ms per evaluation (§4.2), and the tiny-conv evaluations of §4.7.
- `sram`: one 1x1 conv with a growing weight, TFLOPS (§4.3), and the blog's square matmuls (§4.2, §4.3,
  landscape.md §8).
- `int8`: FP16 against W8A8 chains on 64x64 spatial (§4.4).
- `training`: ANE milliseconds per step of the static Stories110M pipeline (§4.8; kernels §5.2), which
  time the forward kernels only (see `_training`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from . import workloads as wl
from .count import ProgramCost

API = "ane-private-api.md"
LAND = "landscape.md"


@dataclass(frozen=True)
class Row:
    """One published number and how to reproduce its program."""

    dataset: str
    chip: str
    label: str
    value: float
    unit: str  #: "TFLOPS", "TOPS" or "ms"
    source: str
    kernels: tuple[tuple[ProgramCost, int], ...]  #: (program, dispatches) whose times add up to the value
    flops: float = 0.0  #: the source's own FLOP count (to turn a time into TFLOPS as it did)
    setup: str | None = None  #: measurement setup with its own dispatch cost, if not the chip's default
    config: dict = field(default_factory=dict)
    fit: bool = True  #: used to fit the parameters
    flag: str = ""  #: why the row is not fitted (self-inconsistent data), or a caveat
    value_range: tuple[float, float] | None = None  #: when the source gives a range; value = midpoint

    @property
    def is_time(self) -> bool:
        return self.unit == "ms"


def _chain_rows(dataset, chip, col, configs, values, source, setup=None, spatial=64, note="") -> list[Row]:
    """One row per (channels, depth) config of a column of chained 1x1 convs (inmem_peak, §4.1)."""
    rows = []
    for (c, d), v in zip(configs, values):
        if v is None:
            continue
        cfg = {"channels": c, "spatial": spatial, "depth": d, "io": "fp32"}
        rows.append(
            Row(
                dataset,
                chip,
                f"{d}x conv {c}ch sp{spatial} [{col}]",
                v,
                "TFLOPS",
                source,
                ((wl.conv_chain(c, spatial, d), 1),),
                flops=2.0 * c * c * spatial * d,
                setup=setup,
                config=cfg,
                flag=note,
            )
        )
    return rows


def _flag_non_monotone(rows: list[Row], margin: float = 0.9) -> list[Row]:
    """Flag rows that a program with more FLOPs, in the same column, beat clearly (< `margin` of the time).

    A benchmark whose time falls while its work grows measures something other than the work (a
    variable floor, a different code path); such rows are shown but not fitted.
    """
    out = []
    for r in rows:
        t = r.flops / r.value if not r.is_time else r.value
        beaten = [
            o
            for o in rows
            if o is not r
            and o.flops > r.flops
            and (o.flops / o.value if not o.is_time else o.value) < margin * t
        ]
        if beaten:
            why = (
                f"self-inconsistent: the larger {beaten[0].label.split(' [')[0]} ran in less time "
                f"than this one"
            )
            r = replace(r, fit=False, flag=why)
        out.append(r)
    return out


_PEAK_CFG = [
    (512, 32),
    (512, 48),
    (512, 64),
    (512, 96),
    (512, 128),
    (256, 64),
    (256, 128),
    (256, 256),
    (384, 64),
    (384, 128),
]


def _chain() -> list[Row]:
    """The §4.1 depth table: one column per machine."""
    src = f"{API} §4.1"
    rows = _chain_rows(
        "chain",
        "m4",
        "M4 Mac mini, issue #3",
        _PEAK_CFG,
        [6.73, 8.46, 9.63, 10.67, 11.74, 4.34, 7.03, 9.75, 7.43, 10.50],
        f"{src} (issue #3)",
    )
    rows += _flag_non_monotone(
        _chain_rows(
            "chain",
            "m4-max",
            "M4 Max, dev-erik fork",
            _PEAK_CFG,
            [2.63, 6.15, 8.80, 9.89, 11.14, 1.47, 2.37, 6.11, 2.82, 6.82],
            f"{src} (dev-erik fork)",
        ),
    )
    rows += _chain_rows(
        "chain",
        "m3-ultra",
        "M3 Ultra, issue #42",
        _PEAK_CFG[:4],
        [3.82, 5.11, 6.86, 8.47],
        f"{src} (issue #42)",
    )
    rows += _chain_rows(
        "chain",
        "m4",
        "M4, PR #23, macOS 26.3",
        [(512, 64), (512, 96), (512, 128), (256, 256)],
        [5.43, 7.50, 7.30, 5.65],
        f"{src} (PR #23)",
        setup="m4/pr23-macos26",
    )
    return rows


def _peak() -> list[Row]:
    """The best throughput published per chip (§4.1, "Best per chip")."""
    src = f"{API} §4.1"
    best = f"{src}, best per chip"
    rows: list[Row] = []
    assumed = "config assumed: the 128x 512ch sp64 row of inmem_peak (the source gives only the best value)"
    rows += _chain_rows("peak", "m3-pro", "M3 Pro, best", [(512, 128)], [9.98], best, note=assumed)
    rows += _chain_rows("peak", "m3-pro", "M3 Pro, best", [(512, 128)], [16.77], best, spatial=2048)
    rows += _chain_rows("peak", "m4-pro", "M4 Pro, best", [(512, 128)], [12.57], best, note=assumed)
    rows += _chain_rows("peak", "m4-max", "M4 Max, report", [(512, 128)], [10.93], best, note=assumed)
    rows += _chain_rows("peak", "m5", "M5, best", [(512, 128)], [12.17], best, note=assumed)
    rows += _chain_rows("peak", "m5", "M5, best (2nd report)", [(512, 128)], [12.44], best, note=assumed)
    rows += _chain_rows("peak", "m3-ultra", "M3 Ultra, PR #28", [(512, 128)], [8.08], best, note=assumed)
    return rows


POW2_COLLAPSE = (
    "self-inconsistent: a 4096-ch conv collapses on M4 Max (sram_probe, §4.3) while 4608-6144 ch "
    "recover, so its time is not a function of work or working set (my reading: a power-of-two "
    "layout effect); shown, not fitted"
)


def _single_rows(chip, col, chans, values, source, setup=None, spatial=64) -> list[Row]:
    rows = []
    for c, v in zip(chans, values):
        odd = c == 4096
        rows.append(
            Row(
                "single-conv",
                chip,
                f"1x conv {c}ch sp{spatial} [{col}]",
                v,
                "ms",
                source,
                ((wl.conv_chain(c, spatial, 1), 1),),
                flops=2.0 * c * c * spatial,
                setup=setup,
                config={"channels": c, "spatial": spatial, "depth": 1, "io": "fp32", "series": col},
                fit=not odd,
                flag=POW2_COLLAPSE if odd else "",
            )
        )
    return rows


def _single_conv() -> list[Row]:
    src = f"{API} §4.2"
    chans = [256, 512, 1024, 2048, 3072, 4096]
    rows = _single_rows("m4", "M4 Mac mini", chans, [0.106, 0.084, 0.116, 0.237, 0.421, 1.012], src)
    rows += _flag_non_monotone(
        _single_rows(
            "m4-max",
            "M4 Max, old mlpackage path",
            chans,
            [0.319, 0.357, 0.457, 0.254, 0.389, 1.148],
            f"{src} (old _ANEClient/mlpackage version)",
            setup="m4-max/aneclient",
        ),
    )
    rows += _single_rows("m3-ultra", "M3 Ultra", [512], [0.189], src)
    rows += _single_rows("m5", "M5, QoS sweep", [256], [0.07], f"{API} §4.7 (eval avg10, median over QoS)")
    rows += _single_rows(
        "m4", "M4, PR #23, macOS 26.3", [128], [0.189], f"{API} §4.7 (PR #23)", setup="m4/pr23-macos26"
    )
    blog = f"{API} §4.2 (blog); {LAND} §8"
    rows.append(
        Row(
            "single-conv",
            "m4",
            "matmul 256x256 (blog)",
            0.101,
            "ms",
            blog,
            ((wl.square_matmul(256), 1),),
            flops=2.0 * 256**3,
            config={"matmul": 256},
        )
    )
    return rows


def _sram() -> list[Row]:
    src = f"{API} §4.3"
    probe = {2560: 3.53, 3072: 3.60, 3584: 3.97, 4096: 1.89, 4608: 4.83, 5120: 5.09, 6144: 5.73, 8192: 1.02}
    bench = {2048: 2.47, 3072: 3.05, 4096: 1.92, 5120: 4.38, 6144: 5.54, 8192: 1.02}
    anomaly = POW2_COLLAPSE
    rows = []
    for tool, table in (("sram_probe", probe), ("sram_bench", bench)):
        for c, v in table.items():
            s = 32 if c == 8192 else 64
            odd = c == 4096
            rows.append(
                Row(
                    "sram",
                    "m4-max",
                    f"1x conv {c}ch sp{s} ({c * c * 2 / 2**20:.1f} MB) [{tool}]",
                    v,
                    "TFLOPS",
                    f"{src} ({tool}, M4 Max, dev-erik fork)",
                    ((wl.conv_chain(c, s, 1), 1),),
                    flops=2.0 * c * c * s,
                    config={"channels": c, "spatial": s, "depth": 1, "io": "fp32"},
                    fit=not odd,
                    flag=anomaly if odd else "",
                )
            )
    blog = f"{API} §4.2, §4.3 (blog); {LAND} §8"
    for n, v in ((2048, 5.7), (4096, 4.0)):
        rows.append(
            Row(
                "sram",
                "m4",
                f"matmul {n}x{n} ({3 * n * n * 2 / 2**20:.0f} MB, blog)",
                v,
                "TFLOPS",
                blog,
                ((wl.square_matmul(n), 1),),
                flops=2.0 * n**3,
                config={"matmul": n},
            )
        )
    return rows


def _int8() -> list[Row]:
    src = f"{API} §4.4"
    rows = []
    for depth, fp16_ms, int8_ms in ((128, 14.8, 7.8), (64, 7.5, 4.0)):
        flops = 2.0 * 512 * 512 * 64 * 64 * depth
        for kind, v in (("FP16", fp16_ms), ("W8A8", int8_ms)):
            q = kind == "W8A8"
            cost = wl.conv_chain(
                512, 64, depth, io_bytes=2, spatial2d=True, weights="int8" if q else "fp16", w8a8=q
            )
            rows.append(
                Row(
                    "int8",
                    "m4",
                    f"{kind} {depth}x conv 512ch 64x64 [M4, README]",
                    v,
                    "ms",
                    f"{src} (README)",
                    ((cost, 1),),
                    flops=flops,
                    config={"channels": 512, "spatial": "64x64", "depth": depth, "mode": kind},
                )
            )
    assumed = "config assumed: ane_int8_bench's first config, 128x conv 512ch 64x64"
    for chip, col, fp16, int8, source in (
        ("m5-max", "M5 Max, PR #50", 19.27, 35.61, f"{src} (PR #50)"),
        ("m5", "M5, Anemll gist, private API", 18.22, 34.22, f"{src} (Anemll gist)"),
    ):
        flops = 2.0 * 512 * 512 * 64 * 64 * 128
        for kind, v in (("FP16", fp16), ("W8A8", int8)):
            q = kind == "W8A8"
            cost = wl.conv_chain(
                512, 64, 128, io_bytes=2, spatial2d=True, weights="int8" if q else "fp16", w8a8=q
            )
            rows.append(
                Row(
                    "int8",
                    chip,
                    f"{kind} 128x conv 512ch 64x64 [{col}]",
                    v,
                    "TFLOPS" if kind == "FP16" else "TOPS",
                    source,
                    ((cost, 1),),
                    flops=flops,
                    config={"channels": 512, "spatial": "64x64", "depth": 128, "mode": kind},
                    flag=assumed,
                )
            )
    return rows


def _training() -> list[Row]:
    # The ANE-ms column is the JSON `t_ane`, which train_large.m accumulates around the two *forward*
    # evaluations of each layer only (maderix/ANE@d91c984 training/train_large.m, the `t_ane +=` lines
    # after `ane_eval(fwdAttn)` and `ane_eval(fwdFFN)`; the backward evaluations are not timed). So a
    # row is 12 x (fwdAttn + fwdFFN): 24 dispatches, not the step's 72.
    src = f"{API} §4.8 (static train_large, ANE ms column), kernels §5.2; t_ane: training/train_large.m"
    m = wl.STORIES110M
    kernels = tuple((cost, m.layers) for _name, cost in wl.static_forward_kernels(m))
    flops = sum(cost.flops * n for cost, n in kernels)
    data = [
        ("m1-pro", (32, 35)),
        ("m1-max", (35, 45)),
        ("m3-ultra", (10, 10)),
        ("m4", (9.6, 9.6)),
        ("m4-pro", (8.9, 8.9)),
        ("m4-max", (10.2, 10.2)),
        ("m5", (9.1, 9.8)),
    ]
    rows = []
    for chip, (lo, hi) in data:
        rng = (lo, hi) if hi > lo else None
        rows.append(
            Row(
                "training",
                chip,
                f"Stories110M static, forward ANE ms/step [{chip}]",
                (lo + hi) / 2,
                "ms",
                src,
                kernels,
                flops=flops,
                config={"model": "stories110m", "seq": 256, "dispatches": 2 * m.layers},
                value_range=rng,
                flag="published as '~10'" if chip == "m3-ultra" else "",
            )
        )
    return rows


def published_rows() -> list[Row]:
    """All published rows, in dataset order."""
    return _chain() + _peak() + _single_conv() + _sram() + _int8() + _training()


DATASETS = ("chain", "peak", "single-conv", "sram", "int8", "training")
