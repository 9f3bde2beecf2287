"""The run spec: every param of a run declared once, as a field of ``RunSpec``
(``spec.runspec``, with the types and helpers of ``spec.declare``); the JSON schema, Airflow
Params and docs table derived from it (``spec.schema``); the checks (``spec.checks``)."""

from caio_operators.spec.checks import SpecError, spec_json, validate_params
from caio_operators.spec.declare import (
    ARRIVALS,
    BUCKET_SCHEMES,
    CLOUD_TARGETS,
    LOAD_RUNNERS,
    LOAD_SHAPES,
    LOCAL_MAX_REPLICAS,
    OPEN_LOOP_SHAPES,
    PROTOCOLS,
    RATE_PROFILES,
    REGRESSION_PERCENTILES,
    SIGNATURES,
    TARGETS,
    WAREHOUSE_SCHEMES,
)
from caio_operators.spec.runspec import PARAMS, RunSpec, make_run_id, run_key
from caio_operators.spec.schema import OPTIONAL_STRING, param_schema, params_markdown

__all__ = [
    "ARRIVALS", "BUCKET_SCHEMES", "CLOUD_TARGETS", "LOAD_RUNNERS", "LOAD_SHAPES",
    "LOCAL_MAX_REPLICAS", "OPEN_LOOP_SHAPES", "OPTIONAL_STRING", "PARAMS", "PROTOCOLS",
    "RATE_PROFILES", "REGRESSION_PERCENTILES", "SIGNATURES", "TARGETS", "WAREHOUSE_SCHEMES",
    "RunSpec", "SpecError", "make_run_id", "param_schema", "params_markdown", "run_key",
    "spec_json", "validate_params",
]
