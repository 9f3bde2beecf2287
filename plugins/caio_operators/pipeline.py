"""The stages of one run as plain functions: RunSpec in, adapter call, small dict out.

Operators are thin wrappers around these; tests and the CLI call them directly. Heavy
imports (TensorFlow, pandas, duckdb, Google clients) happen inside the adapters a stage
uses. The same stages serve every target: the RunSpec picks the adapters (local server or
Vertex AI / AI Platform, local Locust or GKE, DuckDB or BigQuery, file:// or gs://).

About 530 lines, on purpose for now: each target maps a run's params itself
(``Target.deploy_run``); the launcher choice of `run_load` is next to move (issue 13's
Launcher.for_run step), which shrinks this module; splitting it before would move it twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from caio_operators import storage
from caio_operators.spec import CLOUD_TARGETS, RunSpec

if TYPE_CHECKING:
    from caio_operators.loadgen.gke import GkeLauncher
    from caio_operators.loadgen.local import LocalLauncher

_log = logging.getLogger(__name__)


class TaskLog(Protocol):
    """What the stages log through: a ``logging.Logger`` or an operator's ``self.log``."""

    def info(self, msg: Any, /, *args: Any) -> Any: ...
    def warning(self, msg: Any, /, *args: Any) -> Any: ...
    def error(self, msg: Any, /, *args: Any) -> Any: ...

#: how often the Locust master writes its stats to Cloud Logging (log-based metrics)
CLOUD_LOG_INTERVAL_S = 5


class RunFailed(RuntimeError):
    """The benchmark ran but failed (its rows and report are stored); the message says why."""


def is_cloud(spec: RunSpec) -> bool:
    """Served by a Google Cloud product (Vertex AI, AI Platform Prediction)."""
    return spec.target in CLOUD_TARGETS


def warehouse_options(spec: RunSpec) -> dict[str, Any]:
    """``open_warehouse`` options: BigQuery uses the run's connection (DuckDB ignores them)."""
    return {"gcp_conn_id": spec.gcp_conn_id, "impersonation_chain": spec.impersonation}


def cloud_spec_like(spec: RunSpec, deployment: Mapping[str, Any] | None) -> dict[str, Any]:
    """The RunSpec merged with the deploy output, as the cloud metrics adapters read it.

    The connection comes from the spec. For AI Platform, Cloud Monitoring knows the
    deployment by its resource ids (the model and the run's version), not by the names
    the user gave, so those replace ``model_name`` / ``model_version``.
    """
    like = {**spec.to_dict(), **dict(deployment or {})}
    like.update(gcp_conn_id=spec.gcp_conn_id, impersonation_chain=spec.impersonation)
    if spec.target == "caip" and deployment and deployment.get("version"):
        like.update(model_name=deployment["model"], model_version=deployment["version"])
    return like


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


def teardown_stub(spec: RunSpec | None) -> dict[str, Any] | None:
    """What a cloud target's undeploy needs to find the run's resources by their labels
    (``caio_run`` = run id) when the deploy task returned nothing (killed, timed out);
    None for the other targets."""
    if spec is None or not is_cloud(spec):
        return None
    return {"target": spec.target, "project": spec.project, "region": spec.region,
            "run_id": spec.run_id, "model_name": spec.model_name,
            "model_version": spec.model_version, "gcp_conn_id": spec.gcp_conn_id,
            "impersonation_chain": spec.impersonation}


def undeploy(deployment: dict[str, Any] | None, log: TaskLog = _log,
             spec: RunSpec | None = None) -> None:
    """Undo ``deployment``. Without one, a cloud run is still cleaned up by its run id."""
    from caio_operators.targets.base import get_target

    if not deployment:
        deployment = teardown_stub(spec)
        if deployment is None:
            log.info("nothing to undeploy")
            return
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
        from caio_operators.metrics.cloud import prepare_cloud_metrics

        cloud = prepare_cloud_metrics(cloud_spec_like(spec, deployment))
        log.info("log-based metrics: %s; dashboard: %s", cloud.get("log_metrics"),
                 cloud.get("dashboard"))
        result.update(cloud)
    return result


