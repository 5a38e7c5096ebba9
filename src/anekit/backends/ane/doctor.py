"""`anekit doctor` on a Mac: what chip and OS this is, what the framework offers, and whether a
1×1 conv compiled on the engine gives what the reference backend gives.

`machine_info` and `smoke_test` run anywhere (the smoke test takes the compile function to check,
so it is tested off a Mac against the reference backend itself); `doctor_report` needs the engine.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Smoke-test tolerance: both sides store fp16 (mil-text.md §5); a 32-term dot product of values
#: below 1 differs by a few fp16 ulps at most.
SMOKE_RTOL = 1e-2
SMOKE_ATOL = 1e-2


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def machine_info() -> dict[str, str]:
    """Chip, OS version and build, Python; the values recorded with every hardware result
    (ane-private-api.md §6: a macOS update changed engine speed by ~23 %)."""
    info = {
        "platform": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": sys.version.split()[0],
    }
    if sys.platform == "darwin":
        info["chip"] = _run(["sysctl", "-n", "machdep.cpu.brand_string"]) or "?"
        info["macos"] = platform.mac_ver()[0] or _run(["sw_vers", "-productVersion"]) or "?"
        info["macos_build"] = (
            _run(["sw_vers", "-buildVersion"]) or _run(["sysctl", "-n", "kern.osversion"]) or "?"
        )
    return info


def conv1x1_program(channels: int = 32, width: int = 32, seed: int = 0):
    """A `[1, C, 1, W]` fp16 1×1 conv with BLOBFILE weights: the smallest real engine kernel."""
    from ..._coreml import ct, mb, types

    w = (np.random.default_rng(seed).standard_normal((channels, channels, 1, 1)) / channels**0.5).astype(
        np.float16
    )

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(1, channels, 1, width), dtype=types.fp16)],
        opset_version=ct.target.iOS18,
    )
    def prog(x):
        return mb.conv(x=x, weight=mb.const(val=w, name="w"), name="y")

    return prog


@dataclass
class SmokeResult:
    ok: bool
    max_abs_err: float
    compile_s: float
    eval_s: float
    hw_ns: int | None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def smoke_test(compile_fn: Callable[[Any], Any], seed: int = 0) -> SmokeResult:
    """Compile a 1×1 conv with `compile_fn`, run it, compare with the reference backend.

    Returns a failed result (with the error text) rather than raising, so doctor can report it.
    """
    from ..reference import compile as reference_compile

    program = conv1x1_program(seed=seed)
    x = np.random.default_rng(seed + 1).standard_normal((1, 32, 1, 32)).astype(np.float16)
    expected = reference_compile(program)(x=x)["y"].astype(np.float64)
    t0 = time.perf_counter()
    try:
        kernel = compile_fn(program)
    except Exception as exc:
        return SmokeResult(False, float("nan"), time.perf_counter() - t0, 0.0, None, f"compile: {exc}")
    compile_s = time.perf_counter() - t0
    try:
        with kernel:
            t0 = time.perf_counter()
            got = kernel(x=x)["y"]
            eval_s = time.perf_counter() - t0
            last = getattr(kernel, "last_eval", None)
    except Exception as exc:
        return SmokeResult(False, float("nan"), compile_s, 0.0, None, f"run: {exc}")
    got = np.asarray(got, dtype=np.float64)
    if got.shape != expected.shape:
        return SmokeResult(False, float("nan"), compile_s, eval_s, None, f"output shape {got.shape}")
    err = float(np.max(np.abs(got - expected)))
    ok = bool(np.allclose(got, expected, rtol=SMOKE_RTOL, atol=SMOKE_ATOL))
    detail = "matches the reference backend" if ok else "differs from the reference backend"
    if not np.any(got):
        ok, detail = False, "all outputs are zero (the silent-failure signature, ane-private-api.md §6)"
    return SmokeResult(ok, err, compile_s, eval_s, getattr(last, "hw_ns", None), detail)


def doctor_report(console: Any) -> None:
    """Print the Mac-only part of `anekit doctor`."""
    from rich.table import Table

    from . import bridge
    from .runtime import compile_model

    info = machine_info()
    table = Table(title="Neural Engine", show_header=False)
    for key in ("chip", "macos", "macos_build"):
        table.add_row(key, info.get(key, "?"))
    found = bridge.probe()
    if found.loaded and found.classes.get("_ANEDeviceInfo"):
        for key, value in bridge.device_info().items():
            table.add_row(f"_ANEDeviceInfo.{key}", value)
    else:
        table.add_row("_ANEDeviceInfo", "not present")
    console.print(table)

    sel = Table(title="private classes and selectors")
    sel.add_column("class")
    sel.add_column("selector")
    sel.add_column("found")
    for cls, present in found.classes.items():
        sel.add_row(cls, "(class)", "[green]yes[/]" if present else "[red]no[/]")
    for (cls, kind, name), present in found.selectors.items():
        sel.add_row(
            cls, f"{'+' if kind == 'class' else '-'}{name}", "[green]yes[/]" if present else "[red]no[/]"
        )
    console.print(sel)
    if found.missing:
        console.print("[red]missing:[/] " + ", ".join(found.missing))
        return

    result = smoke_test(lambda p: compile_model(p, cache=False))
    status = "[green]pass[/]" if result.ok else "[red]FAIL[/]"
    hw = f"{result.hw_ns} ns" if result.hw_ns is not None else "not reported by this macOS (§1.10)"
    console.print(
        f"smoke test (1x1 conv 32->32, S=32, fp16): {status} — {result.detail}; "
        f"max |engine - reference| = {result.max_abs_err:.3g}; compile+load {result.compile_s * 1e3:.1f} ms; "
        f"first eval {result.eval_s * 1e3:.2f} ms; hwExecutionTime {hw}"
    )
