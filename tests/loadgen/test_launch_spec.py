"""Locust argv and test config builders (caio_operators.loadgen.launch)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from caio_operators.loadgen import launch

URL = "http://127.0.0.1:8501/v1/projects/p/models/m/versions/v1:predict"


def _config(**overrides):
    kwargs = {
        "test_id": "run-1", "predict_url": URL, "protocol": "caip",
        "signature": "serving_preprocess", "payload_uri": "file:///b/runs/r/load/payload.json",
        "output_uri": "file:///b/runs/r/load", "load_shape": "staircase", "users": 8,
        "spawn_rate": 4, "duration_s": 80, "step_users": 2, "step_duration_s": 20,
    }
    kwargs.update(overrides)
    return launch.make_config(**kwargs)


def test_build_config_shape_and_defaults():
    cfg = _config(project_id="proj", model="resnet", version="v1", think_time_s=0.5)
    assert cfg == {
        "config_version": 1, "test_id": "run-1", "project_id": "proj", "model": "resnet",
        "version": "v1",
        "protocol": "caip", "predict_url": URL, "signature": "serving_preprocess",
        "payload_uri": "file:///b/runs/r/load/payload.json", "output_uri": "file:///b/runs/r/load",
        "shape": {"kind": "staircase", "users": 8, "spawn_rate": 4.0, "duration_s": 80.0,
                  "step_users": 2, "step_duration_s": 20.0},
        "think_time_s": 0.5, "flush_interval_s": 5.0, "request_timeout_s": 30.0,
        "instances_per_request": 1, "record_sample": 1.0,
    }
    json.dumps(cfg)  # travels as JSON
    constant = _config(load_shape="constant")
    assert constant["shape"] == {"kind": "constant", "users": 8, "spawn_rate": 4.0,
                                 "duration_s": 80.0}


def test_open_rate_config_carries_rate_arrivals_and_max_in_flight(caio_load_mod):
    cfg = _config(load_shape="open_rate", rate=120.0, arrivals="poisson", max_in_flight=32,
                  duration_s=20, request_timeout_s=2)
    assert cfg["shape"] == {"kind": "open_rate", "rate": 120.0, "arrivals": "poisson",
                            "max_in_flight": 32, "duration_s": 20.0, "drain_s": 2.0,
                            "rate_profile": "constant"}
    assert caio_load_mod.parse_config(cfg)["shape"] == cfg["shape"]
    spec = launch.build_launch_spec(
        config=cfg, config_uri="gs://c.json", locust_cmd=["locust"], locustfile="f.py",
        workers=2, csv_prefix="/o/l", html_path="/o/h", log_dir="/o/logs",
        index_workers=False)
    assert spec.worker_argvs[0] == spec.worker_argvs[1]  # GKE: one pod template
    assert "--caio-worker-index" not in spec.worker_argvs[0]
    assert spec.duration_s == 22.0  # the drain is part of the run
    for bad, message in (({"rate": 0}, "rate is 0"), ({"arrivals": "burst"}, "arrivals is"),
                         ({"max_in_flight": 0}, "max_in_flight is 0")):
        with pytest.raises(ValueError, match=message):
            _config(load_shape="open_rate", **bad)
    with pytest.raises(caio_load_mod.ConfigError, match=r"shape\.arrivals"):
        caio_load_mod.parse_config({**cfg, "shape": {**cfg["shape"], "arrivals": "x"}})
    with pytest.raises(caio_load_mod.ConfigError, match=r"shape\.rate"):
        caio_load_mod.parse_config({**cfg, "shape": {**cfg["shape"], "rate": -1}})


def test_rate_profiles_and_peak_search_configs(caio_load_mod):
    stairs = _config(load_shape="open_rate", rate=100.0, step_duration_s=10, duration_s=60,
                     rate_profile={"rate_profile": "staircase", "step_rate": 25})
    assert stairs["shape"]["rate_profile"] == "staircase"
    assert (stairs["shape"]["step_rate"], stairs["shape"]["step_duration_s"]) == (25.0, 10.0)
    spike = _config(load_shape="open_rate", rate=10.0, duration_s=60, rate_profile={
        "rate_profile": "spike", "spike_rate": 80, "spike_start_s": 20, "spike_duration_s": 5})
    assert {k: spike["shape"][k] for k in ("spike_rate", "spike_start_s", "spike_duration_s")} \
        == {"spike_rate": 80.0, "spike_start_s": 20.0, "spike_duration_s": 5.0}
    peak = _config(load_shape="peak_search", rate=20.0, duration_s=300,
                   peak={"slo_ms": 250, "window_s": 2})
    assert peak["shape"] == {
        "kind": "peak_search", "rate": 20.0, "arrivals": "constant", "max_in_flight": 256,
        "duration_s": 300.0, "drain_s": 3.0, "slo_ms": 250.0, "slo_percentile": 99.0,
        "max_error_rate": 0.01, "max_rate": 0.0, "precision": 0.05, "window_s": 2.0,
        "min_requests": 50}
    for cfg in (stairs, spike, peak):  # what the locustfile accepts
        assert caio_load_mod.parse_config(cfg)["shape"] == cfg["shape"]
    with pytest.raises(ValueError, match=r"shape\.spike_rate is None; it must be a number"):
        _config(load_shape="open_rate", rate_profile={"rate_profile": "spike"})
    with pytest.raises(ValueError, match="rate_profile is 'ramp'"):
        _config(load_shape="open_rate", rate_profile={"rate_profile": "ramp"})
    with pytest.raises(ValueError, match=r"unknown peak settings \['slo'\]"):
        _config(load_shape="peak_search", peak={"slo": 1})
    with pytest.raises(ValueError, match=r"shape\.slo_percentile is 100\.0; it must be"):
        _config(load_shape="peak_search", peak={"slo_percentile": 100})
    with pytest.raises(caio_load_mod.ConfigError, match=r"shape\.slo_ms"):
        caio_load_mod.parse_config({**peak, "shape": {**peak["shape"], "slo_ms": 0}})
    with pytest.raises(caio_load_mod.ConfigError, match=r"shape\.step_rate"):
        caio_load_mod.parse_config({**stairs, "shape": {**stairs["shape"], "step_rate": -5}})


def test_a_newer_config_version_is_refused_by_an_older_locustfile(caio_load_mod):
    """A GKE Locust image built from an older release must not misread a newer document."""
    cfg = _config()
    with pytest.raises(caio_load_mod.ConfigError, match="config_version is 2, newer than"):
        caio_load_mod.parse_config({**cfg, "config_version": caio_load_mod.CONFIG_VERSION + 1})
    assert caio_load_mod.parse_config({k: v for k, v in cfg.items()
                                       if k != "config_version"})["config_version"] == 1


def test_the_params_and_the_locust_side_declare_the_same_choices(caio_load_mod):
    """The config document is the process boundary: the Locust side keeps its own tuples
    of choices, and they must be the params' (spec.declare)."""
    from caio_operators import spec

    shapes = sys.modules["shapes"]
    assert set(caio_load_mod.PROTOCOLS) == set(spec.PROTOCOLS)
    assert set(caio_load_mod.SIGNATURES) == set(spec.SIGNATURES)
    assert (shapes.KINDS, shapes.ARRIVALS, shapes.RATE_PROFILES) == (
        spec.LOAD_SHAPES, spec.ARRIVALS, spec.RATE_PROFILES)
    assert shapes.OPEN_LOOP == spec.OPEN_LOOP_SHAPES


