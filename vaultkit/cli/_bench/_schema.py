"""The published JSON schema of a run (``vaultkit-bench/1``) and a validator for the subset it uses.

vaultkit validates what ``--json-out`` writes and what ``--compare`` and ``--input`` read without
depending on a JSON Schema library: the schema uses only ``type``, ``const``, ``enum``,
``properties``, ``required``, ``additionalProperties``, ``items``, ``minimum``, ``pattern`` and local
``$ref``; any other keyword in it is refused, so the validator never silently ignores a rule.
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["SCHEMA_FILE", "SchemaError", "load_schema", "validate"]

SCHEMA_FILE = "vaultkit-bench-1.schema.json"

_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "title", "description"})
_KNOWN = _ANNOTATIONS | {
    "type",
    "const",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minimum",
    "pattern",
    "$ref",
}


class SchemaError(ValueError):
    """A document does not match the schema; the message names the path and the rule."""


@cache
def load_schema() -> dict[str, Any]:
    """Return the published schema (a fresh parse is cached; do not mutate it)."""
    text = resources.files("vaultkit.cli._bench").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _type_ok(value: object, name: str) -> bool:
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(float(value))
        )
    if name == "string":
        return isinstance(value, str)
    if name == "array":
        return isinstance(value, list)
    if name == "object":
        return isinstance(value, dict)
    raise SchemaError(f"schema uses unknown type {name!r}")


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#/"):
        raise SchemaError(f"only local references are supported, not {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    if not isinstance(node, dict):
        raise SchemaError(f"reference {ref!r} is not a schema")
    return node


def _check(value: object, schema: dict[str, Any], root: dict[str, Any], path: str) -> None:
    unknown = set(schema) - _KNOWN
    if unknown:
        raise SchemaError(f"schema keyword(s) {sorted(unknown)} are not supported")
    if "$ref" in schema:
        _check(value, _resolve(root, schema["$ref"]), root, path)
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, n) for n in names):
            raise SchemaError(f"{path}: expected {' or '.join(names)}")
    if "const" in schema and value != schema["const"]:
        raise SchemaError(f"{path}: must be {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{path}: must be one of {schema['enum']!r}")
    if "minimum" in schema and _type_ok(value, "number"):
        if float(value) < schema["minimum"]:  # type: ignore[arg-type]
            raise SchemaError(f"{path}: must be at least {schema['minimum']}")
    if "pattern" in schema and isinstance(value, str):
        if re.search(schema["pattern"], value) is None:
            raise SchemaError(f"{path}: does not match {schema['pattern']!r}")
    if isinstance(value, dict):
        for name in schema.get("required", ()):
            if name not in value:
                raise SchemaError(f"{path}: missing {name!r}")
        properties: dict[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                _check(item, properties[name], root, f"{path}.{name}")
            elif extra is False:
                raise SchemaError(f"{path}: unexpected field {name!r}")
            elif isinstance(extra, dict):
                _check(item, extra, root, f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            _check(item, schema["items"], root, f"{path}[{index}]")


def validate(document: object, schema: dict[str, Any] | None = None) -> None:
    """Check ``document`` against the run schema (or ``schema``).

    Raises:
        SchemaError: the first mismatch, by path (``$.suites[0].results[3].stats``).
    """
    root = schema if schema is not None else load_schema()
    _check(document, root, root, "$")
