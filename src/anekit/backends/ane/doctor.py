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


def _smoke_dict(result: SmokeResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "detail": result.detail,
        "max_abs_err": None if result.max_abs_err != result.max_abs_err else result.max_abs_err,  # NaN
        "compile_load_ms": round(result.compile_s * 1e3, 3),
        "first_eval_ms": round(result.eval_s * 1e3, 3),
        "hw_execution_time_ns": result.hw_ns,
    }


def doctor_data(bridge: Any = None, smoke: bool = True) -> dict[str, Any]:
    """Everything the Mac-only part of `anekit doctor` reports, as plain JSON-ready values:
    machine, `_ANEDeviceInfo`, every class/selector probed and what is missing, the
    loaded-program budget (ane-private-api.md §10.1) with this process's counts, and the smoke
    test. `bridge` defaults to the real one (tests pass the stand-in)."""
    from .runtime import compile_model, loaded_program_report

    if bridge is None:
        from . import bridge
    found = bridge.probe()
    data: dict[str, Any] = {
        "machine": machine_info(),
        "framework_loaded": found.loaded,
        "device_info": bridge.device_info() if found.loaded and found.classes.get("_ANEDeviceInfo") else None,
        "classes": dict(found.classes),
        "selectors": [
            {"class": cls, "selector": f"{'+' if kind == 'class' else '-'}{sel}", "found": present}
            for (cls, kind, sel), present in found.selectors.items()
        ],
        "missing": found.missing,
        "smoke_test": None,
    }
    if smoke and not found.missing:
        seen: dict[str, Any] = {}

        def compile_and_keep_attributes(program: Any) -> Any:
            kernel = compile_model(program, cache=False)
            seen["attributes"] = getattr(kernel, "attributes", None)
            return kernel

        data["smoke_test"] = _smoke_dict(smoke_test(compile_and_keep_attributes))
        # §10.3: what the engine says about its inputs and outputs, to compare with what anekit
        # reads from it (names, order, NCHW, strides) on a first run
        data["smoke_test"]["model_attributes"] = seen.get("attributes")
    data["loaded_programs"] = loaded_program_report()  # after the smoke test: its counts included
    return data


def print_doctor(console: Any, data: dict[str, Any]) -> None:
    """`doctor_data` as tables on a rich console."""
    from rich.table import Table

    info = data["machine"]
    table = Table(title="Neural Engine", show_header=False)
    for key in ("chip", "macos", "macos_build"):
        table.add_row(key, info.get(key, "?"))
    if data["device_info"] is not None:
        for key, value in data["device_info"].items():
            table.add_row(f"_ANEDeviceInfo.{key}", value)
    else:
        table.add_row("_ANEDeviceInfo", "not present")
    console.print(table)

    sel = Table(title="private classes and selectors")
    sel.add_column("class")
    sel.add_column("selector")
    sel.add_column("found")
    for cls, present in data["classes"].items():
        sel.add_row(cls, "(class)", "[green]yes[/]" if present else "[red]no[/]")
    for row in data["selectors"]:
        sel.add_row(row["class"], row["selector"], "[green]yes[/]" if row["found"] else "[red]no[/]")
    console.print(sel)

    loaded = data["loaded_programs"]
    console.print(
        f"loaded-program budget: {loaded['loaded_program_budget']} of the engine's "
        f"{loaded['engine_program_cap']} programs per process (${loaded['budget_env']}; "
        f"{loaded['source']}); now {loaded['loaded']} loaded, {loaded['in_use']} in use, "
        f"{loaded['compiles']} compiled, {loaded['unloads']} unloaded, {loaded['reloads']} reloaded. "
        f"Policy: {loaded['policy']}."
    )
    if data["missing"]:
        console.print("[red]missing:[/] " + ", ".join(data["missing"]))
        return
    smoke = data["smoke_test"]
    if smoke is None:
        return
    status = "[green]pass[/]" if smoke["ok"] else "[red]FAIL[/]"
    hw = smoke["hw_execution_time_ns"]
    hw_text = f"{hw} ns" if hw is not None else "not reported by this macOS (§1.10)"
    err = smoke["max_abs_err"]
    console.print(
        f"smoke test (1x1 conv 32->32, S=32, fp16): {status} — {smoke['detail']}; "
        f"max |engine - reference| = {'n/a' if err is None else f'{err:.3g}'}; "
        f"compile+load {smoke['compile_load_ms']:.1f} ms; first eval {smoke['first_eval_ms']:.2f} ms; "
        f"hwExecutionTime {hw_text}"
    )
    if smoke.get("model_attributes") is not None:
        console.print("modelAttributes of the smoke-test program (§10.3):", smoke["model_attributes"])


def doctor_report(console: Any = None, bridge: Any = None, smoke: bool = True) -> dict[str, Any]:
    """The Mac-only part of `anekit doctor`: returns `doctor_data` (for `--json`) and prints it
    when a console is given."""
    data = doctor_data(bridge, smoke)
    if console is not None:
        print_doctor(console, data)
    return data
