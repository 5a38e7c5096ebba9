"""Record a kernel run as a bundle, and replay bundles through another backend.

A bundle is a directory that a Mac owner can make in seconds and anyone can check anywhere:

    model.mil, weights/     the program exactly as compiled (MilModel.save)
    inputs.npz, outputs.npz the arrays fed and produced
    meta.json               where the outputs came from ("source"), chip, macOS build, timings

"source" is mandatory and says what produced the outputs: "ane-hardware" (the `ane` backend on a
Neural Engine), "reference-backend" (NumPy, made anywhere, e.g. fixtures) or "coreml-backend".
It is derived from the kernel that actually ran, never from a flag, so a reference run can never
be presented as hardware output. Replaying a hardware bundle through the reference backend pins
the reference semantics to what the engine did (tests/ane/test_record_replay.py).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .arrays_io import NUMERIC_KINDS, ArrayFileError, read_npz
from .backends import get, resolve
from .backends.base import Kernel
from .errors import AnekitError
from .safe_dir import StagedDirectory, read_inside, resolve_inside, write_new_file

BUNDLE_FORMAT = "anekit-bundle"
BUNDLE_VERSION = 1
#: backend that ran -> the bundle's "source".
SOURCES = {"ane": "ane-hardware", "reference": "reference-backend", "coreml": "coreml-backend"}
#: Outputs are fp16 on both sides; the engine accumulates differently, so compare at fp16 scale:
#: |got - expected| <= atol·max(1, max|expected|) + rtol·|expected|.
DEFAULT_RTOL = 1e-2
DEFAULT_ATOL = 1e-2
META = "meta.json"
FILES = ("model.mil", "inputs.npz", "outputs.npz", META)
#: meta.json is a few kB; anything near this is not one.
MAX_META_BYTES = 1 << 20
#: rtol/atol beyond this would accept any output.
MAX_TOLERANCE = 1.0


class BundleError(AnekitError, ValueError):
    """A bundle directory is incomplete or its metadata is missing what a replay relies on."""


@dataclass
class Bundle:
    """A recorded run: program, inputs, outputs and metadata."""

    model: Any  # MilModel
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def source(self) -> str:
        return self.meta["source"]


def _as_model(source: Any) -> Any:
    from .mil.model import MilModel, load

    if isinstance(source, MilModel):
        return source
    if isinstance(source, (str, Path)):
        return load(source)
    from .mil.printer import dumps

    return dumps(source)


def _source_of(kernel: Kernel) -> str:
    """The bundle source for the kernel that ran: its backend, checked against its type."""
    backend = kernel.backend
    if backend not in SOURCES:
        raise BundleError(f"cannot record a kernel of backend {backend!r}")
    if backend == "ane":
        kind = type(kernel).__name__
        remote = getattr(kernel, "remote_type", None)
        if kind != "AneKernel" and remote != "AneKernel":
            raise BundleError(
                f"a {kind} claims backend 'ane' but is not an engine kernel; refusing to record it"
            )
    return SOURCES[backend]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)


def record(
    source: Any,
    inputs: Mapping[str, Any],
    backend: str = "ane",
    repeat: int = 1,
    **options: Any,
) -> Bundle:
    """Compile `source` on `backend`, run it `repeat` times on `inputs`, and keep everything.

    The outputs kept are those of the first run; later runs only add timings (and must agree:
    a kernel that is not deterministic is reported).
    """
    from . import __version__
    from .backends.ane.doctor import machine_info

    if type(repeat) is not int or repeat < 1:
        raise BundleError(f"repeat must be an integer of at least 1, not {repeat!r}")
    model = _as_model(source)
    name = resolve(backend)
    kernel = get(name).compile(model, **options)
    with kernel:
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        walls, engine_walls, hw = [], [], []
        outputs: dict[str, np.ndarray] = {}
        for i in range(repeat):
            t0 = time.perf_counter()
            got = kernel(**arrays)
            walls.append(time.perf_counter() - t0)
            last = getattr(kernel, "last_eval", None)
            if last is not None:
                engine_walls.append(last.wall_s)
                hw.append(last.hw_ns)
            if i == 0:
                outputs = {k: np.asarray(v) for k, v in got.items()}
            elif any(not np.array_equal(outputs[k], np.asarray(v), equal_nan=True) for k, v in got.items()):
                raise BundleError(f"run {i + 1} of {repeat} gave different outputs from run 1")
        src = _source_of(kernel)
        specs_in = {n: {"shape": list(s.shape), "dtype": s.dtype} for n, s in kernel.inputs.items()}
        specs_out = {n: {"shape": list(s.shape), "dtype": s.dtype} for n, s in kernel.outputs.items()}
    meta = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "source": src,
        "backend": name,
        "options": _jsonable(options),
        "anekit_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "inputs": specs_in,
        "outputs": specs_out,
        "timings": {
            "runs": repeat,
            "call_wall_s": walls,
            "engine_wall_s": engine_walls,
            # §1.10: only what the engine reported; null where it reported nothing.
            "hw_execution_ns": hw,
        },
        "tolerance": {"rtol": DEFAULT_RTOL, "atol": DEFAULT_ATOL},
    }
    if src == "reference-backend":
        meta["note"] = "outputs computed by anekit's NumPy reference backend, not by a Neural Engine"
    return Bundle(model, arrays, outputs, meta)


def save_bundle(bundle: Bundle, directory: str | Path, overwrite: bool = False) -> Path:
    """Write `bundle` into `directory`; returns it.

    Built in a new directory beside `directory` and renamed into place (`anekit.safe_dir`): nothing
    is written through a symlink and a failure leaves no half-written bundle. An existing non-empty
    `directory` is a BundleError unless `overwrite`; with it, the old directory is replaced once
    the new bundle is complete (only if it holds nothing but bundle files).
    """
    if "source" not in bundle.meta:
        raise BundleError("refusing to save a bundle whose metadata has no 'source'")
    for kind, arrays in (("input", bundle.inputs), ("output", bundle.outputs)):
        for name, array in arrays.items():
            dt = np.asarray(array).dtype
            if dt.hasobject or dt.kind not in NUMERIC_KINDS or dt.fields is not None:
                raise BundleError(
                    f"{kind} {name!r} is a {dt} array; a bundle stores numeric arrays only (never pickles)"
                )
    try:
        meta = (json.dumps(bundle.meta, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as e:
        raise BundleError(f"the bundle's metadata cannot be written as JSON: {e}") from None
    files = {"inputs.npz": _npz_bytes(bundle.inputs), "outputs.npz": _npz_bytes(bundle.outputs), META: meta}
    with StagedDirectory(
        directory,
        overwrite=overwrite,
        error=BundleError,
        produces={*FILES, *bundle.model.entries()},
        what="bundle directory",
    ) as stage:
        bundle.model.write_files(stage)
        for name, data in files.items():
            write_new_file(stage, name, data)
    return Path(directory)


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


def load_bundle(directory: str | Path) -> Bundle:
    """Read a bundle, checking everything a replay relies on before using it.

    `BundleError` (saying what is wrong with which file, and what to do) if the directory or a file
    is missing, a file is not a regular file inside the directory (symlinks leaving it are refused),
    `meta.json` is not the supported format and version or lacks a known "source", an array file is
    damaged (array headers are checked before anything is allocated, `anekit.arrays_io`), or the
    arrays do not match the names and shapes `meta.json` records.
    """
    from .mil.model import load

    root = Path(directory)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise BundleError(f"bundle {root} {what}; give the directory `anekit record --out` wrote")
    missing = [f for f in FILES if not (root / f).exists() and not (root / f).is_symlink()]
    if missing:
        raise BundleError(f"{root} is not a complete bundle: missing {', '.join(missing)}")
    meta = _read_meta(root)
    inputs = _read_arrays(root, "inputs.npz", meta.get("inputs"), "input")
    outputs = _read_arrays(root, "outputs.npz", meta.get("outputs"), "output")
    try:
        model = load(root)
    except AnekitError as e:
        raise BundleError(f"bundle {root}: its program cannot be read: {e}") from None
    return Bundle(model, inputs, outputs, meta)


def _read_meta(root: Path) -> dict[str, Any]:
    where = root / META
    raw = read_inside(root, META, BundleError, "bundle file", max_bytes=MAX_META_BYTES)
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BundleError(
            f"{where} is not valid JSON ({type(e).__name__}: {e}); record the bundle again"
        ) from None
    if not isinstance(meta, dict):
        raise BundleError(
            f"{where} holds a JSON {type(meta).__name__}, not an object; record the bundle again"
        )
    _check_format(meta, where)
    if "source" not in meta:
        raise BundleError(
            f"{where} has no 'source' field: a bundle must say whether its outputs came "
            f"from the engine or from a backend (one of {', '.join(sorted(SOURCES.values()))})"
        )
    if meta["source"] not in SOURCES.values():
        raise BundleError(
            f"{where}: unknown source {meta['source']!r} "
            f"(expected one of {', '.join(sorted(SOURCES.values()))})"
        )
    _check_fields(meta, where)
    return meta


def _check_format(meta: dict[str, Any], where: Path) -> None:
    supported = f"this anekit reads format {BUNDLE_FORMAT!r}, version {BUNDLE_VERSION}"
    if "format" not in meta:
        raise BundleError(f"{where} has no 'format' field, so it is not an anekit bundle ({supported})")
    if meta["format"] != BUNDLE_FORMAT:
        raise BundleError(f"{where}: format {meta['format']!r} is not an anekit bundle ({supported})")
    version = meta.get("version")
    if type(version) is not int:
        raise BundleError(f"{where}: 'version' is {version!r}, not an integer ({supported})")
    if version > BUNDLE_VERSION:
        raise BundleError(
            f"{where}: bundle version {version} is newer than this anekit reads ({supported}); "
            "upgrade anekit to replay it"
        )
    if version != BUNDLE_VERSION:
        raise BundleError(f"{where}: unknown bundle version {version} ({supported})")


def _check_fields(meta: dict[str, Any], where: Path) -> None:
    """The fields a replay or the `replay` command reads: their types and ranges."""
    for key in ("options", "tolerance", "machine", "timings"):
        if key in meta and not isinstance(meta[key], dict):
            raise BundleError(f"{where}: {key!r} must be a JSON object, not {_kind(meta[key])}")
    _check_numerics(meta.get("options", {}).get("numerics", "ane"), where)
    _check_tolerance(meta.get("tolerance", {}), where)
    for kind in ("inputs", "outputs"):
        _check_specs(meta.get(kind), kind, where)


def _check_numerics(numerics: Any, where: Path) -> None:
    # The numerics a bundle may ask for are the reference backend's (loading it costs nothing more
    # here: `load_bundle` has already loaded coremltools to read the program).
    from .backends.reference import NUMERICS as REFERENCE_NUMERICS

    numerics_names = tuple(REFERENCE_NUMERICS)  # a tuple: JSON may hold an unhashable value
    if numerics not in numerics_names:
        raise BundleError(
            f"{where}: options.numerics is {numerics!r}; expected one of {', '.join(numerics_names)}"
        )


def _check_tolerance(tolerance: dict[str, Any], where: Path) -> None:
    for key, value in tolerance.items():
        if key in ("rtol", "atol") and not (
            type(value) in (int, float) and math.isfinite(value) and 0 <= value <= MAX_TOLERANCE
        ):
            raise BundleError(
                f"{where}: tolerance.{key} is {value!r}; expected a number in [0, {MAX_TOLERANCE}]"
            )


def _check_specs(specs: Any, kind: str, where: Path) -> None:
    """meta.json's "inputs" or "outputs" (`kind`): name -> {"shape": [dims], ...}, if present."""
    if specs is None:
        return
    if not isinstance(specs, dict):
        raise BundleError(f"{where}: {kind!r} must be a JSON object of name -> spec, not {_kind(specs)}")
    for name, spec in specs.items():
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not isinstance(shape, list) or not all(d is None or (type(d) is int and 0 <= d) for d in shape):
            raise BundleError(
                f'{where}: {kind}.{name} must be {{"shape": [dims], "dtype": ...}} with non-negative '
                f"integer (or null) dims, not {spec!r}"
            )


