"""`anekit doctor`: what this machine is, and which backends can run here (and why not)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

import typer
from rich.table import Table

from .common import output_console, print_json

PACKAGES = ("coremltools", "numpy", "pyobjc-core")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def facts() -> dict[str, Any]:
    """Everything doctor reports off the engine, as plain data (the --json document)."""
    from .. import __version__
    from ..backends import BACKENDS, availability

    backends = {}
    for name in BACKENDS:
        ok, why = availability(name)
        backends[name] = {"available": ok, "detail": why}
    info: dict[str, Any] = {
        "anekit": __version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.release()} ({platform.machine()})",
    }
    if sys.platform == "darwin":
        info["macos"] = platform.mac_ver()[0] or "?"
    info["packages"] = {dist: _version(dist) for dist in PACKAGES}
    info["backends"] = backends
    info["auto"] = "ane" if backends["ane"]["available"] else "reference"
    info["loaded_programs"] = _loaded_programs()
    info["engine"] = None
    return info


def _loaded_programs() -> dict[str, Any] | None:
    """The engine backend's loaded-program budget (backends/ane; readable on any machine)."""
    try:
        from ..backends.ane import loaded_program_report
    except ImportError:
        return None
    return loaded_program_report()


def doctor(
    as_json: bool = typer.Option(
        False, "--json", help="Print the report as JSON on stdout (the engine's tables go to stderr)."
    ),
) -> None:
    """Show the platform, package versions and which backends are available (and why not)."""
    data = facts()
    console = output_console(as_json)
    if not as_json:
        info = Table(title="anekit doctor", show_header=False)
        for key in ("anekit", "python", "platform", "macos"):
            if key in data:
                info.add_row(key, data[key])
        for dist, version in data["packages"].items():
            info.add_row(dist, version)
        console.print(info)
        table = Table(title="backends")
        for col in ("backend", "available", "detail"):
            table.add_column(col)
        for name, b in data["backends"].items():
            table.add_row(name, "[green]yes[/]" if b["available"] else "[red]no[/]", b["detail"])
        console.print(table)
        console.print(f"backend 'auto' runs on: [bold]{data['auto']}[/]")
        budget = data["loaded_programs"]
        if budget and data["auto"] != "ane":  # on the engine its own section says this, with counts
            console.print(
                f"engine programs loaded at once: up to {budget['loaded_program_budget']} of the "
                f"{budget['engine_program_cap']} the engine allows per process "
                f"(${budget['budget_env']}); idle ones are unloaded, least recently used first"
            )
    if data["auto"] == "ane":
        from ..backends.ane import doctor_report

        # The engine section (backends/ane/doctor.py) returns its findings as data and, given a
        # console, prints them as tables; with --json only the data is used.
        data["engine"] = doctor_report(None if as_json else console)
    if as_json:
        print_json(data)
