"""Check a REST body against a Google API discovery document, offline.

The Dashboards API (``monitoring`` v1) has no proto package installed here, but
``google-api-python-client`` ships its discovery document, which describes every message
field, type and enum. ``check(doc, "Dashboard", body)`` walks the body like the server's
JSON parser would: unknown fields, wrong types, bad enum values and malformed durations
are reported with their JSON path, all at once.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

_DURATION = re.compile(r"^-?\d+(\.\d{1,9})?s$")
_INT64 = re.compile(r"^-?\d+$")


class SchemaError(ValueError):
    """The body does not match the API's schema; ``problems`` lists each mismatch."""

    def __init__(self, schema: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"not a valid {schema}:\n  - " + "\n  - ".join(problems))


@cache
def discovery_document(api: str, version: str) -> dict[str, Any]:
    """The discovery document googleapiclient ships for ``api`` ``version``."""
    documents = resources.files("googleapiclient.discovery_cache") / "documents"
    return json.loads((documents / f"{api}.{version}.json").read_text(encoding="utf-8"))


def check(doc: dict[str, Any], schema_id: str, body: Any) -> None:
    """Raise ``SchemaError`` unless ``body`` is a valid ``schema_id`` message of ``doc``."""
    problems: list[str] = []
    _check(doc["schemas"], {"$ref": schema_id}, body, "$", problems)
    if problems:
        raise SchemaError(schema_id, problems)


def _check(schemas: dict[str, Any], prop: dict[str, Any], value: Any, path: str,
           problems: list[str]) -> None:
    if "$ref" in prop:
        prop = schemas[prop["$ref"]]
    kind = prop.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            problems.append(f"{path}: expected an object, got {type(value).__name__}")
            return
        properties = prop.get("properties")
        extra = prop.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                _check(schemas, properties[key], item, f"{path}.{key}", problems)
            elif extra is not None:
                _check(schemas, extra, item, f"{path}.{key}", problems)
            else:
                known = ", ".join(sorted(properties or ()))
                problems.append(f"{path}: unknown field {key!r} (known: {known})")
    elif kind == "array":
        if not isinstance(value, list):
            problems.append(f"{path}: expected an array, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(schemas, prop["items"], item, f"{path}[{i}]", problems)
    else:
        problem = _scalar_problem(prop, value)
        if problem:
            problems.append(f"{path}: {problem}")


def _scalar_problem(prop: dict[str, Any], value: Any) -> str:
    kind, fmt = prop.get("type"), prop.get("format")
    if kind == "any":
        return ""
    if kind == "boolean":
        return "" if isinstance(value, bool) else f"expected true/false, got {value!r}"
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return "" if ok else f"expected an integer, got {value!r}"
    if kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return "" if ok else f"expected a number, got {value!r}"
    if kind == "string":
        if fmt == "int64":  # JSON carries int64 as a string; a plain integer also parses
            ok = (isinstance(value, int) and not isinstance(value, bool)) or (
                isinstance(value, str) and _INT64.match(value) is not None)
            return "" if ok else f"expected an int64, got {value!r}"
        if not isinstance(value, str):
            return f"expected a string, got {value!r}"
        if "enum" in prop and value not in prop["enum"]:
            return f"{value!r} is not one of {', '.join(prop['enum'])}"
        if fmt == "google-duration" and not _DURATION.match(value):
            return f"expected a duration like '60s', got {value!r}"
        return ""
    return f"unsupported schema type {kind!r}"
