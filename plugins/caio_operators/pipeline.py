"""The stages of one run as plain functions: RunSpec in, adapter call, small dict out.

Operators are thin wrappers around these; tests and the CLI call them directly. Heavy
imports (TensorFlow, pandas, duckdb) happen inside the adapters a stage uses.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from caio_operators import storage
from caio_operators.spec import RunSpec

_log = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """The benchmark ran but failed (its rows and report are stored); the message says why."""


def export(spec: RunSpec, log: logging.Logger = _log) -> dict[str, Any]:
    from caio_operators.model.export import export_serving_model

    log.info("exporting %s to %s", spec.model_source, spec.model_uri)
    info = export_serving_model(
        spec.model_source, spec.model_uri,
        labels_uri=spec.labels_uri or None, test_images_uri=spec.images_uri,
    )
    log.info("weights: %s; both signatures checked on %s images", info.get("weights"),
             (info.get("check") or {}).get("images"))
    return info


def deploy(spec: RunSpec, log: logging.Logger = _log) -> dict[str, Any]:
    from caio_operators.targets.base import get_target

    target = get_target(spec.target)
    if spec.target == "local":
        # The server stops itself after this, even if the teardown never runs.
        lifetime = spec.duration_s + 1800
        deployment = target.deploy(
            model_uri=spec.model_uri, model_name=spec.model_name,
            model_version=spec.model_version, replicas=spec.replicas,
            server_dir=str(storage.local_path(spec.layout.server_dir)),
            threads_per_replica=spec.server_threads, max_lifetime_s=lifetime,
        )
    else:
        deployment = target.deploy(url=spec.endpoint_url, protocol=spec.protocol)
    log.info("deployed: %s", {k: deployment.get(k) for k in ("target", "predict_url",
                                                               "replicas", "pid")})
    return dict(deployment)


def undeploy(deployment: dict[str, Any] | None, log: logging.Logger = _log) -> None:
    from caio_operators.targets.base import get_target

    if not deployment:
        log.info("nothing to undeploy")
        return
    get_target(deployment["target"]).undeploy(deployment)
    log.info("undeployed %s", deployment.get("predict_url"))


def prepare_metrics(spec: RunSpec, log: logging.Logger = _log) -> dict[str, Any]:
    from caio_operators.results.warehouse import open_warehouse

    warehouse = open_warehouse(spec.warehouse)
    warehouse.ensure_schema()
    log.info("warehouse schema ready: %s", spec.warehouse)
    return {"warehouse": spec.warehouse}


def run_load(
    spec: RunSpec,
    deployment: dict[str, Any],
    log: logging.Logger = _log,
    on_launcher: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Write payload and config, run Locust locally, record the outcome in the bucket.

    The outcome (``load/result.json``) is written whatever happens, so harvest can tell
    a failed load from one that never ran.
    """
    from caio_operators.loadgen.launch import build_config, write_config
    from caio_operators.loadgen.local import LocalLauncher, build_launch
    from caio_operators.loadgen.payload import write_payload

    layout = spec.layout
    result: dict[str, Any] = {"status": "failed", "reason": "load did not start",
                              "started_at": time.time(), "ended_at": None}
    try:
        write_payload(spec.images_uri, layout.payload_uri, spec.signature,
                      spec.instances_per_request)
        write_config(layout.config_uri, build_config(spec, deployment))
        launcher = LocalLauncher(build_launch(spec), log=log)
        if on_launcher is not None:
            on_launcher(launcher)
        result = launcher.run(timeout_s=spec.duration_s + 120)
    except Exception as exc:
        result.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        result.setdefault("ended_at", time.time())
        result["ended_at"] = result["ended_at"] or time.time()
        storage.write_text(layout.load_result_uri, json.dumps(result, indent=2, default=str))
    if result.get("status") != "success":
        raise RunFailed(f"load test failed: {result.get('reason')}")
    return result


def run_meta(spec: RunSpec, export_info: dict[str, Any] | None) -> dict[str, Any]:
    """The fields of the ``runs`` row known before harvest."""
    from caio_operators import provenance

    layout = spec.layout
    if storage.exists(layout.load_result_uri):
        load = json.loads(storage.read_text(layout.load_result_uri))
    else:
        load = {"status": "failed", "reason": "the load did not run (an upstream task failed)"}
    prov = provenance.collect()
    if export_info:
        prov["model"] = {k: export_info.get(k) for k in
                         ("base_model", "weights", "num_classes", "tf_version")}
    return {
        "run_id": spec.run_id, "dag_id": spec.dag_id, "target": spec.target,
        "protocol": spec.protocol if spec.target == "endpoint" else "caip",
        "model_name": spec.model_name, "model_version": spec.model_version,
        "model_source": spec.model_source,
        "weights": (export_info or {}).get("weights", "unknown"),
        "signature": spec.signature, "load_shape": spec.load_shape, "users": spec.users,
        "workers": spec.workers, "replicas": spec.replicas,
        "status": load.get("status", "failed"), "reason": load.get("reason") or "",
        "started_at": load.get("started_at"), "ended_at": load.get("ended_at"),
        "provenance": prov, "params": spec.params(),
    }


def harvest(spec: RunSpec, export_info: dict[str, Any] | None = None,
            log: logging.Logger = _log) -> dict[str, Any]:
    from caio_operators.results.harvest import harvest_run

    meta = run_meta(spec, export_info)
    out = harvest_run(spec.layout, meta, spec.warehouse)
    log.info("run status: %s %s", meta["status"], meta["reason"])
    return {"run_id": spec.run_id, "status": meta["status"], "counts": out["counts"],
            "tables": out["tables"]}


def analyse(spec: RunSpec, log: logging.Logger = _log) -> dict[str, Any]:
    from caio_operators.analysis.report import analyse_run

    out = analyse_run(spec.warehouse, spec.run_id, spec.layout)  # logs the summary table
    log.info("report: %s", out["report_uri"])
    status = out["summary"].get("status")
    if status == "failed":
        raise RunFailed(f"run {spec.run_id} failed: {out['summary'].get('reason')} "
                        f"(report with what was collected: {out['report_uri']})")
    return {"report_uri": out["report_uri"], "status": status}
