"""The stages of one run as plain functions: RunSpec in, adapter call, small dict out.

Operators are thin wrappers around these; tests and the CLI call them directly. Heavy
imports (TensorFlow, pandas, duckdb, Google clients) happen inside the adapters a stage
uses. The same stages serve every target: the RunSpec picks the adapters through their
registries (``targets.base.get_target``: local server, endpoint, Vertex AI, AI Platform;
``loadgen.launcher.launcher_for_run``: local Locust or GKE; DuckDB or BigQuery, file:// or
gs://), and each adapter owns its quirks, so no stage branches on a target or load runner.

The judging stages (analyse, judge, compare_sweep, history) live in ``judging.py`` and are
re-exported here; ``TaskLog``, ``RunFailed``, ``is_cloud`` and ``warehouse_options`` come
from ``stage_base.py``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caio_operators import storage
from caio_operators.judging import RegressionFound as RegressionFound
from caio_operators.judging import analyse as analyse
from caio_operators.judging import check_baseline_run as check_baseline_run
from caio_operators.judging import compare_sweep as compare_sweep
from caio_operators.judging import cost_text as cost_text
from caio_operators.judging import enforce_verdict as enforce_verdict
from caio_operators.judging import history as history
from caio_operators.judging import judge as judge
from caio_operators.judging import judge_options as judge_options
from caio_operators.spec import RunSpec
from caio_operators.stage_base import RunFailed as RunFailed
from caio_operators.stage_base import TaskLog, warehouse_options
from caio_operators.stage_base import is_cloud as is_cloud

if TYPE_CHECKING:
    from caio_operators.loadgen.launcher import Launcher
    from caio_operators.metrics.families import MonitoredTarget

_log = logging.getLogger(__name__)

#: how often the Locust master writes its stats to Cloud Logging (log-based metrics)
CLOUD_LOG_INTERVAL_S = 5


def monitoring_scope(spec: RunSpec, deployment: Mapping[str, Any] | None
                     ) -> MonitoredTarget | None:
    """Where Cloud Monitoring keeps the deployment's series, as its target maps them from
    the RunSpec and the deploy output (None for a target without them)."""
    from caio_operators.targets.base import get_target

    return get_target(spec.target).monitored_target(spec, deployment)


def export(spec: RunSpec, log: TaskLog = _log) -> dict[str, Any]:
    from caio_operators.model.export import export_serving_model

    log.info("exporting %s to %s", spec.model_source, spec.model_uri)
    options: dict[str, Any] = {"labels_uri": spec.labels_uri or None,
                               "test_images_uri": spec.images_uri}
    if storage.is_local(spec.model_uri):
        info = export_serving_model(spec.model_source, spec.model_uri, **options)
    else:
        # Export and check on local disk, then upload file by file through the bucket
        # adapter: TensorFlow's own GCS filesystem talks only to storage.googleapis.com
        # (it ignores STORAGE_EMULATOR_HOST) and would be a second GCS client to configure.
        with tempfile.TemporaryDirectory(prefix=f"caio-export-{spec.run_id}-") as tmp:
            local = Path(tmp) / "model"
            info = export_serving_model(spec.model_source, str(local), **options)
            files = upload_tree(local, spec.model_uri)
        info["model_uri"] = spec.model_uri
        log.info("uploaded %d files to %s", len(files), spec.model_uri)
    log.info("weights: %s; both signatures checked on %s images", info.get("weights"),
             (info.get("check") or {}).get("images"))
    return info


def upload_tree(local_dir: str | Path, uri: str) -> list[str]:
    """Replace the folder ``uri`` with the files of ``local_dir``; returns the new URIs.

    ``saved_model.pb`` goes last, so a reader that finds it finds a complete SavedModel.
    Each file is one whole-object upload; a re-export replaces the old files.
    """
    root = Path(local_dir)
    files = sorted((p for p in root.rglob("*") if p.is_file()),
                   key=lambda p: (p.name == "saved_model.pb", str(p)))
    storage.remove_tree(uri)
    return [storage.put_file(path, storage.join(uri, *path.relative_to(root).parts))
            for path in files]


def deploy(spec: RunSpec, log: TaskLog = _log) -> dict[str, Any]:
    from caio_operators.targets.base import get_target

    deployment = get_target(spec.target).deploy_run(spec)
    log.info("deployed: %s", {k: deployment[k] for k in (
        "target", "predict_url", "replicas", "pid", "model", "endpoint", "version")
        if deployment.get(k)})
    return dict(deployment)


def undeploy(deployment: dict[str, Any] | None, log: TaskLog = _log,
             spec: RunSpec | None = None) -> None:
    """Undo ``deployment``. Without one, a cloud run is still cleaned up by its run id."""
    from caio_operators.targets.base import get_target

    if not deployment:
        stub = get_target(spec.target).teardown_stub(spec) if spec is not None else None
        if stub is None:
            log.info("nothing to undeploy")
            return
        deployment = dict(stub)
        log.info("no deployment from the deploy task: looking for %s resources labelled "
                 "with run %s to delete", deployment["target"], deployment["run_id"])
    get_target(deployment["target"]).undeploy(deployment)
    log.info("undeployed %s", deployment.get("predict_url") or deployment.get("run_id"))


def prepare_metrics(spec: RunSpec, deployment: Mapping[str, Any] | None = None,
                    log: TaskLog = _log) -> dict[str, Any]:
    """The warehouse schema; for cloud targets also the Locust log-based metrics and the
    deployment's Monitoring dashboard (``deployment``: the deploy task's output)."""
    from caio_operators.results.warehouse import open_warehouse

    warehouse = open_warehouse(spec.warehouse, **warehouse_options(spec))
    warehouse.ensure_schema()
    log.info("warehouse schema ready: %s", spec.warehouse)
    result: dict[str, Any] = {"warehouse": spec.warehouse}
    if is_cloud(spec):
        from caio_operators.metrics.cloud import GcpConnection, prepare_cloud_metrics

        scope = monitoring_scope(spec, deployment)
        if scope is None:
            return result
        cloud = prepare_cloud_metrics(scope, GcpConnection.of(spec))
        log.info("log-based metrics: %s; dashboard: %s", cloud.get("log_metrics"),
                 cloud.get("dashboard"))
        result.update(cloud)
    return result


def cloud_logging_config(spec: RunSpec) -> dict[str, Any] | None:
    """The locustfile's ``cloud_logging`` config: the master writes its stats to Cloud
    Logging (the log-based metrics' source) for cloud targets and for launchers that run
    Locust in Google Cloud (``Launcher.in_cloud``: GKE)."""
    from caio_operators.loadgen.launcher import launcher_type

    if not spec.project or not (is_cloud(spec) or launcher_type(spec.load_runner).in_cloud):
        return None
    from caio_operators.metrics.log_metrics import LOG_NAME

    return {"project": spec.project, "log_name": LOG_NAME, "interval_s": CLOUD_LOG_INTERVAL_S}


def run_load(
    spec: RunSpec,
    deployment: dict[str, Any],
    log: TaskLog = _log,
    on_launcher: Callable[[Any], None] | None = None,
    try_number: int = 1,
) -> dict[str, Any]:
    """Write payload and config, run Locust with the run's launcher (local processes or
    GKE pods), record the outcome in the bucket.

    The outcome (``load/result.json``) is written whatever happens, so harvest can tell
    a failed load from one that never ran. The launcher owns its run policy
    (``loadgen/launcher.py``): what a new try clears, its timeout, its work folder; e.g.
    ``try_number`` labels the GKE objects, so a retry re-attaches to the pods of the try
    before instead of starting a second test, while a local retry starts clean.
    """
    from caio_operators.loadgen.launch import build_config, write_config
    from caio_operators.loadgen.launcher import launcher_for_run, launcher_type
    from caio_operators.loadgen.payload import write_payload

    layout = spec.layout
    launcher_type(spec.load_runner).begin_try(spec, log)
    result: dict[str, Any] = {"status": "failed", "reason": "load did not start",
                              "started_at": time.time(), "ended_at": None}
    launcher: Launcher | None = None
    try:
        write_payload(spec.images_uri, layout.payload_uri, spec.signature,
                      spec.instances_per_request)
        config = build_config(spec, deployment)
        cloud_logging = cloud_logging_config(spec)
        if cloud_logging:
            config["cloud_logging"] = cloud_logging
        write_config(layout.config_uri, config)
        launcher = launcher_for_run(spec, deployment, try_number=try_number, log=log)
        with closing(launcher):
            if on_launcher is not None:
                on_launcher(launcher)
            result = launcher.run()
    except Exception as exc:
        result.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        result.setdefault("ended_at", time.time())
        result["ended_at"] = result["ended_at"] or time.time()
        storage.write_text(layout.load_result_uri, json.dumps(result, indent=2, default=str))
        figures = launcher.host_figures if launcher is not None else None
        if figures is not None:
            from caio_operators.metrics.host import HOST_FILE, host_problems

            storage.write_text(storage.join(layout.load_dir, HOST_FILE),
                               json.dumps(figures, default=str))
            for problem in host_problems(figures):
                log.warning("load: %s", problem)
    if result.get("status") == "degraded":  # measured, with a caveat harvest keeps
        log.warning("load degraded: %s", result.get("reason"))
    elif result.get("status") != "success":
        raise RunFailed(f"load test failed: {result.get('reason')}")
    return result


def _protocol(spec: RunSpec, deployment: Mapping[str, Any] | None) -> str:
    if deployment and deployment.get("protocol"):
        return str(deployment["protocol"])
    from caio_operators.targets.base import get_target

    return get_target(spec.target).run_protocol(spec)


def _replicas(spec: RunSpec, deployment: Mapping[str, Any] | None) -> int:
    if deployment and deployment.get("replicas"):
        return int(deployment["replicas"])
    from caio_operators.targets.base import get_target

    return get_target(spec.target).run_replicas(spec)
def run_meta(spec: RunSpec, export_info: dict[str, Any] | None,
             deployment: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fields of the ``runs`` row known before harvest."""
    from caio_operators import provenance

    layout = spec.layout
    if storage.exists(layout.load_result_uri):
        load = json.loads(storage.read_text(layout.load_result_uri))
    elif storage.exists(layout.config_uri):  # written as the load starts
        load = {"status": "failed", "reason": "the load started but wrote no result: its task "
                "was killed, marked failed or timed out (see its log)"}
    else:
        load = {"status": "failed", "reason": "the load did not run (an upstream task failed)"}
    load = with_server_fate(load, deployment)
    prov = provenance.collect()
    if export_info:
        prov["model"] = {k: export_info.get(k) for k in
                         ("base_model", "weights", "num_classes", "tf_version")}
    return {
        "run_id": spec.run_id, "dag_id": spec.dag_id, "target": spec.target,
        "protocol": _protocol(spec, deployment),
        "model_name": spec.model_name, "model_version": spec.model_version,
        "model_source": spec.model_source,
        "weights": (export_info or {}).get("weights", "unknown"),
        "signature": spec.signature, "load_shape": spec.load_shape, "users": spec.users,
        "workers": spec.workers, "replicas": _replicas(spec, deployment),
        "status": load.get("status", "failed"), "reason": load.get("reason") or "",
        "started_at": load.get("started_at"), "ended_at": load.get("ended_at"),
        "provenance": prov, "params": spec.params(),
    }