def cloud_logging_config(spec: RunSpec) -> dict[str, Any] | None:
    """The locustfile's ``cloud_logging`` config: the master writes its stats to Cloud
    Logging (the log-based metrics' source) for cloud targets and GKE runs."""
    if not (is_cloud(spec) or spec.load_runner == "gke") or not spec.project:
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
    """Write payload and config, run Locust (local processes or GKE pods), record the
    outcome in the bucket.

    The outcome (``load/result.json``) is written whatever happens, so harvest can tell
    a failed load from one that never ran. ``try_number`` labels the GKE objects, so a
    retry re-attaches to the pods of the try before instead of starting a second test.
    """
    from caio_operators.loadgen.launch import build_config, write_config
    from caio_operators.loadgen.payload import write_payload

    layout = spec.layout
    if spec.load_runner == "local":
        # A retry starts clean: the records of a killed or timed-out try (its processes all
        # ended with it) must not be harvested with this try's. GKE retries re-attach to the
        # pods of the try before instead, so their records stay.
        clear_load_outputs(layout)
    result: dict[str, Any] = {"status": "failed", "reason": "load did not start",
                              "started_at": time.time(), "ended_at": None}
    launcher: GkeLauncher | LocalLauncher | None = None
    try:
        write_payload(spec.images_uri, layout.payload_uri, spec.signature,
                      spec.instances_per_request)
        config = build_config(spec, deployment)
        cloud_logging = cloud_logging_config(spec)
        if cloud_logging:
            config["cloud_logging"] = cloud_logging
        write_config(layout.config_uri, config)
        with contextlib.ExitStack() as stack:
            if spec.load_runner == "gke":
                from caio_operators.loadgen.gke import GkeLauncher

                launcher = GkeLauncher.for_run(spec, try_number=try_number, log=log)
                timeout_s = None  # its own: pod start-up + the shape + the grace to stop
            else:
                from caio_operators.loadgen.local import LocalLauncher, build_launch

                work_dir = None
                if not storage.is_local(layout.load_dir):
                    # Locust's CSV/HTML and logs, copied to the bucket by the launcher
                    work_dir = stack.enter_context(tempfile.TemporaryDirectory(
                        prefix=f"caio-load-{spec.run_id}-"))
                launcher = LocalLauncher(build_launch(spec, work_dir=work_dir), log=log,
                                         host_watch=host_watch(spec, deployment))
                timeout_s = spec.duration_s + 120
            if on_launcher is not None:
                on_launcher(launcher)
            result = launcher.run(timeout_s=timeout_s)
    except Exception as exc:
        result.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        result.setdefault("ended_at", time.time())
        result["ended_at"] = result["ended_at"] or time.time()
        storage.write_text(layout.load_result_uri, json.dumps(result, indent=2, default=str))
        figures = getattr(launcher, "host_figures", None) if launcher is not None else None
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


def host_watch(spec: RunSpec, deployment: Mapping[str, Any] | None) -> Any:
    """The sampler of this machine's CPU for a load run from here: this process (Locust
    runs under it) and a local model server count as the run's own."""
    from caio_operators.metrics.host import HostWatch

    server = (deployment or {}).get("pid")  # only a local server's deployment has one
    return HostWatch(spec.run_id, roots=[server] if server else [])


def clear_load_outputs(layout: Any) -> None:
    """Remove what an earlier try of the load left in the run's load folder."""
    if storage.exists(layout.load_dir):
        _log.info("removing the outputs of an earlier load try in %s", layout.load_dir)
        storage.remove_tree(layout.load_dir)


def _protocol(spec: RunSpec, deployment: Mapping[str, Any] | None) -> str:
    if deployment and deployment.get("protocol"):
        return str(deployment["protocol"])
    return {"endpoint": spec.protocol, "vertex": "vertex"}.get(spec.target, "caip")


