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

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .backends import get, resolve
from .backends.base import Kernel
from .errors import AnekitError

BUNDLE_FORMAT = "anekit-bundle"
BUNDLE_VERSION = 1
#: backend that ran -> the bundle's "source".
SOURCES = {"ane": "ane-hardware", "reference": "reference-backend", "coreml": "coreml-backend"}
#: Outputs are fp16 on both sides; the engine accumulates differently, so compare at fp16 scale:
#: |got - expected| <= atol·max(1, max|expected|) + rtol·|expected|.
DEFAULT_RTOL = 1e-2
DEFAULT_ATOL = 1e-2
FILES = ("model.mil", "inputs.npz", "outputs.npz", "meta.json")


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

    if repeat < 1:
        raise ValueError("repeat must be at least 1")
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


def save_bundle(bundle: Bundle, directory: str | Path) -> Path:
    """Write `bundle` into `directory` (created; existing bundle files are replaced)."""
    if "source" not in bundle.meta:
        raise BundleError("refusing to save a bundle whose metadata has no 'source'")
    root = Path(directory)
    bundle.model.save(root)
    np.savez(root / "inputs.npz", **bundle.inputs)
    np.savez(root / "outputs.npz", **bundle.outputs)
    (root / "meta.json").write_text(
        json.dumps(bundle.meta, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return root


def load_bundle(directory: str | Path) -> Bundle:
    """Read a bundle; `BundleError` if a file is missing or `meta.json` lacks a known "source"."""
    from .mil.model import load

    root = Path(directory)
    missing = [f for f in FILES if not (root / f).is_file()]
    if missing:
        raise BundleError(f"{root} is not a complete bundle: missing {', '.join(missing)}")
    try:
        meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{root / 'meta.json'} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or "source" not in meta:
        raise BundleError(
            f"{root / 'meta.json'} has no 'source' field: a bundle must say whether its outputs came "
            f"from the engine or from a backend (one of {', '.join(sorted(SOURCES.values()))})"
        )
    if meta["source"] not in SOURCES.values():
        raise BundleError(
            f"{root / 'meta.json'}: unknown source {meta['source']!r} "
            f"(expected one of {', '.join(sorted(SOURCES.values()))})"
        )
    with np.load(root / "inputs.npz", allow_pickle=False) as f:
        inputs = {k: f[k] for k in f.files}
    with np.load(root / "outputs.npz", allow_pickle=False) as f:
        outputs = {k: f[k] for k in f.files}
    return Bundle(load(root), inputs, outputs, meta)


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
