"""The published figures each experiment is shown beside (the rows live in `anekit.perf.published`).

A record lists, per experiment, the published numbers that measure the same thing (any chip), and a
point carries the published value for its exact config on the chosen chip when one exists. Statements
the sources make without a number table (e.g. "CoreML adds 2-4x on small ops") are listed as text.
"""

from __future__ import annotations

from functools import lru_cache

API = "ane-private-api.md"
LAND = "landscape.md"

#: experiment -> datasets of anekit.perf.published it is compared with
DATASETS = {
    "peak": ("chain", "peak"),
    "chain": ("chain",),
    "conv-vs-matmul": (),
    "sram": ("sram",),
    "int8": ("int8",),
    "dispatch": ("single-conv",),
    "coreml": (),
    "power": (),
}

#: experiment -> published statements (text, source)
STATEMENTS = {
    "peak": [
        ("M4 true FP16 peak ~19 TFLOPS; chain 16-64 ops in one program to approach it", f"{API} §4.1"),
        ("M3 Pro: 9.98 TFLOPS at spatial 64, 16.77 at spatial 2048 (128x 512ch)", f"{API} §4.1"),
    ],
    "chain": [
        (
            "a single op reaches ~30 % of peak (wastes up to ~70 %); chain 16-64 ops per program",
            f"{API} §4.1; {LAND} §8",
        )
    ],
    "conv-vs-matmul": [
        ("a 1x1 conv is ~3x faster than the same matmul", f"{API} §4.2 (blog)"),
        ("matmul 2048x2048: 5.7 TFLOPS; 4096x4096: 4.0 TFLOPS (M4)", f"{API} §4.2 (blog)"),
        ("256x256 matmul: 0.101 ms, ~0.095 ms of it dispatch (M4)", f"{API} §4.2 (blog)"),
    ],
    "sram": [
        ("24 MB working set fits, 96 MB spills (-30 %): ~32 MB SRAM, gradual (M4)", f"{API} §4.3 (blog)")
    ],
    "int8": [
        (
            "W8A8 (quantize/dequantize between layers) 1.88x over FP16; int8 weights alone save only "
            "bandwidth",
            f"{API} §4.4; mil-text.md §3.12",
        ),
        ("Core ML (Anemll): 17.99 TFLOPS FP16 vs 33.86 TOPS W8A8 on M5", f"{API} §4.4"),
    ],
    "dispatch": [
        ("~0.095 ms of XPC + IOKit per evaluation (M4)", f"{API} §4.2 (blog)"),
        ("eval avg 0.06-0.08 ms for a 256x256 conv S=64, no QoS effect (M5)", f"{API} §4.7"),
        ("~0.2 ms per production-size kernel, any eval path (fork)", f"{API} §1.10"),
    ],
    "coreml": [
        ("Core ML adds 2-4x overhead on small ops; negligible on large matmuls", f"{API} §4.6 (blog, HN)")
    ],
    "power": [("2.8 W at 19 TFLOPS: 6.6 TFLOPS/W; 0 mW when idle (M4)", f"{API} §4.5 (blog)")],
}


@lru_cache(maxsize=1)
def _rows():
    from ..perf.published import published_rows

    return tuple(published_rows())


def published_figures(experiment: str) -> list[dict]:
    """The published numbers and statements an experiment is compared with."""
    out = []
    for r in _rows():
        if r.dataset in DATASETS.get(experiment, ()):
            out.append(
                {
                    "chip": r.chip,
                    "label": r.label,
                    "value": r.value,
                    "unit": r.unit,
                    "source": r.source,
                    "note": r.flag,
                }
            )
    for text, source in STATEMENTS.get(experiment, []):
        out.append({"chip": None, "label": text, "value": None, "unit": None, "source": source, "note": ""})
    return out


def published_for(experiment: str, chip: str, **config) -> dict | None:
    """The published value measured on `chip` for exactly this config (channels, spatial, depth...)."""
    for r in _rows():
        if r.dataset not in DATASETS.get(experiment, ()) or r.chip != chip:
            continue
        if all(r.config.get(k) == v for k, v in config.items()):
            return {"value": r.value, "unit": r.unit, "label": r.label, "source": r.source}
    return None
