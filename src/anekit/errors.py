"""The root of every error anekit raises on purpose.

Each module keeps its own error class (`MilParseError`, `BlobError`, `CheckpointError`, ...) for callers
that catch one kind; all of them also derive from `AnekitError`, so the command line and the fuzzers can
tell "anekit refused this input with a message" from "an unexpected exception escaped".
"""

from __future__ import annotations


class AnekitError(Exception):
    """An error anekit raised with a message meant for the user (what was wrong, where, what to do)."""
