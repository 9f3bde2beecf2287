"""A sweep: the same benchmark over several variants (model version and source, machine
type, accelerator, replicas...), each its own run with its own run id, folders and ports.

:func:`plan_sweep` turns the sweep DAG's params into one validated RunSpec dict per variant
(every problem of every variant reported at once, before anything is created); the sweep
DAG maps its deploy -> load -> harvest -> teardown task group over that list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from caio_operators.spec import SpecError, validate_params

#: the sweep DAG's own params (the others are caio_load_test's, the variants' defaults)
SWEEP_PARAMS = ("variants",)
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,15}$")


def sweep_id(key: str) -> str:
    """The sweep's folder name: its Airflow run key as ``[a-z0-9-]``."""
    return re.sub(r"[^a-z0-9]+", "-", f"sweep-{key}".lower()).strip("-")[:63].rstrip("-")


def varied_fields(variants: Sequence[Any]) -> list[str]:
    """The params a sweep varies: every key a variant overrides (less its name). Verdicts
    between its variants may differ in these and nothing else (analysis/verdicts.py)."""
    return sorted({k for v in variants if isinstance(v, Mapping) for k in v} - {"name"})


def sweep_varies(specs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The varied params of a planned sweep: recorded by :func:`plan_sweep`, or (specs
    planned before it recorded them) the params whose values differ between variants."""
    recorded = (specs[0].get("extra") or {}).get("varies") if specs else None
    if recorded is not None:
        return list(recorded)
    keys = {k for s in specs for k in s} - {"run_id", "airflow_run_id", "extra"}
    return sorted(k for k in keys if len({repr(s.get(k)) for s in specs}) > 1)


def plan_sweep(params: Mapping[str, Any], schema: dict[str, dict[str, Any]], *, dag_id: str,
               airflow_run_id: str, key: str | None = None) -> list[dict[str, Any]]:
    """One RunSpec dict per variant: the base params overridden by the variant's entries.

    A variant is a dict of caio_load_test params plus an optional ``name`` (``v<i>`` by
    default; lowercase letters, digits, dashes); its run id derives from the sweep's run
    key and that name. Variants sharing a model name and version must share its source
    (they share the exported model). Raises SpecError listing every problem.
    """
    variants = params.get("variants")
    if not isinstance(variants, Sequence) or isinstance(variants, str) or not variants:
        raise SpecError(["variants: a non-empty list of objects is required, e.g. "
                         '[{"model_version": "v1"}, {"model_version": "v2", "replicas": 1}]'])
    base = {k: v for k, v in params.items() if k not in SWEEP_PARAMS}
    key = key or airflow_run_id
    problems: list[str] = []
    specs: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, variant in enumerate(variants):
        where = f"variants[{i}]"
        if not isinstance(variant, Mapping):
            problems.append(f"{where}: must be an object of params, got {variant!r}")
            continue
        name = str(variant.get("name", f"v{i}"))
        if not _NAME.match(name) or name in names:
            problems.append(f"{where}.name={name!r}: needs a unique name of lowercase "
                            "letters, digits and dashes (up to 16)")
        names.add(name)
        merged = {**base, **{k: v for k, v in variant.items() if k != "name"}}
        try:
            spec = validate_params(merged, schema, dag_id=dag_id, airflow_run_id=airflow_run_id,
                                   key=f"{key}-{name}")
        except SpecError as exc:
            problems += [f"{where}.{p}" for p in exc.problems]
            continue
        specs.append({**spec.to_dict(), "extra": {"variant": name, "variant_index": i}})
    varies = varied_fields(variants)
    for planned in specs:
        planned["extra"]["varies"] = varies
    sources: dict[tuple[str, str], str] = {}
    for planned in specs:
        model = (planned["model_name"], planned["model_version"])
        if sources.setdefault(model, planned["model_source"]) != planned["model_source"]:
            problems.append(f"variants: {model[0]}/{model[1]} has two model sources "
                            f"({sources[model]!r}, {planned['model_source']!r}); give each source "
                            "its own model_version (they would share one exported model)")
    if problems:
        raise SpecError(problems)
    return specs
