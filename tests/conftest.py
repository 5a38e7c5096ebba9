"""Test-wide setup: the `requires_ane` marker is deselected where no Neural Engine can be reached;
the `micro_config` fixture shared by the training tests."""

from __future__ import annotations

import json

import pytest

from micro_model import MICRO


@pytest.fixture
def micro_config(tmp_path):
    """The micro model (micro_model.MICRO) as a JSON config file."""
    path = tmp_path / "micro.json"
    path.write_text(json.dumps(MICRO))
    return path


def _ane_available() -> bool:
    try:
        from anekit.backends import ane
    except ImportError:
        return False
    ok, _why = ane.availability()
    return ok


def pytest_collection_modifyitems(config, items):
    if _ane_available():
        return
    selected, deselected = [], []
    for item in items:
        (deselected if item.get_closest_marker("requires_ane") else selected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