def _read_arrays(root: Path, name: str, specs: Any, kind: str) -> dict[str, np.ndarray]:
    path = resolve_inside(root, name, BundleError, "bundle file")
    try:
        arrays = read_npz(path)
    except ArrayFileError as e:
        raise BundleError(f"bundle {root}: {e}") from None
    if specs is None:
        return arrays
    if set(arrays) != set(specs):
        raise BundleError(
            f"bundle {root}: {name} holds {kind}s {sorted(arrays)} but meta.json records {sorted(specs)}; "
            "the bundle is damaged: record it again"
        )
    for key, array in arrays.items():
        shape = specs[key]["shape"]
        if len(shape) != array.ndim or any(d is not None and d != n for d, n in zip(shape, array.shape)):
            raise BundleError(
                f"bundle {root}: {kind} {key!r} in {name} has shape {list(array.shape)} but meta.json "
                f"records {shape}; the bundle is damaged: record it again"
            )
    return arrays


def _kind(value: Any) -> str:
    return f"a JSON {type(value).__name__}" if value is not None else "null"


def replay(bundle: Bundle, backend: str = "reference", **options: Any) -> dict[str, np.ndarray]:
    """Run the bundle's program on its inputs with `backend`; returns the outputs."""
    if backend == "reference" and "numerics" not in options:
        recorded = bundle.meta.get("options", {}) if bundle.source == "reference-backend" else {}
        options["numerics"] = recorded.get("numerics", "ane")
    with get(resolve(backend)).compile(bundle.model, **options) as kernel:
        return {k: np.asarray(v) for k, v in kernel(**bundle.inputs).items()}


