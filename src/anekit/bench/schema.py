"""Validating bench records against `record.schema.json`, without a JSON Schema dependency.

`jsonschema` is not among anekit's dependencies, so this is a small validator for exactly the subset
of JSON Schema (2020-12) the record schema uses: `type` (one or a list), `const`, `enum`, `properties`,
`required`, `additionalProperties` (false or a schema), `items`, `minItems`, `minimum`, `minLength`,
`pattern`, `oneOf`, and local `$ref` ("#/$defs/..."). A keyword outside that subset is an error, so
the schema cannot silently grow past what is checked.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources

from ..errors import AnekitError

SUPPORTED = {
    "$schema",
    "$id",
    "title",
    "description",
    "$defs",
    "type",
    "const",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "minimum",
    "minLength",
    "pattern",
    "oneOf",
    "$ref",
}
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


class SchemaError(AnekitError, ValueError):
    """A record does not match the schema; the message lists every problem with its JSON path."""


@lru_cache(maxsize=1)
def record_schema() -> dict:
    return json.loads(resources.files(__package__).joinpath("record.schema.json").read_text(encoding="utf-8"))


def errors(instance, schema: dict | None = None) -> list[str]:
    """Every way `instance` violates `schema` (default: the record schema), as "path: problem"."""
    root = schema if schema is not None else record_schema()
    out: list[str] = []
    _check(instance, root, root, "$", out)
    return out


def validate(instance, schema: dict | None = None) -> None:
    """Raise `SchemaError` listing every problem, or return quietly."""
    errs = errors(instance, schema)
    if errs:
        raise SchemaError(f"{len(errs)} schema violation(s):\n  " + "\n  ".join(errs[:50]))


def _resolve(ref: str, root: dict) -> dict:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref is supported, not {ref!r}")
    node = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _check(v, s: dict, root: dict, path: str, out: list[str]) -> None:
    unknown = set(s) - SUPPORTED
    if unknown:
        raise ValueError(f"schema keyword(s) {sorted(unknown)} at {path} are not supported by this validator")
    if "$ref" in s:
        _check(v, _resolve(s["$ref"], root), root, path, out)
    if "oneOf" in s:
        matches = [sub for sub in s["oneOf"] if not errors_in(v, sub, root, path)]
        if len(matches) != 1:
            detail = "; ".join(e for sub in s["oneOf"] for e in errors_in(v, sub, root, path)[:2])
            out.append(f"{path}: matches {len(matches)} of the oneOf alternatives, expected 1 ({detail})")
    if "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(_TYPES[t](v) for t in types):
            out.append(f"{path}: expected {' or '.join(types)}, got {type(v).__name__}")
            return
    if "const" in s and v != s["const"]:
        out.append(f"{path}: expected {s['const']!r}, got {v!r}")
    if "enum" in s and v not in s["enum"]:
        out.append(f"{path}: {v!r} is not one of {s['enum']}")
    if "minimum" in s and _TYPES["number"](v) and v < s["minimum"]:
        out.append(f"{path}: {v} is below the minimum {s['minimum']}")
    if "minLength" in s and isinstance(v, str) and len(v) < s["minLength"]:
        out.append(f"{path}: string shorter than {s['minLength']}")
    if "pattern" in s and isinstance(v, str) and not re.search(s["pattern"], v):
        out.append(f"{path}: {v!r} does not match {s['pattern']!r}")
    if isinstance(v, dict):
        props = s.get("properties", {})
        for name in s.get("required", []):
            if name not in v:
                out.append(f"{path}: missing required property {name!r}")
        for name, val in v.items():
            if name in props:
                _check(val, props[name], root, f"{path}.{name}", out)
            elif s.get("additionalProperties") is False:
                out.append(f"{path}: unexpected property {name!r}")
            elif isinstance(s.get("additionalProperties"), dict):
                _check(val, s["additionalProperties"], root, f"{path}.{name}", out)
    if isinstance(v, list):
        if "minItems" in s and len(v) < s["minItems"]:
            out.append(f"{path}: fewer than {s['minItems']} items")
        if "items" in s:
            for i, item in enumerate(v):
                _check(item, s["items"], root, f"{path}[{i}]", out)


def errors_in(v, s: dict, root: dict, path: str) -> list[str]:
    out: list[str] = []
    _check(v, s, root, path, out)
    return out
