"""Checking a run's params: the JSON schema of every param, then the rules a schema cannot
express (cross-field constraints, URI forms, cloud resource names). Nothing is created
before validation passes, and every problem is reported at once with the field name and
what is accepted."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from caio_operators.metrics.gpu import PATTERN as GPU_PATTERN
from caio_operators.spec.declare import (
    BUCKET_SCHEMES,
    CLOUD_TARGETS,
    LOCAL_MAX_REPLICAS,
    OPEN_LOOP_SHAPES,
    WAREHOUSE_SCHEMES,
)
from caio_operators.spec.runspec import PARAMS, RunSpec, make_run_id
from caio_operators.spec.schema import OPTIONAL_STRING, accepted

_GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


class SpecError(ValueError):
    """Invalid run parameters; ``problems`` lists one message per field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "invalid run parameters:\n  - " + "\n  - ".join(problems)
            + "\nFix the values above (Trigger form or --conf JSON) and trigger again."
        )


def validate_params(
    params: Mapping[str, Any],
    schema: dict[str, dict[str, Any]],
    *,
    dag_id: str,
    airflow_run_id: str,
    key: str | None = None,
) -> RunSpec:
    """Check ``params`` against ``schema`` and the cross-field rules; return the RunSpec.

    Raises SpecError listing every problem. Unknown keys are rejected too: a typo in a
    --conf key would otherwise silently run with the default. ``key`` (default: the Airflow
    run id) is what the run id derives from: see :func:`run_key`.
    """
    known = set(schema)
    merged = {name: prop["default"] for name, prop in schema.items()}
    unknown = sorted(set(params) - known)
    merged.update({k: "" if v is None and schema[k]["type"] == OPTIONAL_STRING else v
                   for k, v in params.items() if k in known})
    problems = [f"{k}: unknown parameter (accepted: {', '.join(sorted(known))})"
                for k in unknown]
    problems += _schema_problems(merged, schema)
    if not problems:
        problems += _rule_problems(merged)
    if problems:
        raise SpecError(problems)
    run_id = make_run_id(merged["model_name"], merged["model_version"], key or airflow_run_id)
    return RunSpec(run_id=run_id, dag_id=dag_id, airflow_run_id=airflow_run_id, **merged)


