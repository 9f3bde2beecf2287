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


def test_open_rate_takes_rate_arrivals_and_max_in_flight(schema):
    spec = check(schema, load_shape="open_rate", rate=250.5, arrivals="poisson",
                 max_in_flight=64, workers=4, users=1)  # users does not bound workers here
    assert (spec.load_shape, spec.rate, spec.arrivals, spec.max_in_flight) == (
        "open_rate", 250.5, "poisson", 64)
    assert spec.params()["rate"] == 250.5
    defaults = check(schema)
    assert (defaults.rate, defaults.arrivals, defaults.max_in_flight) == (10.0, "constant", 256)
    assert "ignored" in schema["load_shape"]["description"]


def test_rate_profiles_and_peak_search_params(schema):
    spec = check(schema, load_shape="peak_search", rate=20, slo_ms=250, slo_percentile=95,
                 max_rate=400, window_s=2, duration_s=300, workers=2, users=1)
    assert (spec.load_shape, spec.slo_ms, spec.slo_percentile, spec.max_rate, spec.window_s,
            spec.peak_precision, spec.min_requests, spec.max_error_rate) == (
        "peak_search", 250, 95, 400, 2, 0.05, 50, 0.01)
    stairs = check(schema, load_shape="open_rate", rate_profile="staircase", rate=100,
                   step_rate=25, step_duration_s=10, duration_s=40)
    assert (stairs.rate_profile, stairs.step_rate) == ("staircase", 25)
    problems = [
        ({"load_shape": "open_rate", "rate_profile": "staircase", "rate": 10, "step_rate": 20},
         "step_rate=20: above rate=10"),
        ({"load_shape": "open_rate", "rate_profile": "staircase", "rate": 10, "step_rate": 5,
          "step_duration_s": 90}, "step_duration_s=90: longer than duration_s=80"),
        ({"load_shape": "staircase", "users": 4, "step_users": 2, "step_duration_s": 90},
         "step_duration_s=90: longer than duration_s=80"),
        ({"load_shape": "open_rate", "rate_profile": "spike", "spike_start_s": 90},
         "spike_start_s=90: the spike must start before duration_s=80 ends"),
        ({"load_shape": "peak_search", "rate": 50, "max_rate": 40},
         "max_rate=40: below the starting rate=50"),
        ({"load_shape": "peak_search", "window_s": 30, "duration_s": 60},
         "duration_s=60: too short to judge even one rate with window_s=30"),
        ({"rate_profile": "ramp"}, "rate_profile"),
        ({"slo_percentile": 100}, "slo_percentile"),
        ({"max_error_rate": 1.5}, "max_error_rate"),
    ]
    for params, hint in problems:
        with pytest.raises(SpecError, match=hint.replace("(", r"\(")):
            check(schema, **params)


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
        ({"load_shape": "zigzag"}, "load_shape", "constant, staircase, open_rate"),
        ({"load_shape": "open_rate", "rate": 0}, "rate", "> 0"),
        ({"load_shape": "open_rate", "rate": 200000}, "rate", "<= 100000"),
        ({"load_shape": "open_rate", "arrivals": "bursty"}, "arrivals", "constant, poisson"),
        ({"load_shape": "open_rate", "max_in_flight": 0}, "max_in_flight", ">= 1"),
        ({"max_in_flight": 100001}, "max_in_flight", "<= 100000"),
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
        ({"server_batch_max": -1}, "server_batch_max", ">= 0"),
        ({"server_batch_timeout_ms": 5000}, "server_batch_timeout_ms", "<= 1000"),
        ({"target": "endpoint", "endpoint_url": "http://x/p", "server_batch_max": 4},
         "server_batch_max", "only the local model server batches"),
        ({"userz": 3}, "userz", "unknown parameter"),
        ({"spawn_rate": 0}, "spawn_rate", "> 0"),
        ({"users": "many"}, "users", "integer"),
        ({"project": "My Project"}, "project", "project id"),
        ({"region": "us central"}, "region", "like us-central1"),
        ({"accelerator_type": "NVIDIA_TESLA_T4"}, "accelerator_count", "together"),
        ({"min_replicas": 3, "max_replicas": 2}, "max_replicas", ">= min_replicas"),
        ({"impersonation_chain": "sa@x.iam; id"}, "impersonation_chain", "emails"),
        ({"locust_image": "img $(id)"}, "locust_image", "an image like"),
        # cloud targets, BigQuery and GKE
        ({"target": "mars"}, "target", "local, endpoint, vertex, caip"),
        ({"target": "vertex", "project": "proj-123"}, "bucket",
         "target=vertex serves the model from Cloud Storage (accepted: gs://bucket/prefix)"),
        ({"target": "caip", "bucket": "gs://bench-1/x"}, "project",
         "required for cloud targets"),
        ({"target": "vertex", "bucket": "gs://bench-1/x", "project": "proj-123", "region": ""},
         "region", "required with target=vertex (accepted: a region like us-central1)"),
        ({"warehouse": "bigquery://proj-123"}, "warehouse", "bigquery://project/dataset"),
        ({"warehouse": "bigquery://Bad_Proj/ds", "project": "proj-123"}, "warehouse",
         "is not a project id"),
        ({"warehouse": "bigquery://proj-123/my-ds", "project": "proj-123"}, "warehouse",
         "is not a dataset name"),
        ({"warehouse": "bigquery://proj-123/ds?region=EU", "project": "proj-123"}, "warehouse",
         "only ?location=... is accepted"),
        ({"warehouse": "bigquery://proj-123/ds"}, "project", "bigquery://"),
        ({"load_runner": "ssh"}, "load_runner", "local, gke"),
        ({"load_runner": "gke", "project": "proj-123", "gke_location": "us-central1",
          "gke_cluster": "bench", "locust_image": "img:1"}, "load_runner",
         "GKE pods cannot reach"),
        ({"load_runner": "gke", "target": "vertex", "bucket": "gs://bench-1/x",
          "project": "proj-123"}, "gke_cluster", "required with load_runner=gke"),
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


