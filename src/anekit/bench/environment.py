"""Where a benchmark ran: chip, OS and build, Python and package versions."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata

PACKAGES = ("anekit", "numpy", "coremltools", "rich", "matplotlib", "pyobjc-core")


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def chip_name() -> str:
    """ "Apple M4 Max" on an Apple silicon Mac, else "n/a"."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return _sysctl("machdep.cpu.brand_string") or "Apple silicon (unknown chip)"
    return "n/a"


def os_info() -> dict:
    info = {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "platform": platform.platform(),
    }
    if sys.platform == "darwin":
        info["macos"] = platform.mac_ver()[0]
        try:
            info["build"] = subprocess.run(
                ["sw_vers", "-buildVersion"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["build"] = "unknown"
    else:
        info["build"] = platform.version()
    return info


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
