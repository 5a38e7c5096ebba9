"""Benchmarks of the Neural Engine (or of its CPU emulation), compared with published figures.

    anekit bench peak --quick --out peak.json --plot charts/
    from anekit.bench import run
    records, path = run(["peak"], backend="reference", quick=True)

Each experiment is one module defining `EXPERIMENT` (a `core.Experiment`: name, title, `Config` with its
defaults and `Config.quick()`, `n_points`, `run(ctx, config) -> Result`, its chart, its published
figures); `EXPERIMENTS` below is the registry every other part reads. Every program is verified before
it is timed (see `core`); every run writes a JSON record (see `record`, validated by `schema`) that says
whether its numbers are engine measurements or CPU emulation.

Adding a benchmark: write its module (with `EXPERIMENT`) and its tests, and add the module's name to
`_MODULES`; then regenerate docs/benchmarks.md (`python -m anekit.bench.docs docs/benchmarks.md`).
"""

from __future__ import annotations

from importlib import import_module

from .core import Experiment

#: the experiment modules, in the order `all` runs them
_MODULES = ("peak", "chain", "conv_vs_matmul", "sram", "int8", "dispatch", "coreml", "power", "llm")

#: experiment name -> Experiment, in the order `all` runs them
EXPERIMENTS: dict[str, Experiment] = {
    e.name: e for e in (import_module(f".{m}", __name__).EXPERIMENT for m in _MODULES)
}


def select(name: str) -> list[str]:
    """The experiments `name` stands for: itself, or every one for "all" (ValueError if unknown)."""
    if name == "all":
        return list(EXPERIMENTS)
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)} or all")
    return [name]


def run(names, **kwargs):
    """Run experiments by name (see `runner.run` for the options)."""
    from .runner import run as _run

    return _run(list(names), **kwargs)


__all__ = ["EXPERIMENTS", "Experiment", "run", "select"]
