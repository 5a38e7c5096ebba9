"""Benchmarks of the Neural Engine (or of its CPU emulation), compared with published figures.

    anekit bench peak --quick --out peak.json --plot charts/
    from anekit.bench import run
    records, path = run(["peak"], backend="reference", quick=True)

Each experiment is one module with a `Config` dataclass (defaults, and `Config.quick()`), `n_points`
and `run(ctx, config) -> Result`. Every program is verified before it is timed (see `core`); every run
writes a JSON record (see `record`, validated by `schema`) that says whether its numbers are engine
measurements or CPU emulation.
"""

from __future__ import annotations

from . import chain, conv_vs_matmul, coreml, dispatch, int8, peak, power, sram

#: experiment name -> module, in the order `all` runs them
EXPERIMENTS = {m.NAME: m for m in (peak, chain, conv_vs_matmul, sram, int8, dispatch, coreml, power)}


def run(names, **kwargs):
    """Run experiments by name (see `runner.run` for the options)."""
    from .runner import run as _run

    return _run(list(names), **kwargs)


__all__ = ["EXPERIMENTS", "run"]
