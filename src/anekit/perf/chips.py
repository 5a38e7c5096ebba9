"""The chip table: what is *published* about each M-series Neural Engine, with the source of each number.

This table holds facts only. A value nobody has published is `None` ("unknown"), never a guess; the
cost model's own, fitted parameters live apart from it (`anekit.perf.params`), so a reader can always
tell a measurement from a calibration. Citations point into `shared/reference/` beside the design
document: `API` = ane-private-api.md, `LAND` = landscape.md, followed by the section.

Conventions:
- `marketed_tops`: Apple's marketing figure as listed by the hollance device table (LAND §6). Up to
  M3 it counts FP16 operations; from M4 on it counts INT8 (the M4's 38 TOPS is twice its FP16 rate,
  API §5.4 last paragraph, LAND §8).
- `peak_fp16_tflops`: the best *measured* FP16 throughput published for the chip, with the config in
  `peak_config`; chained 1x1 convs unless said otherwise (API §4.1, §4.4).
- `ane_bandwidth_gbs`: bandwidth the ANE itself reached reading weights (anemll-bench `llama_lm_head`,
  LAND §4), not the SoC's DRAM specification (which the references do not list).
- `dispatch_floor_ms`: the published host-side cost of one evaluation of a tiny program.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..engine_limits import SRAM_MB

API = "shared/reference/ane-private-api.md"
LAND = "shared/reference/landscape.md"


@dataclass(frozen=True)
class Chip:
    """Published facts about one chip's Neural Engine. `None` = not published (unknown)."""

    id: str  #: "m4", "m4-max", ...
    name: str  #: "Apple M4 Max"
    family: str  #: "m4"
    ane_cores: int | None = None
    marketed_tops: float | None = None
    peak_fp16_tflops: float | None = None
    peak_config: str | None = None
    int8_tops: float | None = None  #: measured W8A8 throughput
    sram_mb: float | None = None
    ane_bandwidth_gbs: float | None = None
    dispatch_floor_ms: float | None = None
    notes: str = ""
    sources: dict[str, str] = field(default_factory=dict)  #: field name -> citation

    def source(self, name: str) -> str:
        """The citation for field `name`, or "unknown" when the value is not published."""
        if getattr(self, name) is None:
            return "unknown (not published in the references)"
        return self.sources.get(name, "")


_HOLLANCE = f"{LAND} §6 (hollance supported-devices table)"
_ANEMLL_BW = f"{LAND} §4 (anemll-bench llama_lm_head, Results.MD)"


def _chip(cid: str, name: str, cores: int | None, tops: float | None, **kw) -> Chip:
    sources = dict(kw.pop("sources", {}))
    if cores is not None:
        sources.setdefault("ane_cores", _HOLLANCE)
    if tops is not None:
        sources.setdefault("marketed_tops", _HOLLANCE)
    if kw.get("ane_bandwidth_gbs") is not None:
        sources.setdefault("ane_bandwidth_gbs", _ANEMLL_BW)
    return Chip(cid, name, cid.split("-")[0], cores, tops, sources=sources, **kw)


