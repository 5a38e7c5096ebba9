"""`tests/llm/conftest.py` (the tiny random Hugging Face models of every architecture) as a module
that tests in any directory can import: pytest keeps conftests out of `sys.modules`, and a plain
`from conftest import` would find whichever conftest another test directory put on `sys.path` first.
Importable like `micro_model`: `from llm_fixtures import llm_fixtures`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).parent / "llm" / "conftest.py"
_NAME = "anekit_tests_llm_fixtures"


def llm_fixtures():
    """The module, loaded once per process."""
    if _NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(_NAME, _PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[_NAME]
