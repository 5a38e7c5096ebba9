"""Validating bench records against `record.schema.json` with the `jsonschema` library (Draft 2020-12).

`jsonschema` does the validating; this module only says where a record is wrong, one line per problem
as "JSON path: problem" (e.g. `$.points[0].timing.n: 0 is below the minimum 1`). Every keyword the
record schema uses has a phrasing in `_PHRASES`; a violation of a keyword without one is a `ValueError`
(add a phrasing), so a message never silently degrades. Where a value matches none of a `oneOf`'s
alternatives, the problems of the alternative it came closest to are listed under that line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from functools import lru_cache
from importlib import resources

from jsonschema import Draft202012Validator, ValidationError

from ..errors import AnekitError

#: how many problems `validate` puts in its message
MAX_LISTED = 50


class SchemaError(AnekitError, ValueError):
    """A record does not match the schema; the message lists every problem with its JSON path."""


@lru_cache(maxsize=1)
def record_schema() -> dict:
    """The record schema, with the experiment names filled in from the registry (`anekit.bench`)."""
    from . import EXPERIMENTS

    text = resources.files(__package__).joinpath("record.schema.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    schema["$defs"]["record"]["properties"]["experiment"]["enum"] = list(EXPERIMENTS)
    return schema


@lru_cache(maxsize=1)
def _record_validator() -> Draft202012Validator:
    return Draft202012Validator(record_schema())


def errors(instance, schema: dict | None = None) -> list[str]:
    """Every way `instance` violates `schema` (default: the record schema), as "path: problem"."""
    validator = _record_validator() if schema is None else Draft202012Validator(schema)
    return _lines(validator.iter_errors(instance))


def validate(instance, schema: dict | None = None) -> None:
    """Raise `SchemaError` listing every problem, or return quietly."""
    errs = errors(instance, schema)
    if errs:
        raise SchemaError(f"{len(errs)} schema violation(s):\n  " + "\n  ".join(errs[:MAX_LISTED]))


def _lines(errs: Iterable[ValidationError]) -> list[str]:
    out: list[str] = []
    for e in sorted(errs, key=lambda e: (list(map(str, e.absolute_path)), str(e.validator))):
        out += _describe(e)
    return list(dict.fromkeys(out))  # `required` reports once per missing name; each line once


def _describe(e: ValidationError) -> list[str]:
    phrase = _PHRASES.get(str(e.validator))
    if phrase is None:
        raise ValueError(
            f"schema keyword {e.validator!r} at {e.json_path} is not supported by anekit.bench.schema's "
            "messages; add a phrasing for it to _PHRASES"
        )
    if e.validator == "oneOf":
        return _one_of(e)
    return [f"{e.json_path}: {line}" for line in phrase(e)]


def _one_of(e: ValidationError) -> list[str]:
    n = len(e.validator_value)
    if not e.context:  # no sub-errors: more than one alternative matched
        return [f"{e.json_path}: matches more than one of the {n} oneOf alternatives, expected 1"]
    alternatives: dict[int, list[ValidationError]] = {}
    for sub in e.context:
        alternatives.setdefault(sub.relative_schema_path[0], []).append(sub)
    closest = min(alternatives.items(), key=lambda kv: (_misfit(kv[1]), kv[0]))
    head = f"{e.json_path}: matches none of the {n} oneOf alternatives, expected 1; alternative {closest[0]}:"
    return [head] + ["  " + line for line in _lines(closest[1])]


def _misfit(errs: list[ValidationError]) -> tuple[int, int, int]:
    """How far an alternative is from what was meant: the wrong type altogether, then a `const` that
    tells the alternatives apart (a record's "kind"), then the number of problems."""
    wrong_type = any(e.validator == "type" and not e.relative_path for e in errs)
    return (int(wrong_type), sum(e.validator == "const" for e in errs), len(errs))


def _type_names(e: ValidationError) -> str:
    types = e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
    return " or ".join(types)


def _missing(e: ValidationError) -> list[str]:
    return [f"missing required property {name!r}" for name in e.validator_value if name not in e.instance]


def _unexpected(e: ValidationError) -> list[str]:
    known = e.schema.get("properties", {})
    return [f"unexpected property {name!r}" for name in e.instance if name not in known]


_PHRASES: dict[str, Callable[[ValidationError], list[str]]] = {
    "type": lambda e: [f"expected {_type_names(e)}, got {type(e.instance).__name__}"],
    "const": lambda e: [f"expected {e.validator_value!r}, got {e.instance!r}"],
    "enum": lambda e: [f"{e.instance!r} is not one of {e.validator_value}"],
    "minimum": lambda e: [f"{e.instance} is below the minimum {e.validator_value}"],
    "minLength": lambda e: [f"string shorter than {e.validator_value}"],
    "minItems": lambda e: [f"fewer than {e.validator_value} items"],
    "pattern": lambda e: [f"{e.instance!r} does not match {e.validator_value!r}"],
    "required": _missing,
    "additionalProperties": _unexpected,
    "oneOf": lambda e: [],  # `_one_of`
}