def _replicas(spec: RunSpec, deployment: Mapping[str, Any] | None) -> int:
    if deployment and deployment.get("replicas"):
        return int(deployment["replicas"])
    return spec.min_replicas if is_cloud(spec) else spec.replicas


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
    """The load outcome, failed when the local server had died before its teardown and
    degraded when some of its replicas had (``teardown.json``, written by undeploy)."""
    if not deployment or deployment.get("target") != "local" or not deployment.get("server_dir"):
        return load
    from caio_operators.targets.local import TEARDOWN_FILE, teardown_problem

    uri = storage.join(storage.to_uri(str(deployment["server_dir"])), TEARDOWN_FILE)
    if not storage.exists(uri):
        return load
    problem = teardown_problem(json.loads(storage.read_text(uri)))
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
    from caio_operators.metrics.cloud import harvest_cloud_metrics

    try:
        got = harvest_cloud_metrics(cloud_spec_like(spec, deployment), start, end,
                                    sc.DEFAULT_INTERVAL_S, wait_s=spec.monitoring_wait_s)
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


def check_baseline_run(spec: RunSpec) -> None:
    """A named ``baseline_run_id`` must be a run of the warehouse (the validate task's
    check; reads only, creates nothing). Raises SpecError naming it."""
    if not spec.baseline_run_id:
        return
    from caio_operators.results.warehouse import WarehouseError, open_warehouse
    from caio_operators.spec import SpecError

    try:
        found = open_warehouse(spec.warehouse, **warehouse_options(spec)).run_row(
            spec.baseline_run_id)
    except WarehouseError as exc:
        raise SpecError([f"baseline_run_id={spec.baseline_run_id!r}: cannot be looked up in "
                         f"the warehouse {spec.warehouse}: {exc}"]) from exc
    if found.empty:
        raise SpecError([f"baseline_run_id={spec.baseline_run_id!r}: no such run in the "
                         f"warehouse {spec.warehouse} (accepted: a run_id of its runs table, "
                         "e.g. from `python -m caio_operators.cli summary`; or empty)"])


def analyse(spec: RunSpec, log: TaskLog = _log) -> dict[str, Any]:
    """Judge the run against its baseline (unless it failed), then write its report with
    the verdict; a regression fails the task only after the report is written."""
    from caio_operators.analysis.report import analyse_run
    from caio_operators.analysis.verdicts import run_row
    from caio_operators.results.warehouse import open_warehouse

    row = run_row(open_warehouse(spec.warehouse, **warehouse_options(spec)), spec.run_id)
    judged = None
    if row is not None and row.get("status") != "failed":
        judged = judge(spec, log=log, enforce=False)
    # logs the summary table
    out = analyse_run(spec.warehouse, spec.run_id, spec.layout, verdict=judged,
                      **warehouse_options(spec))
    log.info("report: %s", out["report_uri"])
    status = out["summary"].get("status")
    if status == "failed":
        raise RunFailed(f"run {spec.run_id} failed: {out['summary'].get('reason')} "
                        f"(report with what was collected: {out['report_uri']})")
    enforce_verdict(spec, judged, log)
    return {"report_uri": out["report_uri"], "status": status, "verdict": judged}


class RegressionFound(RunFailed):
    """The run regressed against its baseline and ``fail_on_regression`` is set."""


def judge_options(spec: RunSpec) -> dict[str, Any]:
    """``verdicts.judge_run`` options from the RunSpec (how to compare and price)."""
    return {"percentile": spec.regression_percentile,
            "threshold": spec.regression_threshold_pct / 100.0,
            "price_table": spec.price_table, "machine_type": spec.machine_type,
            "accelerator_type": spec.accelerator_type,
            "accelerator_count": spec.accelerator_count,
            "local_machine_type": spec.local_machine_type,
            "instances_per_request": spec.instances_per_request}