def test_build_config_is_what_the_locustfile_accepts(caio_load_mod):
    for shape in ("constant", "staircase"):
        cfg = _config(load_shape=shape)
        assert caio_load_mod.parse_config(cfg)["shape"] == cfg["shape"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"protocol": "grpc"}, "protocol is 'grpc'; use one of caip, vertex, tfserving"),
        ({"signature": "predict"}, "signature is 'predict'"),
        ({"load_shape": "ramp"}, "shape.kind is 'ramp'"),
        ({"users": 0}, "users is 0"),
        ({"duration_s": -1}, "duration_s is -1"),
        ({"think_time_s": -0.1}, "think_time_s is -0.1"),
        ({"predict_url": "localhost:8501/v1/models/m:predict"}, "absolute http"),
    ],
)
def test_build_config_rejects_bad_values(change, message):
    with pytest.raises(ValueError, match=message):
        _config(**change)


def test_master_and_worker_argv():
    cfg = _config()
    spec = launch.build_launch_spec(
        config=cfg, config_uri="gs://bkt/runs/r/load/config.json",
        locust_cmd=["locust"], locustfile="/home/locust/locustfile.py", workers=3,
        csv_prefix="/out/locust", html_path="/out/locust_report.html", log_dir="/out/logs",
        master_host="locust-master.ns.svc", bind_host="0.0.0.0", master_port=5557,
    )
    assert list(spec.master_argv) == [
        "locust", "-f", "/home/locust/locustfile.py", "--headless", "--master",
        "--expect-workers", "3", "--expect-workers-max-wait", "120",
        "--master-bind-host", "0.0.0.0", "--master-bind-port", "5557",
        "--csv", "/out/locust", "--csv-full-history", "--html", "/out/locust_report.html",
        "--host", "http://127.0.0.1:8501", "--exit-code-on-error", "0", "--loglevel", "INFO",
        "--caio-workers", "3", "--caio-config", "gs://bkt/runs/r/load/config.json",
        "--stop-timeout", "30",  # the last requests complete and are recorded
    ]
    assert spec.workers == 3
    for i in range(3):  # each worker knows its share of an open_rate schedule
        assert list(spec.worker_argvs[i]) == [
            "locust", "-f", "/home/locust/locustfile.py", "--worker",
            "--master-host", "locust-master.ns.svc", "--master-port", "5557",
            "--loglevel", "INFO", "--caio-workers", "3",
            "--caio-config", "gs://bkt/runs/r/load/config.json", "--caio-worker-index", str(i),
        ]
    assert spec.env["CAIO_CONFIG"] == "gs://bkt/runs/r/load/config.json"
    assert spec.requests_uri == "file:///b/runs/r/load/requests"
    assert spec.history_csv == "/out/locust_stats_history.csv"
    assert spec.duration_s == 80.0 + 30.0  # the shape, then at most the stop timeout