def spec_json(spec: RunSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


def _schema_problems(params: Mapping[str, Any], schema: dict[str, dict[str, Any]]) -> list[str]:
    import jsonschema

    problems = []
    for name, prop in schema.items():
        if name not in params:
            continue
        rules = {k: v for k, v in prop.items() if k not in ("default", "section", "examples")}
        validator = jsonschema.Draft7Validator(rules)
        for err in validator.iter_errors(params[name]):
            what = accepted(prop)
            problems.append(f"{name}={params[name]!r}: {err.message}" + (
                f" (accepted: {what})" if what else ""))
            break
    return problems


def _uri_problems(name: str, value: str, schemes: tuple[str, ...]) -> list[str]:
    parsed = urlparse(value)
    form = {"file": "file:///absolute/path", "gs": "gs://bucket/prefix",
            "duckdb": "duckdb:///absolute/path.duckdb",
            "bigquery": "bigquery://project/dataset[?location=EU]"}
    forms = " or ".join(form[s] for s in schemes)
    if parsed.scheme not in schemes:
        return [f"{name}={value!r}: unsupported scheme {parsed.scheme or '(none)'!r} "
                f"(accepted: {forms})"]
    if any(c in value for c in "\n\r\0;`$|&<>\"'\\"):
        return [f"{name}={value!r}: contains characters not allowed in a URI "
                f"(accepted: {forms})"]
    if parsed.scheme in ("file", "duckdb"):
        if parsed.netloc or not parsed.path.startswith("/"):
            return [f"{name}={value!r}: needs an absolute path after '{parsed.scheme}://' "
                    f"(accepted: {forms})"]
        if ".." in Path(parsed.path).parts:
            return [f"{name}={value!r}: '..' is not allowed (accepted: {forms})"]
    if parsed.scheme == "gs" and not _GCS_BUCKET.match(parsed.netloc or ""):
        return [f"{name}={value!r}: {parsed.netloc!r} is not a valid bucket name "
                f"(accepted: {forms})"]
    if parsed.scheme == "bigquery":
        # pure URI parsing (no Google library), imported here to keep DAG parsing light
        from caio_operators.results.warehouse import WarehouseError
        from caio_operators.results.warehouse.bigquery import parse_uri

        try:
            parse_uri(value)
        except WarehouseError as exc:
            return [f"{name}={value!r}: {exc} (accepted: {forms})"]
    return []


def _rule_problems(p: Mapping[str, Any]) -> list[str]:
    from caio_operators.model.sources import ModelSourceError, parse_source

    problems: list[str] = []
    try:
        parse_source(p["model_source"])
    except ModelSourceError as exc:
        problems.append(f"model_source={p['model_source']!r}: {exc}")
    problems += _uri_problems("bucket", p["bucket"], BUCKET_SCHEMES)
    problems += _uri_problems("warehouse", p["warehouse"], WAREHOUSE_SCHEMES)
    if p["labels_uri"]:
        problems += _uri_problems("labels_uri", p["labels_uri"], BUCKET_SCHEMES)
    if p.get("price_table"):
        problems += _uri_problems("price_table", p["price_table"], BUCKET_SCHEMES)
    images = p["images_uri"]
    if "://" in images:
        problems += _uri_problems("images_uri", images, BUCKET_SCHEMES)
    elif not Path(images).is_absolute():
        problems.append(f"images_uri={images!r}: needs an absolute path or a file:// / gs:// URI")
    if p["target"] == "local" and not p["bucket"].startswith("file://"):
        problems.append(f"bucket={p['bucket']!r}: target=local serves from and records to this "
                        "machine (accepted: file:///absolute/path)")
    if p["target"] == "endpoint":
        url = urlparse(p["endpoint_url"])
        if url.scheme not in ("http", "https") or not url.netloc:
            problems.append(
                f"endpoint_url={p['endpoint_url']!r}: target=endpoint needs the full predict URL "
                "of the existing endpoint (accepted: http(s)://host[:port]/path)")
    elif p["endpoint_url"]:
        problems.append(f"endpoint_url={p['endpoint_url']!r}: only used with target=endpoint "
                        f"(target is {p['target']!r}); leave it empty")
    if p["server_batch_max"] > 1 and p["target"] != "local":
        problems.append(f"server_batch_max={p['server_batch_max']}: only the local model "
                        f"server batches (target is {p['target']!r}); leave it 0")
    problems += _gpu_problems(p)
    if p["load_shape"] == "staircase":
        if p["step_users"] > p["users"]:
            problems.append(f"step_users={p['step_users']}: larger than users={p['users']} "
                            "(accepted: 1 <= step_users <= users)")
        problems += _step_problems(p)
    if p.get("baseline_run_id") and p.get("baseline_version"):
        problems.append(f"baseline_run_id={p['baseline_run_id']!r}: names the baseline run, "
                        f"so baseline_version={p['baseline_version']!r} would be ignored; "
                        "set only one of them")
    problems += _open_loop_problems(p)
    problems += _cloud_problems(p)
    if p["load_shape"] not in OPEN_LOOP_SHAPES and p["workers"] > p["users"]:
        problems.append(f"workers={p['workers']}: more workers than users={p['users']} leaves "
                        "workers idle (accepted: workers <= users)")
    return problems


def _step_problems(p: Mapping[str, Any]) -> list[str]:
    """A staircase's (of users or of rates) step must fit in the run."""
    if p["step_duration_s"] > p["duration_s"]:
        return [f"step_duration_s={p['step_duration_s']}: longer than "
                f"duration_s={p['duration_s']} (accepted: <= duration_s)"]
    return []


def _open_loop_problems(p: Mapping[str, Any]) -> list[str]:
    problems = []
    if p["load_shape"] == "open_rate" and p["rate_profile"] == "staircase":
        if p["step_rate"] > p["rate"]:
            problems.append(f"step_rate={p['step_rate']}: above rate={p['rate']}, the top of "
                            "the staircase (accepted: step_rate <= rate)")
        problems += _step_problems(p)
    if p["load_shape"] == "open_rate" and p["rate_profile"] == "spike" and (
            p["spike_start_s"] >= p["duration_s"]):
        problems.append(f"spike_start_s={p['spike_start_s']}: the spike must start before "
                        f"duration_s={p['duration_s']} ends")
    if p["load_shape"] == "peak_search":
        if p["max_rate"] and p["max_rate"] < p["rate"]:
            problems.append(f"max_rate={p['max_rate']}: below the starting rate={p['rate']} "
                            "(accepted: 0 for no cap, or >= rate)")
        if p["duration_s"] < 4 * p["window_s"]:
            problems.append(f"duration_s={p['duration_s']}: too short to judge even one rate "
                            f"with window_s={p['window_s']} (accepted: >= 4 x window_s; "
                            "a search usually needs 20 x or more)")
    return problems


def _gpu_problems(p: Mapping[str, Any]) -> list[str]:
    gpus = p["local_gpus"] or ""
    if gpus and p["target"] != "local":
        return [f"local_gpus={gpus!r}: only the local model server is pinned to GPUs "
                f"(target is {p['target']!r}; cloud targets: accelerator_type); leave it empty"]
    if not re.match(GPU_PATTERN, gpus):
        return [f"local_gpus={gpus!r}: not a GPU choice (accepted: empty, none, all, or "
                "device indices like 0,1)"]
    return []


def _cloud_problems(p: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, meta in PARAMS.items():
        if meta["form"] and p[name] and not re.match(meta["form"][0], p[name]):
            problems.append(f"{name}={p[name]!r}: not {meta['form'][1]}")
    needs_project = p["target"] in ("vertex", "caip") or p["load_runner"] == "gke" or (
        p["warehouse"].startswith("bigquery://"))
    if needs_project and not p["project"]:
        problems.append("project: required for cloud targets, gke and bigquery:// "
                        "(accepted: a project id like my-project-123)")
    if p["target"] in CLOUD_TARGETS:
        target = p["target"]
        if not p["bucket"].startswith("gs://"):
            problems.append(f"bucket={p['bucket']!r}: target={target} serves the model from "
                            "Cloud Storage (accepted: gs://bucket/prefix)")
        if not p["region"]:
            problems.append(f"region: required with target={target} "
                            "(accepted: a region like us-central1)")
    if p["load_runner"] == "gke":
        if p["target"] == "local":
            problems.append("load_runner='gke': target=local serves on 127.0.0.1 of the Airflow "
                            "worker, which GKE pods cannot reach (accepted with gke: target "
                            "vertex, caip or endpoint)")
        for name in ("gke_location", "gke_cluster", "locust_image"):
            if not p[name]:
                problems.append(f"{name}: required with load_runner=gke")
        if not p["bucket"].startswith("gs://"):
            problems.append(f"bucket={p['bucket']!r}: load_runner=gke writes results from pods "
                            "(accepted: gs://bucket/prefix)")
    if bool(p["accelerator_type"]) != (p["accelerator_count"] > 0):
        problems.append(f"accelerator_count={p['accelerator_count']}: set accelerator_type and "
                        "accelerator_count together (both empty/0 for CPU only)")
    if p["max_replicas"] < p["min_replicas"]:
        problems.append(f"max_replicas={p['max_replicas']}: below min_replicas="
                        f"{p['min_replicas']} (accepted: max_replicas >= min_replicas)")
    problems.extend(_local_autoscaling_problems(p))
    return problems


def _local_autoscaling_problems(p: Mapping[str, Any]) -> list[str]:
    if not p["local_autoscaling"]:
        return []
    if p["target"] != "local":
        return [f"local_autoscaling=true: for target=local only (target={p['target']} "
                "scales on min_replicas, max_replicas and autoscaling_target by itself)"]
    limit = LOCAL_MAX_REPLICAS
    problems = []
    if p["max_replicas"] > limit:
        problems.append(f"max_replicas={p['max_replicas']}: the local server runs at most "
                        f"{limit} replicas (accepted: 1..{limit})")
    if p["min_replicas"] >= p["max_replicas"]:
        problems.append(f"local_autoscaling=true: min_replicas={p['min_replicas']} is not "
                        f"below max_replicas={p['max_replicas']}, so nothing can scale "
                        "(accepted: min_replicas < max_replicas)")
    elif not p["min_replicas"] <= p["replicas"] <= p["max_replicas"]:
        problems.append(f"replicas={p['replicas']}: with local_autoscaling it is the "
                        f"starting count (accepted: min_replicas={p['min_replicas']} .. "
                        f"max_replicas={p['max_replicas']})")
    return problems


