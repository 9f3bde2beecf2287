"""Params validation: good values make a RunSpec; each bad value names its field."""

from __future__ import annotations

import pytest

from caio_operators.spec import SpecError, make_run_id, param_schema, validate_params

RUN = "manual__2026-11-24T12:22:12.451522+00:00"


@pytest.fixture(scope="module")
def schema(tmp_path_factory, images_dir):
    return param_schema(tmp_path_factory.mktemp("home"), images_dir)


def check(schema, **params):
    return validate_params(params, schema, dag_id="caio_load_test", airflow_run_id=RUN)


def test_defaults_make_a_local_run(schema):
    spec = check(schema)
    assert spec.target == "local"
    assert spec.model_source == "builtin:resnet_v2_101"
    assert spec.bucket.startswith("file:///") and spec.warehouse.startswith("duckdb:///")
    assert spec.run_id == "resnet101-v1-manual-2026-11-24t12-22-12-451522-00-00"
    assert spec.model_uri == spec.bucket + "/models/resnet101/v1"
    assert spec.layout.run_dir == spec.bucket + "/runs/" + spec.run_id


def test_round_trips_through_xcom_dict(schema):
    from caio_operators.spec import RunSpec

    spec = check(schema, users=3, workers=3, load_shape="constant")
    assert RunSpec.from_dict(spec.to_dict()) == spec
    assert "run_id" not in spec.params() and spec.params()["users"] == 3


def test_run_id_is_bounded_and_stable():
    long = make_run_id("m" * 60, "v" * 60, RUN)
    assert len(long) <= 63 and long == make_run_id("m" * 60, "v" * 60, RUN)
    assert long != make_run_id("m" * 60, "v" * 60, RUN + "x")
    assert set(long) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


@pytest.mark.parametrize(
    ("params", "field", "hint"),
    [
        ({"users": -1}, "users", ">= 1"),
        ({"users": 10**7}, "users", "<= 10000"),
        ({"duration_s": 0}, "duration_s", ">= 5"),
        ({"target": "mars"}, "target", "local, endpoint"),
        ({"load_shape": "zigzag"}, "load_shape", "constant, staircase"),
        ({"protocol": "grpc"}, "protocol", "caip, vertex, tfserving"),
        ({"signature": "serving_other"}, "signature", "serving_preprocess"),
        ({"model_name": "../etc"}, "model_name", "letters, digits or underscores"),
        ({"model_version": "v1; rm -rf /"}, "model_version", "letters, digits"),
        ({"model_version": "v1' OR '1'='1"}, "model_version", "letters, digits"),
        ({"model_source": "pytorch:resnet"}, "model_source", "builtin:"),
        ({"bucket": "s3://somewhere"}, "bucket", "file:///absolute/path or gs://"),
        ({"bucket": "file://relative/path"}, "bucket", "absolute path"),
        ({"bucket": "file:///tmp/../etc"}, "bucket", "'..'"),
        ({"bucket": "gs://Bad_Bucket!"}, "bucket", "valid bucket name"),
        ({"bucket": "gs://good-bucket/x"}, "bucket", "target=local serves from"),
        ({"warehouse": "postgres://db"}, "warehouse", "duckdb:///"),
        ({"target": "endpoint"}, "endpoint_url", "full predict URL"),
        ({"target": "endpoint", "endpoint_url": "ftp://x"}, "endpoint_url", "http(s)"),
        ({"endpoint_url": "http://x/predict"}, "endpoint_url", "only used with target=endpoint"),
        ({"step_users": 9, "users": 8}, "step_users", "step_users <= users"),
        ({"workers": 4, "users": 2}, "workers", "workers <= users"),
        ({"replicas": 0}, "replicas", ">= 1"),
        ({"userz": 3}, "userz", "unknown parameter"),
        ({"spawn_rate": 0}, "spawn_rate", "> 0"),
        ({"users": "many"}, "users", "integer"),
        ({"project": "My Project"}, "project", "project id"),
        ({"region": "us central"}, "region", "like us-central1"),
        ({"accelerator_type": "NVIDIA_TESLA_T4"}, "accelerator_count", "together"),
        ({"min_replicas": 3, "max_replicas": 2}, "max_replicas", ">= min_replicas"),
        ({"impersonation_chain": "sa@x.iam; id"}, "impersonation_chain", "emails"),
        ({"locust_image": "img $(id)"}, "locust_image", "an image like"),
    ],
)
def test_bad_values_name_the_field(schema, params, field, hint):
    with pytest.raises(SpecError) as err:
        check(schema, **params)
    text = str(err.value)
    assert any(p.startswith(field) for p in err.value.problems), text
    assert hint in text, text


def test_all_problems_reported_at_once(schema):
    with pytest.raises(SpecError) as err:
        check(schema, users=0, replicas=99, target="nowhere")
    assert len(err.value.problems) == 3
