"""The published figures each experiment is shown beside (the rows live in `anekit.perf.published`;
which datasets and statements belong to an experiment is said by its `Experiment` in the registry).

A record lists, per experiment, the published numbers that measure the same thing (any chip), and a
point carries the published value for its exact config on the chosen chip when one exists. Statements
the sources make without a number table (e.g. "CoreML adds 2-4x on small ops") are listed as text.
"""

from __future__ import annotations

from functools import lru_cache

#: the sources experiments cite in their published statements
API = "ane-private-api.md"
LAND = "landscape.md"


@lru_cache(maxsize=1)
def _rows():
    from ..perf.published import published_rows

    return tuple(published_rows())


def _datasets_statements(experiment: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The experiment's published datasets and statements, from the registry (none if unregistered)."""
    from . import EXPERIMENTS

    exp = EXPERIMENTS.get(experiment)
    return (exp.datasets, exp.statements) if exp else ((), ())


def published_figures(experiment: str) -> list[dict]:
    """The published numbers and statements an experiment is compared with."""
    out = []
    datasets, statements = _datasets_statements(experiment)
    for r in _rows():
        if r.dataset in datasets:
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
    for text, source in statements:
        out.append({"chip": None, "label": text, "value": None, "unit": None, "source": source, "note": ""})
    return out


def published_for(experiment: str, chip: str, **config) -> dict | None:
    """The published value measured on `chip` for exactly this config (channels, spatial, depth...)."""
    datasets, _ = _datasets_statements(experiment)
    for r in _rows():
        if r.dataset not in datasets or r.chip != chip:
            continue
        if all(r.config.get(k) == v for k, v in config.items()):
            return {"value": r.value, "unit": r.unit, "label": r.label, "source": r.source}
    return None
