"""The schema of a checkpoint's ``state.json``: every field, its type and its range.

A damaged or hand-edited ``state.json`` (``[]``, ``null``, a missing key, a string where a number
belongs, a negative step) must be refused with a message naming the field, never surface later as a
traceback deep inside resume. The checks are explicit functions rather than a JSON Schema document
so that each message can say what the field is for and what was found; no dependency is needed.

`validate_state(state, where)` raises `CheckpointError` on the first problem and returns nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from ..errors import AnekitError

#: Files a checkpoint may hold besides state.json; the tokenizer under the name of its kind.
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.bin")
DATA_FILES = (MODEL_FILE, OPTIMIZER_FILE, *TOKENIZER_FILES)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_U128 = 1 << 128


class CheckpointError(AnekitError, ValueError):
    """A checkpoint that cannot be written or used as given; the message says what and where."""


Check = Callable[[object, str], None]


class _Bad(Exception):
    """Internal: a field failed its check (turned into a CheckpointError naming the file)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"field {field!r} {message}")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(lo: int | None = 0, hi: int | None = None) -> Check:
    def check(value: object, field: str) -> None:
        if not _is_int(value) or (lo is not None and value < lo) or (hi is not None and value >= hi):
            rng = f" >= {lo}" if lo is not None else ""
            rng += f" and < {hi}" if hi is not None else ""
            raise _Bad(field, f"must be an integer{rng}, got {_shown(value)}")

    return check


