"""The private classes and selectors the `ane` backend calls, and what a probe of them found.

Pure data, importable anywhere: `bridge.probe()` fills a `Probe` on a Mac; `anekit doctor` prints
it; `availability()` refuses to run when anything required is missing. The API is private and can
change with any macOS update, so every selector is checked with `respondsToSelector:` (class
methods) or `instancesRespondToSelector:` (instance methods) before use (ane-private-api.md §6,
last row).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: §1.1 step 1.
FRAMEWORK = "/System/Library/PrivateFrameworks/AppleNeuralEngine.framework"

#: (class, kind, selector) that the §1.2 sequence needs; kind is "class" or "instance".
REQUIRED: tuple[tuple[str, str, str], ...] = (
    ("_ANEInMemoryModelDescriptor", "class", "modelWithMILText:weights:optionsPlist:"),  # §1.2 step 1
    ("_ANEInMemoryModel", "class", "inMemoryModelWithDescriptor:"),  # §1.2 step 2
    ("_ANEInMemoryModel", "instance", "hexStringIdentifier"),  # §1.2 step 3
    ("_ANEInMemoryModel", "instance", "compileWithQoS:options:error:"),  # §1.2 step 5
    ("_ANEInMemoryModel", "instance", "loadWithQoS:options:error:"),  # §1.2 step 6
    ("_ANEInMemoryModel", "instance", "evaluateWithQoS:options:request:error:"),  # §1.2 step 8
    ("_ANEInMemoryModel", "instance", "unloadWithQoS:error:"),  # §1.2 step 9
    (
        "_ANERequest",
        "class",
        "requestWithInputs:inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:",
    ),  # §1.6
    ("_ANEIOSurfaceObject", "class", "objectWithIOSurface:"),  # §1.6
)

#: Used when present, never required.
OPTIONAL: tuple[tuple[str, str, str], ...] = (
    ("_ANEInMemoryModel", "instance", "modelAttributes"),  # §1.7 PlaneStride
    ("_ANEInMemoryModel", "instance", "setPerfStatsMask:"),  # §1.10 (untested hypothesis)
    ("_ANERequest", "instance", "perfStats"),  # §1.10
    ("_ANEPerformanceStats", "instance", "hwExecutionTime"),  # §1.10
    ("_ANEDeviceInfo", "class", "hasANE"),  # doctor
    ("_ANEDeviceInfo", "class", "aneArchitectureType"),
    ("_ANEDeviceInfo", "class", "aneSubType"),
    ("_ANEDeviceInfo", "class", "numANEs"),
    ("_ANEDeviceInfo", "class", "numANECores"),
    ("_ANEDeviceInfo", "class", "productName"),
    ("_ANEDeviceInfo", "class", "buildVersion"),
)


@dataclass
class Probe:
    """What the framework on this machine offers.

    loaded: whether the framework bundle loaded; error: why not. classes: class name -> found.
    selectors: (class, kind, selector) -> found (False when the class itself is missing).
    """

    loaded: bool
    error: str | None = None
    classes: dict[str, bool] = field(default_factory=dict)
    selectors: dict[tuple[str, str, str], bool] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        """Every required class or selector that was not found, as `+[Class sel]`/`-[Class sel]`."""
        if not self.loaded:
            return [f"{FRAMEWORK} ({self.error or 'not loaded'})"]
        out = []
        for cls in dict.fromkeys(c for c, _, _ in REQUIRED):
            if not self.classes.get(cls, False):
                out.append(f"class {cls}")
        for entry in REQUIRED:
            cls, kind, sel = entry
            if self.classes.get(cls, False) and not self.selectors.get(entry, False):
                out.append(f"{'+' if kind == 'class' else '-'}[{cls} {sel}]")
        return out

    @property
    def ok(self) -> bool:
        return not self.missing

    def has(self, cls: str, kind: str, sel: str) -> bool:
        return self.selectors.get((cls, kind, sel), False)