def test_local_launch_spec_uses_this_interpreter(tmp_path):
    from caio_operators.loadgen.local import local_launch_spec

    cfg = _config(output_uri=f"file://{tmp_path}")
    spec = local_launch_spec(config=cfg, config_uri=f"file://{tmp_path}/config.json",
                             load_dir=tmp_path, workers=2)
    assert spec.master_argv[:3] == (sys.executable, "-m", "locust")
    assert spec.master_argv[spec.master_argv.index("--master-bind-host") + 1] == "127.0.0.1"
    port = spec.master_argv[spec.master_argv.index("--master-bind-port") + 1]
    assert spec.worker_argvs[1][spec.worker_argvs[1].index("--master-port") + 1] == port
    assert spec.csv_prefix == str(tmp_path / "locust")
    assert spec.master_argv[spec.master_argv.index("-f") + 1].endswith("locust/locustfile.py")


def test_argv_rejects_zero_workers():
    with pytest.raises(ValueError, match="at least 1"):
        launch.master_argv(locust_cmd=["locust"], locustfile="f.py", config_uri="c",
                           predict_url=URL, workers=0, csv_prefix="p", html_path="h")


def test_write_config_round_trips(tmp_path):
    cfg = _config()
    uri = launch.write_config(f"file://{tmp_path}/load/config.json", cfg)
    assert json.loads((tmp_path / "load" / "config.json").read_text()) == cfg
    assert uri.endswith("config.json")


def test_loadgen_modules_never_import_locust():
    import subprocess

    code = ("import sys; import caio_operators.loadgen.launch, caio_operators.loadgen.local, "
            "caio_operators.loadgen.payload; bad = [m for m in ('locust', 'gevent', "
            "'tensorflow') if m in sys.modules]; sys.exit(f'imported {bad}' if bad else 0)")
    plugins = str(Path(launch.__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": plugins})
    assert done.returncode == 0, done.stderr


def _run_spec(tmp_path, **params):
    from caio_operators.spec import param_schema, validate_params

    schema = param_schema(tmp_path / "home", tmp_path)
    params.setdefault("bucket", f"file://{tmp_path}/bucket")
    return validate_params(params, schema, dag_id="caio_load_test",
                           airflow_run_id="manual__2026-01-01T00:00:00+00:00")


def test_build_config_for_a_run(tmp_path, caio_load_mod):
    spec = _run_spec(tmp_path, users=6, workers=2, load_shape="constant", duration_s=30,
                     signature="serving_default", instances_per_request=4,
                     request_timeout_s=12.5)
    deployment = {"target": "local", "protocol": "caip", "predict_url": URL,
                  "base_url": "http://127.0.0.1:8501", "health_url": ""}
    cfg = launch.build_config(spec, deployment)
    assert cfg["test_id"] == spec.run_id
    assert cfg["predict_url"] == URL and cfg["protocol"] == "caip"
    assert cfg["signature"] == "serving_default" and cfg["instances_per_request"] == 4
    assert cfg["payload_uri"] == spec.layout.payload_uri
    assert cfg["output_uri"] == spec.layout.load_dir
    assert cfg["shape"] == {"kind": "constant", "users": 6, "spawn_rate": spec.spawn_rate,
                            "duration_s": 30.0}
    assert cfg["request_timeout_s"] == 12.5
    assert caio_load_mod.parse_config(cfg)["test_id"] == spec.run_id


def test_build_launch_for_a_local_run(tmp_path):
    from caio_operators.loadgen.local import build_launch

    spec = _run_spec(tmp_path, users=4, workers=2)
    cfg = launch.build_config(spec, {"protocol": "caip", "predict_url": URL})
    launch.write_config(spec.layout.config_uri, cfg)
    out = build_launch(spec)
    load_dir = spec.layout.load_dir.removeprefix("file://")
    assert out.workers == 2 and out.publish_uri is None
    assert out.csv_prefix == load_dir + "/locust"
    assert out.html_path == load_dir + "/locust_report.html"
    assert out.requests_uri == spec.layout.client_requests_dir
    assert out.master_argv[-4:] == ("--caio-config", spec.layout.config_uri,
                                    "--stop-timeout", "30")
    assert out.duration_s == spec.duration_s + 30