def number(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Check:
    def check(value: object, field: str) -> None:
        ok = _is_int(value) or isinstance(value, float)
        try:
            ok = ok and math.isfinite(value)
        except OverflowError:  # an integer beyond float range (JSON allows any digits)
            ok = False
        if ok:
            ok = (value > lo if lo_open else value >= lo) and (
                hi is None or (value < hi if hi_open else value <= hi)
            )
        if not ok:
            rng = f"{'>' if lo_open else '>='} {lo:g}"
            rng += f" and {'<' if hi_open else '<='} {hi:g}" if hi is not None else ""
            raise _Bad(field, f"must be a finite number {rng}, got {_shown(value)}")

    return check


def string(pattern: re.Pattern | None = None, choices: tuple[str, ...] | None = None) -> Check:
    def check(value: object, field: str) -> None:
        if not isinstance(value, str):
            raise _Bad(field, f"must be a string, got {_shown(value)}")
        if choices is not None and value not in choices:
            raise _Bad(field, f"must be one of {', '.join(choices)}, got {_shown(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            raise _Bad(field, f"must match {pattern.pattern}, got {_shown(value)}")

    return check


def nullable(inner: Check) -> Check:
    def check(value: object, field: str) -> None:
        if value is not None:
            inner(value, field)

    return check


def obj(fields: dict[str, Check], optional: tuple[str, ...] = (), open_: bool = False) -> Check:
    """A JSON object with exactly `fields` (those in `optional` may be absent; `open_`: more allowed)."""

    def check(value: object, field: str) -> None:
        if not isinstance(value, dict):
            raise _Bad(field, f"must be a JSON object, got {_shown(value)}")
        for key, sub in fields.items():
            name = f"{field}.{key}" if field else key
            if key not in value:
                if key in optional:
                    continue
                raise _Bad(name, "is missing")
            sub(value[key], name)
        if not open_:
            unknown = sorted(set(value) - set(fields))
            if unknown:
                where = f"{field}." if field else ""
                raise _Bad(where + unknown[0], f"is not a known field (known: {', '.join(fields)})")

    return check


def any_object(value: object, field: str) -> None:
    if not isinstance(value, dict):
        raise _Bad(field, f"must be a JSON object, got {_shown(value)}")


def pair_of(inner: Check) -> Check:
    def check(value: object, field: str) -> None:
        if not isinstance(value, list) or len(value) != 2:
            raise _Bad(field, f"must be a list of two numbers, got {_shown(value)}")
        for i, v in enumerate(value):
            inner(v, f"{field}[{i}]")

    return check


def _files(value: object, field: str) -> None:
    any_object(value, field)
    entry = obj({"sha256": string(_SHA256), "bytes": integer(0)})
    for name, info in value.items():
        if name not in DATA_FILES:
            raise _Bad(f"{field}.{name}", f"is not a checkpoint file (known: {', '.join(DATA_FILES)})")
        entry(info, f"{field}.{name}")
    if MODEL_FILE not in value:
        raise _Bad(f"{field}.{MODEL_FILE}", "is missing")


_RNG = obj(
    {
        "bit_generator": string(choices=("PCG64",)),
        "state": obj({"state": integer(0, _U128), "inc": integer(0, _U128)}),
        "has_uint32": integer(0, 2),
        "uinteger": integer(0, 1 << 32),
    }
)

SAMPLER = obj(
    {
        "kind": string(choices=("random_windows",)),
        "seed": integer(0),
        "batch_size": integer(1),
        "seq_len": integer(1),
        "n_tokens": integer(1),
        "batches_drawn": integer(0),
        "rng": _RNG,
    }
)

LOSS_SCALER = obj(
    {
        "scale": number(0.0, lo_open=True),
        "good_steps": integer(0),
        "skipped": integer(0),
        "growth_interval": integer(1),
    }
)

OPTIMIZER = obj(
    {
        "t": integer(0),
        "lr": number(0.0, 1.0, lo_open=True),
        "betas": pair_of(number(0.0, 1.0, hi_open=True)),
        "eps": number(0.0, 1.0, lo_open=True),
        "weight_decay": number(0.0),
    }
)

#: The data a run trained on (`anekit.train.data.TokenDataset.identity`).
DATA = obj(
    {
        "kind": string(choices=("bundled", "text", "uint16")),
        "path": string(),
        "sha256": string(_SHA256),
        "n_tokens": integer(1),
        "bytes": integer(1),
        "tokenizer": string(),
    },
    optional=("bytes", "tokenizer"),
)

#: The learning-rate schedule a run was started with (its cosine horizon survives a change of --steps).
SCHEDULE = obj(
    {
        "lr": number(0.0, 1.0, lo_open=True),
        "warmup": integer(0),
        "min_lr_ratio": number(0.0, 1.0),
        "total_steps": integer(1),
    }
)

TOKENIZER_FILE = obj(
    {
        "name": string(choices=TOKENIZER_FILES),
        "kind": string(),
        "vocab_size": integer(1),
        "bos_id": integer(0),
        "eos_id": integer(0),
    }
)

STATE = obj(
    {
        "format": string(choices=("anekit-checkpoint",)),
        "format_version": integer(0),
        "anekit_version": string(),
        "config": any_object,  # checked field by field by ModelConfig.from_dict
        "files": _files,
        "optimizer": nullable(OPTIMIZER),
        "step": integer(0),
        "loss_scaler": nullable(LOSS_SCALER),
        "sampler": nullable(SAMPLER),
        "data": nullable(DATA),
        "tokenizer": nullable(string()),
        "tokenizer_file": nullable(TOKENIZER_FILE),
        "schedule": nullable(SCHEDULE),
        "extra": any_object,
    }
)


def validate_state(state: object, where: str) -> None:
    """Raise `CheckpointError` naming the first field of `state` that breaks the schema, and the file."""
    if not isinstance(state, dict):
        kind = {list: "a JSON array", type(None): "null"}.get(type(state), f"a {type(state).__name__}")
        raise CheckpointError(f"{where}: must hold a JSON object, holds {kind}")
    try:
        STATE(state, "")
        tf = state["tokenizer_file"]
        if tf is not None:
            if tf["name"] not in state["files"]:
                raise _Bad("tokenizer_file.name", f"names {tf['name']}, which 'files' does not list")
            for key in ("bos_id", "eos_id"):
                if tf[key] >= tf["vocab_size"]:
                    raise _Bad(f"tokenizer_file.{key}", f"{tf[key]} is outside the vocabulary")
        if (state["optimizer"] is None) != (OPTIMIZER_FILE not in state["files"]):
            raise _Bad("optimizer", f"and the file {OPTIMIZER_FILE} must be present together")
    except _Bad as e:
        raise CheckpointError(f"{where}: {e}") from None
