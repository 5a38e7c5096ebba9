"""The ane backend as seen from the rest of anekit: availability and fallback off macOS, import
discipline (only `bridge` touches Objective-C), the selector probe, doctor's smoke test logic."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import anekit
from anekit.backends import BackendUnavailable, availability, resolve
from anekit.backends.ane import selectors
from anekit.backends.ane.doctor import SmokeResult, conv1x1_program, machine_info, smoke_test
from anekit.backends.ane.selectors import REQUIRED, Probe
from anekit.backends.reference import compile as reference_compile

off_mac = pytest.mark.skipif(sys.platform == "darwin", reason="checks the behaviour off macOS")


@off_mac
def test_ane_is_unavailable_off_macos_and_says_why():
    ok, why = availability("ane")
    assert not ok and "needs macOS" in why
    with pytest.raises(BackendUnavailable, match="the ane backend is unavailable: needs macOS"):
        anekit.compile(conv1x1_program(), backend="ane")


@off_mac
def test_auto_falls_back_to_the_reference_backend():
    assert resolve("auto") == "reference"
    kernel = anekit.compile(conv1x1_program())
    assert kernel.backend == "reference"


def test_pure_modules_never_import_objective_c():
    code = (
        "import sys\n"
        "import anekit.backends.ane, anekit.backends.ane.runtime, anekit.backends.ane.layout\n"
        "import anekit.backends.ane.weights, anekit.backends.ane.errors, anekit.backends.ane.selectors\n"
        "import anekit.backends.ane.doctor, anekit.backends.worker, anekit.bundles, anekit.cli\n"
        "print(sorted(m for m in ('objc', 'Foundation', 'anekit.backends.ane.bridge') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@off_mac
def test_the_bridge_itself_needs_pyobjc():
    with pytest.raises(ImportError):
        import anekit.backends.ane.bridge  # noqa: F401


def full_probe() -> Probe:
    p = Probe(loaded=True, classes={c: True for c, _, _ in REQUIRED})
    p.selectors = {entry: True for entry in REQUIRED}
    return p


def test_probe_reports_what_is_missing():
    assert full_probe().ok and full_probe().missing == []
    assert Probe(loaded=False, error="dlopen failed").missing == [f"{selectors.FRAMEWORK} (dlopen failed)"]
    p = full_probe()
    p.classes["_ANERequest"] = False
    p.selectors[("_ANEInMemoryModel", "instance", "compileWithQoS:options:error:")] = False
    p.selectors[("_ANEIOSurfaceObject", "class", "objectWithIOSurface:")] = False
    assert p.missing == [
        "class _ANERequest",
        "-[_ANEInMemoryModel compileWithQoS:options:error:]",
        "+[_ANEIOSurfaceObject objectWithIOSurface:]",
    ]
    assert not p.ok


def test_required_selectors_are_the_section_1_2_sequence():
    sels = {sel for _, _, sel in REQUIRED}
    for sel in (
        "modelWithMILText:weights:optionsPlist:",
        "inMemoryModelWithDescriptor:",
        "hexStringIdentifier",
        "compileWithQoS:options:error:",
        "loadWithQoS:options:error:",
        "evaluateWithQoS:options:request:error:",
        "unloadWithQoS:error:",
        "requestWithInputs:inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:",
        "objectWithIOSurface:",
    ):
        assert sel in sels


def test_smoke_test_logic_against_the_reference_backend():
    good = smoke_test(reference_compile)
    assert isinstance(good, SmokeResult) and good.ok and good.max_abs_err == 0.0
    assert "matches" in good.detail and good.hw_ns is None

    class Wrong:
        backend = "test"

        def __init__(self, scale):
            self.scale = scale

        def __call__(self, x):
            return {"y": reference_compile(conv1x1_program())(x=x)["y"] * self.scale}

        def __enter__(self):
            return self

        def __exit__(self, *a):
            pass

    off = smoke_test(lambda p: Wrong(np.float16(1.5)))
    assert not off.ok and "differs" in off.detail and off.max_abs_err > 0.01
    zeros = smoke_test(lambda p: Wrong(np.float16(0)))
    assert not zeros.ok and "all outputs are zero" in zeros.detail

    def refuse(p):
        raise RuntimeError("compiler said no")

    failed = smoke_test(refuse)
    assert not failed.ok and failed.detail == "compile: compiler said no"


def test_machine_info_has_the_platform():
    info = machine_info()
    assert info["python"] == sys.version.split()[0] and info["platform"]
    if sys.platform == "darwin":
        assert {"chip", "macos", "macos_build"} <= set(info)