def test_cloud_run_makes_a_spec(schema):
    spec = check(schema, target="vertex", bucket="gs://bench-1/caio", project="proj-123",
                 region="europe-west4", warehouse="bigquery://proj-123/bench?location=EU",
                 impersonation_chain="a@proj-123.iam.gserviceaccount.com,b@x.iam",
                 load_runner="gke", gke_location="europe-west4-a", gke_cluster="bench",
                 locust_image="europe-docker.pkg.dev/proj-123/caio/caio-locust:2.47.0")
    assert (spec.target, spec.load_runner) == ("vertex", "gke")
    assert spec.model_uri == "gs://bench-1/caio/models/resnet101/v1"
    assert spec.impersonation == ["a@proj-123.iam.gserviceaccount.com", "b@x.iam"]


def test_caip_with_local_load_and_duckdb_is_fine(schema):
    spec = check(schema, target="caip", bucket="gs://bench-1", project="proj-123")
    assert spec.target == "caip" and spec.warehouse.startswith("duckdb://")


def test_the_form_offers_the_cloud_choices(schema):
    assert schema["target"]["enum"] == ["local", "endpoint", "vertex", "caip"]
    assert schema["load_runner"]["enum"] == ["local", "gke"]


def test_a_baseline_run_that_does_not_exist_fails_validate_with_its_name(schema, tmp_path):
    """The validate task itself, against a real DuckDB warehouse: a named baseline_run_id
    must be one of its runs; a missing warehouse is not created by the check."""
    from airflow.sdk import DAG

    from caio_operators.operators import ValidateRunSpecOperator
    from caio_operators.results.warehouse import open_warehouse

    missing_wh = tmp_path / "none.duckdb"
    with DAG("caio_load_test", schedule=None):
        task = ValidateRunSpecOperator(task_id="validate", schema=schema)

    def validate(**params):
        return task.execute({"params": {"users": 2, "workers": 1, **params}, "run_id": RUN,
                             "logical_date": None})

    with pytest.raises(SpecError, match="baseline_run_id='tiny-v1-gone': cannot be looked up"):
        validate(baseline_run_id="tiny-v1-gone", warehouse=f"duckdb://{missing_wh}")
    assert not missing_wh.exists()

    wh = open_warehouse(f"duckdb://{tmp_path}/wh.duckdb")
    wh.ensure_schema()
    with pytest.raises(SpecError, match="baseline_run_id='tiny-v1-gone': no such run in the "
                                        "warehouse") as err:
        validate(baseline_run_id="tiny-v1-gone", warehouse=wh.uri)
    assert "Fix the values above" in str(err.value)

    import pandas as pd

    from caio_operators.results import schema as sc

    row = {name: None for name in sc.columns("runs")} | {"run_id": "tiny-v1-kept",
                                                          "status": "success"}
    wh.replace_run({"runs": sc.conform("runs", pd.DataFrame([row]))}, "tiny-v1-kept")
    spec = validate(baseline_run_id="tiny-v1-kept", warehouse=wh.uri)
    assert spec["baseline_run_id"] == "tiny-v1-kept"
    with pytest.raises(SpecError, match="set only one of them"):
        validate(baseline_run_id="tiny-v1-kept", baseline_version="v0", warehouse=wh.uri)
    with pytest.raises(SpecError, match="baseline_run_id='Bad Id!'"):
        validate(baseline_run_id="Bad Id!", warehouse=wh.uri)


def test_fields_left_empty_let_the_trigger_form_trigger(tmp_path):
    """Airflow's Trigger form marks a field of type "string" required and disables its
    Trigger button while one is empty: the defaults themselves could not be triggered."""
    schema = param_schema(tmp_path, tmp_path)
    empty = [name for name, prop in schema.items() if prop["default"] == ""]
    assert "labels_uri" in empty and "endpoint_url" in empty
    assert all("null" in schema[name]["type"] for name in empty)
    spec = validate_params({name: None for name in empty}, schema, dag_id="d",
                           airflow_run_id="r")  # what a cleared field sends
    assert all(getattr(spec, name) == "" for name in empty)


def test_local_autoscaling_bounds_the_starting_replicas(schema):
    spec = check(schema, local_autoscaling=True, replicas=1, min_replicas=1, max_replicas=3,
                 scale_up_window_s=2, scale_down_window_s=5)
    assert spec.local_autoscaling and spec.max_replicas == 3 and spec.scale_up_window_s == 2
    assert not check(schema).local_autoscaling  # the cloud defaults min 1 < max 2: still off
    cases = [
        ({"replicas": 4, "max_replicas": 3}, "replicas=4: with local_autoscaling it is the "
                                             "starting count"),
        ({"replicas": 2, "min_replicas": 2, "max_replicas": 2}, "nothing can scale"),
        ({"replicas": 2, "max_replicas": 17}, "max_replicas=17: the local server runs at most "
                                              "16 replicas"),
    ]
    for params, hint in cases:
        with pytest.raises(SpecError) as err:
            check(schema, local_autoscaling=True, **params)
        assert hint in str(err.value), str(err.value)
    with pytest.raises(SpecError, match="local_autoscaling=true: for target=local only"):
        check(schema, local_autoscaling=True, target="endpoint",
              endpoint_url="http://127.0.0.1:1/v1/models/m:predict")