CHIPS: dict[str, Chip] = {
    c.id: c
    for c in [
        _chip(
            "m1",
            "Apple M1",
            16,
            11.0,
            ane_bandwidth_gbs=60.87,
            dispatch_floor_ms=0.23,
            notes="ane-guide fits 3.25 TFLOP/s and a 0.23 ms floor on M1 (model parameters, not a peak).",
            sources={"dispatch_floor_ms": f"{LAND} §7e, §11 (ane-guide cost model, M1)"},
        ),
        _chip(
            "m1-pro",
            "Apple M1 Pro",
            16,
            11.0,
            notes="Standalone peak benchmarks FAIL (MIL/blob compatibility); only training step times exist.",
            sources={"notes": f"{API} §4.1, §4.8"},
        ),
        _chip(
            "m1-max",
            "Apple M1 Max",
            16,
            11.0,
            notes="Standalone peak benchmarks FAIL; only training step times exist.",
            sources={"notes": f"{API} §4.1, §4.8"},
        ),
        _chip("m1-ultra", "Apple M1 Ultra", 32, 22.0),
        _chip("m2", "Apple M2", 16, 15.8),
        _chip("m2-pro", "Apple M2 Pro", 16, 15.8),
        _chip("m2-max", "Apple M2 Max", 16, 15.8),
        _chip("m2-ultra", "Apple M2 Ultra", 32, 31.6),
        _chip("m3", "Apple M3", 16, 15.8),
        _chip(
            "m3-pro",
            "Apple M3 Pro",
            16,
            15.8,
            peak_fp16_tflops=16.77,
            peak_config="128 chained 1x1 convs, 512 ch, spatial 2048 (9.98 at spatial 64; 15.04 over 5 s)",
            notes="Only C=512 compiles in the maderix benchmarks.",
            sources={"peak_fp16_tflops": f"{API} §4.1 (best per chip)", "notes": f"{API} §4.1"},
        ),
        _chip("m3-max", "Apple M3 Max", 16, 15.8, ane_bandwidth_gbs=120.22),
        _chip(
            "m3-ultra",
            "Apple M3 Ultra",
            32,
            36.0,
            peak_fp16_tflops=8.08,
            peak_config="chained 1x1 convs, 512 ch, spatial 64 (PR #28)",
            notes="Only C=512 compiles; one program runs on one die's engine (my reading of rustane PR #12).",
            sources={"peak_fp16_tflops": f"{API} §4.1 (best per chip)", "notes": f"{API} §4.1, §1.11"},
        ),
        _chip(
            "m4",
            "Apple M4",
            16,
            38.0,
            peak_fp16_tflops=18.6,
            peak_config="128 chained 1x1 convs, 512 ch, 64x64 spatial (ane_int8_bench FP16); blog: ~19",
            int8_tops=35.1,
            sram_mb=SRAM_MB,
            dispatch_floor_ms=0.095,
            sources={
                "peak_fp16_tflops": f"{API} §4.4; {LAND} §8",
                "int8_tops": f"{API} §4.4",
                "sram_mb": f"{API} §4.3 (blog: 24 MB fits, 96 MB spills)",
                "dispatch_floor_ms": f"{API} §4.2 (blog: ~0.095 ms XPC+IOKit of a 0.101 ms matmul)",
            },
        ),
        _chip(
            "m4-pro",
            "Apple M4 Pro",
            16,
            38.0,
            peak_fp16_tflops=12.57,
            peak_config="chained 1x1 convs, spatial 64 (benchmark report)",
            ane_bandwidth_gbs=126.36,
            sources={"peak_fp16_tflops": f"{API} §4.1 (best per chip)"},
        ),
        _chip(
            "m4-max",
            "Apple M4 Max",
            16,
            38.0,
            peak_fp16_tflops=11.14,
            peak_config="128 chained 1x1 convs, 512 ch, spatial 64 (dev-erik fork; report: 10.93)",
            sram_mb=SRAM_MB,
            ane_bandwidth_gbs=118.88,
            sources={
                "peak_fp16_tflops": f"{API} §4.1",
                "sram_mb": f"{API} §4.3 (sram_probe: first spill ~32 MB); {LAND} §8",
            },
        ),
        _chip(
            "m5",
            "Apple M5",
            16,
            None,
            peak_fp16_tflops=18.22,
            peak_config="Anemll gist, private API, spatial-heavy conv stack (12.44 chained at spatial 64)",
            int8_tops=34.22,
            ane_bandwidth_gbs=70.21,
            dispatch_floor_ms=0.07,
            notes="hollance: a 'faster' 16-core ANE; no TOPS figure in the stored table.",
            sources={
                "ane_cores": f"{LAND} §6 (text under the table)",
                "peak_fp16_tflops": f"{API} §4.4 (Anemll gist), §4.1",
                "int8_tops": f"{API} §4.4 (Anemll gist)",
                "dispatch_floor_ms": f"{API} §4.7 (256x256 conv S=64, eval avg10 0.06-0.08 ms)",
            },
        ),
        _chip(
            "m5-pro",
            "Apple M5 Pro",
            None,
            None,
            notes="'Fusion Architecture'; nothing measured.",
            sources={"notes": f"{LAND} §6"},
        ),
        _chip(
            "m5-max",
            "Apple M5 Max",
            None,
            None,
            peak_fp16_tflops=19.27,
            peak_config="ane_int8_bench FP16 (PR #50; config assumed the default 128x 512 ch 64x64)",
            int8_tops=35.61,
            sources={"peak_fp16_tflops": f"{API} §4.1, §4.4 (PR #50)", "int8_tops": f"{API} §4.4 (PR #50)"},
        ),
    ]
}

_CHIP_RE = re.compile(r"^(?:apple\s+)?m(\d)(?:[\s_-]*(pro|max|ultra))?$")


def chip_id(name: str) -> str:
    """Normalise "M4 Max", "Apple M4 Max", "m4_max" or "m4-max" to the table id "m4-max"."""
    m = _CHIP_RE.match(name.strip().lower())
    if not m:
        raise ValueError(f"unknown chip {name!r}; known: {', '.join(CHIPS)}")
    cid = f"m{m.group(1)}" + (f"-{m.group(2)}" if m.group(2) else "")
    if cid not in CHIPS:
        raise ValueError(f"unknown chip {name!r}; known: {', '.join(CHIPS)}")
    return cid


def get_chip(name: str) -> Chip:
    """The table entry for `name` (any spelling `chip_id` accepts)."""
    return CHIPS[chip_id(name)]
