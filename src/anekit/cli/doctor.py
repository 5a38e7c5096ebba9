"""`anekit doctor`: what this machine is, and which backends can run here (and why not)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

from rich.table import Table

from .common import stdout_console


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def doctor() -> None:
    """Show the platform, package versions and which backends are available (and why not)."""
    from .. import __version__
    from ..backends import BACKENDS, availability

    console = stdout_console()
    info = Table(title="anekit doctor", show_header=False)
    info.add_row("anekit", __version__)
    info.add_row("python", sys.version.split()[0])
    info.add_row("platform", f"{platform.system()} {platform.release()} ({platform.machine()})")
    if sys.platform == "darwin":
        info.add_row("macOS", platform.mac_ver()[0] or "?")
    for dist in ("coremltools", "numpy", "pyobjc-core"):
        info.add_row(dist, _version(dist))
    console.print(info)

    table = Table(title="backends")
    table.add_column("backend")
    table.add_column("available")
    table.add_column("detail")
    for name in BACKENDS:
        ok, why = availability(name)
        table.add_row(name, "[green]yes[/]" if ok else "[red]no[/]", why)
    console.print(table)
    ok, _ = availability("ane")
    console.print(f"backend 'auto' runs on: [bold]{'ane' if ok else 'reference'}[/]")
    if ok:
        from ..backends.ane import doctor_report

        doctor_report(console)
