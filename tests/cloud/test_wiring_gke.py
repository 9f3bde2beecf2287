"""The GKE load runner wired through RunLoadTestOperator and pipeline.run_load: the run's
spec, its try number and its config reach GkeLauncher, which runs against the fake
Kubernetes API of tests/cloud/test_gke_launcher.py; the bucket is the local GCS emulator."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

pytest.importorskip("kubernetes")

from test_gke_launcher import Clock, FakeCluster, stats_tables  # noqa: F401
from test_wiring import PROJECT, VERTEX_DEPLOYMENT, cloud_spec, google_connection  # noqa: F401

from caio_operators import storage
from caio_operators.spec import param_schema


@pytest.fixture(scope="module")
def schema(tmp_path_factory, images_dir):
    return param_schema(tmp_path_factory.mktemp("home"), images_dir)


def test_gke_load_runner_runs_the_run_with_its_try_number(schema, gs_bucket, monkeypatch,
                                                          stats_tables):  # noqa: F811
    from caio_operators.loadgen import gke
    from caio_operators.operators import RunLoadTestOperator

    spec = cloud_spec(schema, bucket=gs_bucket, load_runner="gke",
                      gke_location="us-central1-a", gke_cluster="bench",
                      gke_namespace="bench", locust_image="us-docker.pkg.dev/p/caio/locust:1")
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables, master_ends_after=12.0)
    seen = {}
    real_for_run = gke.GkeLauncher.for_run.__func__

    def for_run(cls, run_spec, *, try_number=1, **kwargs):
        seen.update(try_number=try_number, run_id=run_spec.run_id)
        # the cluster connection is the only thing swapped: a fake Kubernetes API
        return real_for_run(cls, run_spec, try_number=try_number, core_api=cluster,
                            batch_api=cluster, clock=clock.time, sleep=clock.sleep,
                            poll_s=1.0, **kwargs)

    monkeypatch.setattr(gke.GkeLauncher, "for_run", classmethod(for_run))
    op = RunLoadTestOperator(task_id="load", spec=spec.to_dict(), deployment=VERTEX_DEPLOYMENT)

    result = op.execute({"ti": SimpleNamespace(try_number=3)})

    assert result["status"] == "success", result["reason"]
    assert seen == {"try_number": 3, "run_id": spec.run_id}
    master = cluster.created[0]
    assert master["metadata"]["labels"]["caio.dev/try-number"] == "3"
    env = master["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "CAIO_PUBLISH_URI", "value": spec.layout.load_dir} in env
    config = json.loads(storage.read_text(spec.layout.config_uri))
    assert config["cloud_logging"] == {"project": PROJECT, "log_name": "locust",
                                       "interval_s": 5}
    assert config["predict_url"] == VERTEX_DEPLOYMENT["predict_url"]
    assert config["protocol"] == "vertex"
    stored = json.loads(storage.read_text(spec.layout.load_result_uri))
    assert stored["status"] == "success" and stored["namespace"] == "bench"
    assert not cluster.jobs and not cluster.services  # deleted at the end

    op.on_kill()  # stops the GKE launcher it ran (everything is gone already: no error)
