"""The record schema (validated by jsonschema) catches what it forbids, and says where."""

from __future__ import annotations

import copy

import pytest

from anekit.bench.core import Context, Result
from anekit.bench.record import make_record, run_file
from anekit.bench.schema import SchemaError, errors, validate


@pytest.fixture(scope="module")
def record():
    from anekit.bench import dispatch

    cfg = dispatch.Config(channels=8, spatial=8, warmup=1, iters=3)
    ctx = Context("reference", quick=True)
    return make_record("dispatch", ctx, cfg, dispatch.run(ctx, cfg))


def test_a_real_record_and_run_file_validate(record):
    validate(record)
    validate(run_file([record, record]))
    skipped = make_record("power", Context("reference"), {}, Result(status="skipped", note="no macOS"))
    validate(skipped)


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda r: r.pop("measurement"), "missing required property 'measurement'"),
        (lambda r: r.update(measurement="engine-ish"), "is not one of"),
        (lambda r: r.update(quick="yes"), "expected boolean"),
        (lambda r: r.update(extra=1), "unexpected property 'extra'"),
        (lambda r: r["points"][0]["timing"].update(n=0), "below the minimum"),
        (lambda r: r["points"][0]["check"].update(passed=False), "expected True"),
        (lambda r: r["points"][0].update(predicted={"chip": "m4"}), "oneOf"),
        (lambda r: r.update(created="yesterday"), "does not match"),
        (lambda r: r["published"][0].update(value="1.0"), "expected number or null"),
    ],
)
def test_violations_are_reported_with_their_path(record, mutate, needle):
    bad = copy.deepcopy(record)
    mutate(bad)
    errs = errors(bad)
    assert errs and any(needle in e for e in errs), errs
    with pytest.raises(SchemaError):
        validate(bad)


def test_unsupported_keywords_are_refused():
    with pytest.raises(ValueError, match="not supported"):
        errors(1, {"type": "integer", "multipleOf": 2})