def judge(spec: RunSpec, log: TaskLog = _log, baseline_run_id: str | None = None,
          enforce: bool = True) -> dict[str, Any]:
    """Compare the run with its baseline (``baseline_run_id``, else the spec's named one,
    else the rule), price it, store the verdict in the warehouse; with ``enforce`` a
    regression then fails (``fail_on_regression``) or warns (:func:`enforce_verdict`)."""
    from caio_operators.analysis.verdicts import judge_run
    from caio_operators.results.warehouse import open_warehouse

    warehouse = open_warehouse(spec.warehouse, **warehouse_options(spec))
    out = judge_run(warehouse, spec.run_id, baseline_version=spec.baseline_version,
                    baseline_run_id=baseline_run_id or spec.baseline_run_id or None,
                    **judge_options(spec))
    log.info("cost: %s", cost_text(out))
    if enforce:
        enforce_verdict(spec, out, log)
    return out


def cost_text(judged: Mapping[str, Any]) -> str:
    """A verdict's cost in words: per hour and per 1,000 predictions, or why unpriced."""
    if judged.get("cost_per_hour") is None:
        return f"not priced ({judged.get('cost_note')})"
    per_1k = "-" if judged.get("cost_per_1k") is None else f"{judged['cost_per_1k']:.4g}"
    return (f"{judged['cost_per_hour']:.4g}/h, {per_1k} per 1,000 predictions "
            f"({judged.get('cost_note')})")


def enforce_verdict(spec: RunSpec, judged: Mapping[str, Any] | None,
                    log: TaskLog = _log) -> None:
    """A regression fails the run with ``fail_on_regression``, else warns."""
    from caio_operators.analysis.compare import REGRESSION

    if not judged or judged["verdict"] != REGRESSION:
        return
    if spec.fail_on_regression:
        raise RegressionFound(f"run {spec.run_id} regressed against "
                              f"{judged['baseline_run_id']}: {judged['reason']}")
    log.warning("REGRESSION against %s: %s (fail_on_regression is off: warning only)",
                judged["baseline_run_id"], judged["reason"])


def compare_sweep(specs: list[Mapping[str, Any]], log: TaskLog = _log
                  ) -> dict[str, Any]:
    """A sweep's end: judge and rank its variants, write the comparison report and
    refresh the history report of every run in the warehouse."""
    from caio_operators.analysis.reports import compare_sweep as compare
    from caio_operators.analysis.reports import history_report
    from caio_operators.results.warehouse import open_warehouse
    from caio_operators.sweep import sweep_id

    if not specs:
        raise RunFailed("nothing to compare: the plan task produced no variants")
    first = RunSpec.from_dict(specs[0])
    warehouse = open_warehouse(first.warehouse, **warehouse_options(first))
    options = judge_options(first)
    for name in ("machine_type", "accelerator_type", "accelerator_count",
                 "instances_per_request"):
        options.pop(name)  # per variant
    out = compare(warehouse, specs, first.bucket, sweep_id(first.airflow_run_id), options)
    history = history_report(warehouse, first.bucket, dag_id="*")
    log.info("comparison report: %s", out["report_uri"])
    log.info("history report: %s", history["report_uri"])
    for row in out["ranking"]:
        log.info("#%s %-12s %-40s %s req/s  p95 %s ms  cost/1k %s  %s", row["rank"],
                 row["variant"], row["run_id"], row["capacity_rps"], row["p95_ms"],
                 row["cost_per_1k"], row["verdict"])
    failed = [r["variant"] for r in out["ranking"] if r["status"] == "failed"]
    if failed:
        raise RunFailed(f"variants {failed} failed (the report shows what was collected: "
                        f"{out['report_uri']})")
    return {**out, "history_uri": history["report_uri"]}


def history(warehouse_uri: str, bucket: str, dag_id: str = "caio_load_test",
            log: TaskLog = _log, **options: Any) -> dict[str, Any]:
    """Refresh the history report of ``dag_id``'s runs in ``warehouse_uri``."""
    from caio_operators.analysis.reports import history_report
    from caio_operators.results.warehouse import open_warehouse

    out = history_report(open_warehouse(warehouse_uri, **options), bucket, dag_id=dag_id)
    log.info("history report of %d runs (%d regressions): %s", out["runs"],
             out["regressions"], out["report_uri"])
    return out
