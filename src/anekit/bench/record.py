"""The JSON record of one experiment run, and the file a `bench` invocation writes.

A record says what was measured (config, per-point timings with spread, derived TFLOPS), where (chip,
OS/build, backend, package versions), and *what kind of number* it is: `measurement` is "engine" only
when the program ran on the Neural Engine (ane backend, or Core ML), else "cpu-emulation". The schema is
`record.schema.json` beside this file; `anekit.bench.schema.validate` checks a record against it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from .core import Context, Result
from .environment import chip_name, os_info, package_versions
from .published import published_figures

SCHEMA_VERSION = 1
RECORD_KIND = "anekit.bench.record"
RUN_KIND = "anekit.bench.run"


def _jsonable(obj):
    if dataclasses.is_dataclass(obj):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):  # NaN and inf have no JSON spelling
        return None
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return obj


def make_record(experiment: str, ctx: Context, config, result: Result, error: str | None = None) -> dict:
    """Assemble the record of one experiment run."""
    from ..perf import default_params

    status = "failed" if error else result.status
    rec = {
        "kind": RECORD_KIND,
        "schema_version": SCHEMA_VERSION,
        "experiment": experiment,
        "status": status,
        "note": error or result.note,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "measurement": "engine" if ctx.engine else "cpu-emulation",
        "backend": ctx.backend,
        "chip": chip_name(),
        "os": os_info(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "quick": ctx.quick,
        "config": _jsonable(config),
        "cost_model": {"chip": ctx.chip, "params_date": default_params().fit.get("date", "unknown")},
        "points": [_jsonable(p.to_json()) for p in result.points],
        "summary": _jsonable(result.summary),
        "published": published_figures(experiment),
    }
    return rec


def run_file(records: list[dict]) -> dict:
    """What `anekit bench all` writes: the records of every experiment."""
    return {"kind": RUN_KIND, "schema_version": SCHEMA_VERSION, "records": records}


def document(records: list[dict]) -> dict:
    """What a bench invocation writes (and `anekit bench --json` prints): one experiment's record, or
    a run file holding several."""
    return records[0] if len(records) == 1 else run_file(records)


def write(path: Path, records: list[dict]) -> Path:
    """Write `document(records)` at `path`, atomically: a temporary file beside it renamed over it, so
    an interrupted write never leaves half a record (and a symlink at `path` is replaced, not followed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document(records), indent=1) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