def with_server_fate(load: dict[str, Any], deployment: Mapping[str, Any] | None
                     ) -> dict[str, Any]:
    """The load outcome, failed or degraded when the deployment's target found it broken
    at its teardown (``Target.server_problem``: the local server had died, or some of its
    replicas had; ``teardown.json``, written by undeploy)."""
    if not deployment or not deployment.get("target"):
        return load
    from caio_operators.targets.base import get_target

    problem = get_target(str(deployment["target"])).server_problem(deployment)
    if problem is None:
        return load
    status, reason = problem
    before, why = load.get("status", "failed"), load.get("reason") or ""
    if before == "failed" or (before == "degraded" and status == "degraded"):
        status = before
    return {**load, "status": status, "reason": f"{why}; {reason}" if why else reason}


def cloud_timeseries(spec: RunSpec, deployment: Mapping[str, Any] | None,
                     meta: Mapping[str, Any],
                     log: TaskLog = _log) -> tuple[Any, list[str], str | None]:
    """Cloud Monitoring rows of the run window, the problems that kept rows out, and how
    far its points reached (``runs.monitoring_coverage``).

    Never raises for a Monitoring error: the client records must be stored anyway, and
    the problem marks the run degraded instead. Waits up to ``monitoring_wait_s`` after the
    window for late points; a window still not covered then is a problem too.
    """
    from caio_operators.results import schema as sc

    if not deployment:
        log.info("no deployment: nothing to read from Cloud Monitoring")
        return None, [], None
    start, end = meta.get("started_at"), meta.get("ended_at")
    if start is None or end is None:
        log.info("the load never started: nothing to read from Cloud Monitoring")
        return None, [], None
    from caio_operators.metrics.cloud import GcpConnection, harvest_cloud_metrics

    try:
        scope = monitoring_scope(spec, deployment)
        if scope is None:
            return None, [], None
        got = harvest_cloud_metrics(scope, start, end, sc.DEFAULT_INTERVAL_S,
                                    GcpConnection.of(spec), wait_s=spec.monitoring_wait_s)
    except Exception as exc:
        problem = f"Cloud Monitoring harvest failed, server-side metrics are missing: {exc}"
        log.error("%s (the client records are stored anyway)", problem)
        return None, [problem], None
    coverage = got.coverage.describe()
    log.info("Cloud Monitoring: %d timeseries rows for the run window (%s)", len(got.rows),
             coverage)
    if got.coverage.complete:
        return got.rows, [], coverage
    problem = (f"Cloud Monitoring's server-side series are {coverage}; clear this run's "
               "harvest task later to complete them (it replaces the rows), or raise "
               "monitoring_wait_s")
    log.warning("%s", problem)
    return got.rows, [problem], coverage


def harvest(spec: RunSpec, export_info: dict[str, Any] | None = None,
            log: TaskLog = _log,
            deployment: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Raw records (+ Cloud Monitoring for cloud targets) -> the tables, Parquet + warehouse.

    ``deployment`` is the deploy task's output (None when deploy failed).
    """
    from caio_operators.results.harvest import harvest_run

    meta = run_meta(spec, export_info, deployment)
    extra = None
    problems: list[str] = []
    if is_cloud(spec):
        extra, problems, meta["monitoring_coverage"] = cloud_timeseries(spec, deployment,
                                                                         meta, log)
    out = harvest_run(spec.layout, meta, spec.warehouse, extra_timeseries=extra,
                      problems=problems, **warehouse_options(spec))
    status, reason = out["figures"]["status"], out["figures"]["reason"]
    log.info("run status: %s %s", status, reason)
    return {"run_id": spec.run_id, "status": status, "counts": out["counts"],
            "tables": out["tables"]}