def compare(
    expected: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], rtol: float, atol: float
) -> list[str]:
    """Every difference between two sets of outputs beyond fp16 tolerance, as sentences."""
    problems = []
    for name in sorted(set(expected) | set(got)):
        if name not in got:
            problems.append(f"output {name!r} missing from the replay")
            continue
        if name not in expected:
            problems.append(f"output {name!r} was not recorded")
            continue
        e = np.asarray(expected[name], dtype=np.float64)
        g = np.asarray(got[name], dtype=np.float64)
        if e.shape != g.shape:
            problems.append(f"output {name!r}: shape {g.shape}, recorded {e.shape}")
            continue
        finite = np.isfinite(e)
        scale = max(1.0, float(np.max(np.abs(e[finite]))) if finite.any() else 1.0)
        if not np.allclose(g, e, rtol=rtol, atol=atol * scale, equal_nan=True):
            bad = ~np.isclose(g, e, rtol=rtol, atol=atol * scale, equal_nan=True)
            both = finite & np.isfinite(g)
            err = float(np.max(np.abs(g[both] - e[both]))) if both.any() else float("nan")
            problems.append(
                f"output {name!r}: {int(bad.sum())} of {e.size} values differ beyond rtol={rtol} "
                f"atol={atol * scale:.3g} (max |diff| {err:.4g})"
            )
    return problems


def check_replay(bundle: Bundle, backend: str = "reference", **options: Any) -> list[str]:
    """Replay `bundle` and compare with its recorded outputs at the bundle's tolerance."""
    tol = bundle.meta.get("tolerance", {})
    got = replay(bundle, backend, **options)
    return compare(
        bundle.outputs, got, float(tol.get("rtol", DEFAULT_RTOL)), float(tol.get("atol", DEFAULT_ATOL))
    )
