"""Where backend definitions live: the ane runtime prepares a program without the reference backend
(shared definitions such as `var_spec` are in backends/base.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from anekit.backends import base
from anekit.backends.reference import interpreter


def test_var_spec_is_defined_once_in_base():
    assert base.var_spec.__module__ == "anekit.backends.base"
    assert interpreter.var_spec is base.var_spec


def test_the_ane_runtime_prepares_a_program_without_the_reference_backend():
    code = (
        "import sys\n"
        "import anekit.backends.ane.runtime as r\n"
        "from ane_programs import conv_program\n"
        "p = r.prepare(conv_program())\n"
        "assert str(p.inputs['x']) == 'x: tensor<fp16, [1, 32, 1, 32]>', p.inputs\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('anekit.backends.reference'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent, timeout=120)
