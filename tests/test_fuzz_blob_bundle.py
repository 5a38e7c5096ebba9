"""Short runs of the `blob` and `bundle` fuzz targets (the full runs are
`python -m anekit.fuzz blob --cases 20000` and `... bundle --cases 20000`): every case ends in success
or an AnekitError, none hangs; and the targets really reach both outcomes, so they test something."""

from __future__ import annotations

import numpy as np
import pytest

from anekit.fuzz import blob as blob_target
from anekit.fuzz import bundle as bundle_target
from anekit.fuzz import run_one, target
from short_fuzz import assert_short_run_clean

CASES = {"blob": 400, "bundle": 250}


@pytest.mark.parametrize("name", sorted(CASES))
def test_short_fuzz_finds_no_raw_exception_and_no_hang(name):
    assert_short_run_clean(name, CASES[name], ok_at_least=CASES[name] // 20)


def test_a_case_is_reproducible_from_its_seed_and_number():
    for name, module in (("blob", blob_target), ("bundle", bundle_target)):
        a = module.make_case(np.random.default_rng([7, 123]))
        b = module.make_case(np.random.default_rng([7, 123]))
        assert module.describe(a) == module.describe(b)
        assert run_one(target(name), 7, 123, 10.0)[0] == run_one(target(name), 7, 123, 10.0)[0]


def test_the_blob_target_checks_values_not_only_exceptions(monkeypatch):
    """A reader that returned wrong values without raising must be caught as a defect ("other")."""
    import anekit.fuzz.blob as module

    real = module.read_blob
    monkeypatch.setattr(module, "read_blob", lambda *a, **k: real(*a, **k) * 0 + 1)
    case = next(
        c
        for i in range(1000)
        if (c := module.make_case(np.random.default_rng([0, i]))).kind == "read"
        and not c.mutations
        and any(np.asarray(t.values).size and np.any(t.values != 1) for t in c.written)
    )
    with pytest.raises(AssertionError, match="read back differently"):
        module.run_case(case)


def test_the_bundle_target_catches_a_loader_that_follows_symlinks_out(monkeypatch):
    """If load_bundle followed a symlink leaving the bundle, the target must report it."""
    import anekit.fuzz.bundle as module

    case = module.Case([("file", "meta.json", "symlink-outside", 0)])
    with pytest.raises(module.BundleError, match="outside the directory"):
        module.run_case(case)
    monkeypatch.setattr("anekit.bundles.read_inside", _following_read)
    with pytest.raises(AssertionError, match="symlink leaving the bundle was read"):
        module.run_case(case)


def _following_read(root, rel, error, what="file", max_bytes=None):
    from pathlib import Path

    return (Path(root) / rel).read_bytes()
