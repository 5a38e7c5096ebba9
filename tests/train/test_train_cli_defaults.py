"""`anekit train` writes no default of its own: each option's default is `TrainOptions`', and the
preset list in its help comes from the preset registry."""

from __future__ import annotations

import dataclasses
import inspect

from anekit.cli.train import evaluate, train
from anekit.model import PRESETS
from anekit.train.options import NUMERICS, TrainOptions

#: CLI parameter -> TrainOptions field, where the names differ.
RENAMED = {"config": "config_file"}
#: CLI-only options (no TrainOptions field): how to report, how many ranks to launch (anekit.train.launch).
CLI_ONLY = {"print_every", "nproc", "max_restarts"}


def _options(command):
    return {name: p.default for name, p in inspect.signature(command).parameters.items()}


def test_every_train_option_defaults_to_train_options():
    fields = {f.name: f.default for f in dataclasses.fields(TrainOptions)}
    for name, option in _options(train).items():
        if name in CLI_ONLY:
            continue
        field = RENAMED.get(name, name)
        assert field in fields, f"--{name} has no TrainOptions field"
        assert option.default == fields[field], f"--{name}: {option.default!r} != {fields[field]!r}"


def test_eval_backend_and_numerics_default_to_train_options():
    opts = _options(evaluate)
    assert opts["backend"].default == TrainOptions.backend
    assert opts["numerics"].default == TrainOptions.numerics


def test_preset_help_lists_every_registered_preset():
    help_text = _options(train)["preset"].help
    for name in PRESETS:
        assert name in help_text


def test_numerics_are_the_reference_backends():
    from anekit.backends.reference import NUMERICS as REFERENCE

    assert tuple(REFERENCE) == NUMERICS
