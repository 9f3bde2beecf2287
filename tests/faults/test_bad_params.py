"""Bad params: each is refused by validation with a message naming the field and what is
accepted, and nothing is created (no bucket folder, no warehouse file).

tests/test_spec.py covers the ordinary range and choice errors; these are the hostile and
extreme values. The whole DAG refusing bad params before creating anything is
tests/test_e2e.py::test_bad_params_fail_validation_and_create_nothing; the SavedModel
without the expected signatures and the empty or corrupt image folders are in
tests/model/test_export.py.
"""

from __future__ import annotations

import pytest
from faults_helpers import IMAGES

from caio_operators.spec import SpecError, param_schema, validate_params

HOSTILE_NAMES = [
    "../etc", "a/b", "a\\b", "v1;rm -rf /", "$(id)", "`id`", "a|b", "a&b", "a'b", 'a"b',
    "x' OR '1'='1", "v1; DROP TABLE runs; --", "a b", "a\nb", "a\0b", "", "x" * 64, "1abc",
    "é",
]


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    return param_schema(tmp_path_factory.mktemp("home"), IMAGES)


def refused(schema, tmp_path, **params) -> str:
    base = {"bucket": f"file://{tmp_path}/bucket",
            "warehouse": f"duckdb://{tmp_path}/wh.duckdb", **params}
    with pytest.raises(SpecError) as failed:
        validate_params(base, schema, dag_id="caio_load_test", airflow_run_id="manual__1")
    assert not any(tmp_path.iterdir()), "validation created something"
    return str(failed.value)


@pytest.mark.parametrize("field", ["model_name", "model_version"])
@pytest.mark.parametrize("value", HOSTILE_NAMES)
def test_hostile_model_names_and_versions(schema, tmp_path, field, value):
    message = refused(schema, tmp_path, **{field: value})
    assert field in message and "letter" in message


@pytest.mark.parametrize(("params", "field"), [
    ({"users": -1}, "users"), ({"users": 0}, "users"), ({"users": 10**9}, "users"),
    ({"users": 2.5}, "users"), ({"users": "8"}, "users"), ({"users": True}, "users"),
    ({"duration_s": -5}, "duration_s"), ({"duration_s": 10**9}, "duration_s"),
    ({"duration_s": float("nan")}, "duration_s"), ({"duration_s": float("inf")}, "duration_s"),
    ({"load_shape": "open_rate", "rate": -1}, "rate"),
    ({"load_shape": "open_rate", "rate": 0}, "rate"),
    ({"load_shape": "open_rate", "rate": 10**12}, "rate"),
    ({"spawn_rate": -3}, "spawn_rate"), ({"workers": 10**6}, "workers"),
    ({"replicas": 0}, "replicas"), ({"instances_per_request": 10**6}, "instances_per_request"),
    ({"target": "kubernetes"}, "target"), ({"target": "local; rm"}, "target"),
    ({"load_shape": "sawtooth"}, "load_shape"), ({"protocol": "grpc"}, "protocol"),
    ({"signature": "serving_default'; --"}, "signature"), ({"no_such_param": 1}, "no_such_param"),
])
def test_out_of_range_and_unknown_values(schema, tmp_path, params, field):
    assert field in refused(schema, tmp_path, **params)


@pytest.mark.parametrize(("field", "value"), [
    ("bucket", "relative/path"), ("bucket", "file://relative"), ("bucket", "s3://b/x"),
    ("bucket", "file:///tmp/../etc"), ("bucket", "file:///tmp/x;rm -rf /"),
    ("bucket", "file:///tmp/$(id)"), ("bucket", "gs://UPPER_bad/x"), ("bucket", "gs://"),
    ("warehouse", "duckdb://rel.duckdb"), ("warehouse", "sqlite:///tmp/x.db"),
    ("warehouse", "duckdb:///tmp/x.duckdb'; DROP TABLE runs; --"),
    ("warehouse", "bigquery://my-project/runs;DROP"), ("warehouse", "bigquery://my-project/"),
    ("warehouse", "bigquery://p/ds"), ("warehouse", "bigquery://my-project/a-b"),
    ("endpoint_url", "ftp://x/y"),
    ("labels_uri", "http://x/labels.txt"),
    ("model_source", "builtin:../../etc"),
    ("model_source", "pip:evil"),
])
def test_malformed_uris_and_sources(schema, tmp_path, field, value):
    params = {field: value}
    if field == "endpoint_url":
        params["target"] = "endpoint"
    message = refused(schema, tmp_path, **params)
    assert field in message


def test_every_problem_is_listed_at_once(schema, tmp_path):
    message = refused(schema, tmp_path, users=-1, model_name="a/b", target="nowhere",
                      spawn_rate=-1)
    for field in ("users", "model_name", "target", "spawn_rate"):
        assert field in message
