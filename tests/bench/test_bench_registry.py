"""The experiment registry is the one list of benchmarks: the CLI's help and `all`, the runner, the
charts, the published figures and the record schema read it, so an experiment added to it is runnable,
recorded, valid and charted with no other edit."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from anekit.bench import EXPERIMENTS, Experiment, schema, select
from anekit.bench.core import Context, Result, measure
from anekit.bench.plots import bars
from anekit.bench.published import published_figures
from anekit.cli import app

runner = CliRunner(env={"COLUMNS": "200"})


def test_every_experiment_is_complete():
    for name, exp in EXPERIMENTS.items():
        assert exp.name == name and exp.title
        full, quick = exp.config(), exp.config.quick()
        assert dataclasses.is_dataclass(full) and type(quick) is exp.config
        assert exp.n_points(quick) >= 1
        assert all(len(s) == 2 and s[0] and s[1] for s in exp.statements)


def test_select_and_the_schema_read_the_registry():
    assert select("all") == list(EXPERIMENTS)
    assert select("sram") == ["sram"]
    with pytest.raises(ValueError, match="unknown experiment 'nope'; choose one of peak, chain"):
        select("nope")
    enum = schema.record_schema()["$defs"]["record"]["properties"]["experiment"]["enum"]
    assert enum == list(EXPERIMENTS)


def test_cli_help_lists_the_registry():
    result = runner.invoke(app, ["bench", "--help"])
    assert result.exit_code == 0
    assert f"One of: {', '.join(EXPERIMENTS)}, or all." in " ".join(result.output.split())


@dataclasses.dataclass
class _ToyConfig:
    channels: int = 16
    iters: int = 3

    @classmethod
    def quick(cls) -> _ToyConfig:
        return cls(channels=8, iters=2)


def _toy_run(ctx: Context, cfg: _ToyConfig) -> Result:
    from anekit.bench import programs

    point = measure(ctx, programs.conv_chain(cfg.channels, 8, 1), warmup=0, iters=cfg.iters)
    return Result([point], {"channels": cfg.channels})


@pytest.fixture
def toy(monkeypatch):
    """A benchmark added the way a new module would add one: an `Experiment` in the registry."""
    exp = Experiment(
        "toy",
        "A toy benchmark",
        _ToyConfig,
        _toy_run,
        lambda cfg: 1,
        plot=lambda rec, out_dir: [bars(rec, out_dir / "toy.png")],
        datasets=("single-conv",),
        statements=(("toys are fast", "nowhere"),),
    )
    monkeypatch.setitem(EXPERIMENTS, "toy", exp)
    schema.record_schema.cache_clear()
    schema._record_validator.cache_clear()
    yield exp
    monkeypatch.delitem(EXPERIMENTS, "toy")
    schema.record_schema.cache_clear()
    schema._record_validator.cache_clear()


def test_a_registered_experiment_needs_no_other_edit(toy, tmp_path):
    out, plots = tmp_path / "toy.json", tmp_path / "plots"
    args = ["bench", "toy", "--quick", "--backend", "reference", "--out", str(out), "--plot", str(plots)]
    result = runner.invoke(app, args + ["--set", "channels=4"])
    assert result.exit_code == 0, result.output
    rec = json.loads(out.read_text())
    schema.validate(rec)
    assert rec["experiment"] == "toy" and rec["config"] == {"channels": 4, "iters": 2}
    assert rec["summary"] == {"channels": 4} and np.isfinite(rec["points"][0]["tflops"])
    assert rec["published"] == published_figures("toy")
    assert {"label": "toys are fast", "source": "nowhere"}.items() <= rec["published"][-1].items()
    assert [p.name for p in plots.iterdir()] == ["toy.png"]
    assert "A toy benchmark" in " ".join(result.output.split())
    assert select("all")[-1] == "toy"


def test_every_experiment_module_is_registered():
    """A module that defines an `EXPERIMENT` but is missing from the registry fails here."""
    import importlib
    import pkgutil

    import anekit.bench

    defined = set()
    for info in pkgutil.iter_modules(anekit.bench.__path__):
        exp = getattr(importlib.import_module(f"anekit.bench.{info.name}"), "EXPERIMENT", None)
        if isinstance(exp, Experiment):
            defined.add(exp.name)
    assert defined == set(EXPERIMENTS)
