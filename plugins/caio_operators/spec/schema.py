"""The params' JSON schema, derived from RunSpec's declarations: what the DAG turns into
Airflow ``Param`` objects (the Trigger form's fields, sections and help text) and what
``validate_params`` checks values against. docs/params.md's table is rendered here too."""

from __future__ import annotations

import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from caio_operators.spec.runspec import PARAMS, RunSpec

#: The JSON type of a string param whose empty default means "not set": the Trigger form
#: marks a field of type "string" required and will not trigger while it is empty, so these
#: also accept null, read as "".
OPTIONAL_STRING = ["string", "null"]

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def param_schema(local_root: str | Path, images_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every param as ``name -> JSON schema`` (with ``default``, ``section``, ``title`` and
    ``description``), in the form's order.

    ``local_root`` is where the default ``file://`` bucket and DuckDB warehouse live;
    ``images_dir`` holds the sample images used for payloads and the export check.
    """
    hints = typing.get_type_hints(RunSpec)
    defaults = {f.name: f.default for f in fields(RunSpec)}
    schema = {}
    for name, meta in PARAMS.items():
        make_default = meta["default_from"]
        default = (make_default(Path(local_root), Path(images_dir)) if make_default
                   else defaults[name])
        prop: dict[str, Any] = {"default": default, **_json_type(hints[name], default)}
        prop.update(meta["rules"])
        prop.update(section=meta["section"], title=meta["title"],
                    description=meta["description"])
        schema[name] = prop
    return schema


def _json_type(hint: Any, default: Any) -> dict[str, Any]:
    if typing.get_origin(hint) is Literal:
        return {"type": "string", "enum": list(typing.get_args(hint))}
    json_type = _JSON_TYPES[hint]
    if json_type == "string" and default == "":
        return {"type": list(OPTIONAL_STRING)}
    return {"type": json_type}


def params_markdown() -> str:
    """docs/params.md's tables: one row per param, a table per form section."""
    rows: dict[str, list[str]] = {}
    for name, prop in param_schema("/", "/").items():
        make_default = PARAMS[name]["default_from"]
        default = make_default.__doc__ if make_default else _default_text(prop["default"])
        form = PARAMS[name]["form"]
        what = accepted(prop) or (f"empty, or {form[1]}" if form else "-")
        rows.setdefault(prop["section"], []).append(
            f"| `{name}` | {default} | {_cell(what)} | {_cell(prop['description'])} |")
    return "\n\n".join(
        f"### {section}\n\n| param | default | accepted | what it does |\n|---|---|---|---|\n"
        + "\n".join(lines) for section, lines in rows.items())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _default_text(value: Any) -> str:
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def accepted(prop: dict[str, Any]) -> str:
    """The values a param accepts, in words (SpecError's messages and the params table)."""
    from caio_operators.spec.declare import RUN_ID_OR_EMPTY

    if "enum" in prop:
        return ", ".join(map(str, prop["enum"]))
    if "minimum" in prop or "maximum" in prop or "exclusiveMinimum" in prop:
        low = prop.get("minimum", prop.get("exclusiveMinimum"))
        op = ">" if "exclusiveMinimum" in prop else ">="
        high = prop.get("maximum")
        return f"{prop['type']} {op} {low}" + (f" and <= {high}" if high is not None else "")
    if prop.get("pattern") == RUN_ID_OR_EMPTY:
        return "a run_id: lowercase letters, digits and dashes, or empty"
    if "pattern" in prop:
        return "a letter, then up to 62 letters, digits or underscores"
    return ""
