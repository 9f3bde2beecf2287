"""CaipTarget: serve the SavedModel as an AI Platform Prediction (v1) model version.

Deploy = create the model if it is missing, create a version for this run (named after
the run id, labelled with it) from the SavedModel directory, wait for its operation and
for the version to be READY. A retry finds the same version by name: READY is reused,
CREATING is waited for, a FAILED one of this run is deleted and created again. Undeploy
deletes the version (waiting for the delete), then the model if this run created it and
no other version is left; NotFound counts as done, every step is attempted. A deploy that
fails cleans up after itself.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from caio_operators.hooks.errors import explain_google_error, is_not_found
from caio_operators.targets.base import DeployError
from caio_operators.targets.cloud import (
    RUN_LABEL,
    CloudTarget,
    check_cloud_args,
    cleanup_note,
    cloud_spec_kwargs,
    impersonation_list,
    label_value,
    monitored_scope,
    run_labels,
    undeploy_error,
)
from caio_operators.targets.protocols import cloud_base_url, predict_url

if TYPE_CHECKING:
    from caio_operators.metrics.families import MonitoredTarget

_log = logging.getLogger(__name__)

NAME = "caip"
STAGE = "caip"  # key in hooks.errors.STAGES


def resource_name(value: str, prefix: str) -> str:
    """``value`` as an AI Platform model/version name: a letter, then ``[A-Za-z0-9_]``."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", str(value)).strip("_")
    if not name or not name[0].isalpha():
        name = f"{prefix}_{name}".rstrip("_")
    return name[:128]


def model_resource_name(model_name: str) -> str:
    return resource_name(model_name, "m")


def version_resource_name(run_id: str) -> str:
    """One version per run (the run id already carries the model name and version)."""
    return resource_name(f"run_{run_id}", "run")


def version_body(*, name: str, model_uri: str, runtime_version: str, python_version: str,
                 machine_type: str, labels: Mapping[str, str], accelerator_type: str = "",
                 accelerator_count: int = 0, min_replicas: int = 1, max_replicas: int = 1,
                 autoscaling_target: int = 60, description: str = "") -> dict[str, Any]:
    """The ``Version`` resource to create (REST field names)."""
    accelerated = bool(accelerator_type) and accelerator_count > 0
    body: dict[str, Any] = {
        "name": name,
        "description": description,
        "deploymentUri": model_uri,
        "runtimeVersion": runtime_version,
        "framework": "TENSORFLOW",
        "pythonVersion": python_version,
        "machineType": machine_type,
        "labels": dict(labels),
        "autoScaling": {
            "minNodes": min_replicas,
            "maxNodes": max_replicas,
            "metrics": [{"name": "GPU_DUTY_CYCLE" if accelerated else "CPU_USAGE",
                         "target": autoscaling_target}],
        },
    }
    if accelerated:
        # int64 fields travel as strings in the JSON mapping.
        body["acceleratorConfig"] = {"count": str(accelerator_count), "type": accelerator_type}
    return body


class CaipTarget(CloudTarget):
    """Deploy to / undeploy from AI Platform Prediction.

    :param hook: an ``AIPlatformPredictionHook`` (default: built per call from the
        connection id, impersonation chain and region).
    :param operation_timeout_s: how long to wait for one operation or a version to be READY.
    :param poll_initial_s: first delay between polls (backoff x1.5, at most 30 s).
    """

    name = NAME

    def __init__(
        self,
        *,
        hook: Any = None,
        operation_timeout_s: float = 1800.0,
        poll_initial_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        log: logging.Logger | None = None,
    ) -> None:
        self._hook = hook
        self.operation_timeout_s = operation_timeout_s
        self.poll_initial_s = poll_initial_s
        self._sleep = sleep
        self.log = log or _log

    def _get_hook(self, gcp_conn_id: str, impersonation_chain: list[str] | None,
                  region: str) -> Any:
        if self._hook is not None:
            return self._hook
        from caio_operators.hooks.caip import AIPlatformPredictionHook

        return AIPlatformPredictionHook(gcp_conn_id=gcp_conn_id,
                                        impersonation_chain=impersonation_chain, region=region)

    def _wait(self, hook: Any, operation: dict | None) -> None:
        if operation:
            hook.wait_for_operation(operation, timeout_s=self.operation_timeout_s,
                                    initial_delay_s=self.poll_initial_s,
                                    max_delay_s=max(self.poll_initial_s, 30.0))

    # -- deploy -------------------------------------------------------------------------

    def run_protocol(self, spec: Any) -> str:
        return "caip"

    def monitored_target(self, spec: Any, deployment: Mapping[str, Any] | None
                         ) -> MonitoredTarget:
        """Cloud Monitoring knows an AI Platform version by its resource ids (the model and
        the run's version, from the deploy output), not by the names the user gave."""
        if deployment and deployment.get("version"):
            return monitored_scope(spec, deployment, model_name=str(deployment["model"]),
                                   model_version=str(deployment["version"]))
        return monitored_scope(spec, deployment)

    def deploy_run(self, spec: Any) -> dict[str, Any]:
        """``deploy`` with a run's params (``_spec_kwargs``)."""
        return self.deploy(**_spec_kwargs(spec))

    def deploy(
        self,
        *,
        project: str,
        region: str,
        model_name: str,
        model_version: str,
        model_uri: str,
        run_id: str,
        machine_type: str = "n1-standard-4",
        accelerator_type: str = "",
        accelerator_count: int = 0,
        min_replicas: int = 1,
        max_replicas: int = 1,
        autoscaling_target: int = 60,
        runtime_version: str = "2.11",
        python_version: str = "3.7",
        dag_id: str = "",
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: str | Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Create (or reuse) the model and this run's version; return the Deployment dict."""
        check_cloud_args(NAME, project=project, model_uri=model_uri, run_id=run_id)
        chain = impersonation_list(impersonation_chain)
        labels = run_labels(run_id, model_name=model_name, model_version=model_version,
                            dag_id=dag_id)
        model = model_resource_name(model_name)
        version = version_resource_name(run_id)
        base = cloud_base_url("caip", region)
        deployment: dict[str, Any] = {
            "target": NAME, "protocol": "caip", "predict_url": "", "base_url": base,
            "health_url": "", "project": project, "region": region, "run_id": run_id,
            "model_name": model_name, "model_version": model_version, "model_uri": model_uri,
            "gcp_conn_id": gcp_conn_id, "impersonation_chain": chain,
            "machine_type": machine_type, "accelerator_type": accelerator_type,
            "accelerator_count": accelerator_count, "min_replicas": min_replicas,
            "max_replicas": max_replicas, "autoscaling_target": autoscaling_target,
            "runtime_version": runtime_version, "replicas": min_replicas,
            "model": model, "model_created": False, "version": version,
            "version_created": False,
        }
        hook = self._get_hook(gcp_conn_id, chain, region)
        body = version_body(
            name=version, model_uri=model_uri, runtime_version=runtime_version,
            python_version=python_version, machine_type=machine_type, labels=labels,
            accelerator_type=accelerator_type, accelerator_count=accelerator_count,
            min_replicas=min_replicas, max_replicas=max_replicas,
            autoscaling_target=autoscaling_target,
            description=f"caio-bench run {run_id}: {model_name} {model_version}")
        try:
            self._ensure_model(hook, project, region, deployment, labels)
            self._ensure_version(hook, project, deployment, body, labels[RUN_LABEL])
        except Exception as exc:
            message = explain_google_error(exc, STAGE)
            self.log.error("caip: %s; cleaning up what this run created", message)
            note = cleanup_note(lambda: self._teardown(hook, deployment))
            raise DeployError(message + note) from exc
        deployment["predict_url"] = predict_url("caip", base, project=project, model=model,
                                                version=version)
        self.log.info("caip: serving at %s", deployment["predict_url"])
        return deployment

    def _ensure_model(self, hook: Any, project: str, region: str, deployment: dict,
                      labels: dict) -> None:
        from google.api_core import exceptions

        model = deployment["model"]
        try:
            existing = hook.get_model(model=model, project_id=project)
        except exceptions.NotFound:
            existing = None
        if existing is not None:
            # Created by an earlier try of this run if it carries this run's label.
            ours = existing.get("labels", {}).get(RUN_LABEL) == labels[RUN_LABEL]
            deployment["model_created"] = ours
            self.log.info("caip: using existing model %s%s", model,
                          " (from an earlier try)" if ours else "")
            return
        spec: dict[str, Any] = {
            "name": model, "labels": dict(labels),
            "description": "caio-bench benchmark model",
            # Access logs feed the log-based latency metrics of the metrics stage.
            "onlinePredictionLogging": True,
        }
        if not region or region == "global":
            spec["regions"] = ["us-central1"]
        try:
            hook.create_model(model=spec, project_id=project)
        except exceptions.Conflict:
            self.log.info("caip: model %s was created concurrently; using it", model)
            return
        deployment["model_created"] = True
        self.log.info("caip: created model %s", model)

    def _ensure_version(self, hook: Any, project: str, deployment: dict, body: dict,
                        run: str) -> None:
        from google.api_core import exceptions

        model, version = deployment["model"], deployment["version"]
        try:
            existing = hook.get_version(model=model, version=version, project_id=project)
        except exceptions.NotFound:
            existing = None
        if existing is not None:
            ours = existing.get("labels", {}).get(RUN_LABEL) == run
            deployment["version_created"] = ours
            state = existing.get("state", "UNKNOWN")
            self.log.info("caip: version %s exists (%s)", version, state)
            if state == "FAILED" and ours:
                self.log.info("caip: replacing the failed version from an earlier try: %s",
                              existing.get("errorMessage", ""))
                self._wait(hook, hook.delete_version(model=model, version=version,
                                                     project_id=project))
                self._wait_gone(hook, project, model, version)
                existing = None
        if existing is None:
            try:
                operation = hook.create_version(model=model, version=body, project_id=project)
            except exceptions.Conflict:
                self.log.info("caip: version %s was created concurrently", version)
            else:
                deployment["version_created"] = True
                self.log.info("caip: creating version %s (%s)", version,
                              operation.get("name"))
                self._wait(hook, operation)
        self._wait_ready(hook, project, model, version)

    def _poll(self, check: Callable[[], bool], what: str) -> None:
        """Call ``check`` with backoff until it returns True or the timeout passes."""
        deadline = time.monotonic() + self.operation_timeout_s
        delay = self.poll_initial_s
        while not check():
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"{what} within {self.operation_timeout_s:.0f}s")
            self._sleep(delay)
            delay = min(delay * 1.5, max(self.poll_initial_s, 30.0))

    def _wait_ready(self, hook: Any, project: str, model: str, version: str) -> None:
        def ready() -> bool:
            current = hook.get_version(model=model, version=version, project_id=project)
            state = current.get("state", "UNKNOWN")
            if state == "FAILED":
                raise DeployError(f"AI Platform version {model}/{version} failed: "
                                   f"{current.get('errorMessage') or 'no error message'}")
            return state == "READY"

        self._poll(ready, f"version {model}/{version} did not become READY")

    def _wait_gone(self, hook: Any, project: str, model: str, version: str) -> None:
        def gone() -> bool:
            try:
                hook.get_version(model=model, version=version, project_id=project)
            except Exception as exc:
                if is_not_found(exc):
                    return True
                raise
            return False

        self._poll(gone, f"version {model}/{version} was not deleted")

    # -- undeploy -----------------------------------------------------------------------

    def undeploy(self, deployment: Mapping[str, Any]) -> None:
        """Delete the run's version, and the model if the run created it and it is empty.

        A minimal dict (``project``, ``region``, ``run_id``, ``model_name``) is enough: the
        names are derived from the run and ownership is read from the labels.
        """
        hook = self._get_hook(deployment.get("gcp_conn_id", "google_cloud_default"),
                              impersonation_list(deployment.get("impersonation_chain")),
                              deployment.get("region", ""))
        if not deployment.get("version"):
            deployment = self._discover(hook, deployment)
        self._teardown(hook, deployment)

    def _discover(self, hook: Any, deployment: Mapping[str, Any]) -> dict[str, Any]:
        run = label_value(deployment["run_id"])
        found = dict(deployment, model=model_resource_name(deployment["model_name"]),
                     version=version_resource_name(deployment["run_id"]))
        project = deployment["project"]
        for key, get in (
            ("model_created", lambda: hook.get_model(model=found["model"], project_id=project)),
            ("version_created", lambda: hook.get_version(
                model=found["model"], version=found["version"], project_id=project)),
        ):
            try:
                found[key] = get().get("labels", {}).get(RUN_LABEL) == run
            except Exception as exc:
                if not is_not_found(exc):
                    raise
                found[key] = False
        return found

    def _teardown(self, hook: Any, deployment: Mapping[str, Any]) -> None:
        project, model, version = (deployment["project"], deployment["model"],
                                   deployment["version"])
        errors: list[str] = []

        def step(what: str, action: Callable[[], None]) -> None:
            try:
                action()
            except Exception as exc:
                if is_not_found(exc):
                    self.log.info("caip: %s: already gone", what)
                    return
                message = f"{what}: {explain_google_error(exc, STAGE)}"
                self.log.error("caip: %s", message)
                errors.append(message)

        if deployment.get("version_created"):
            step(f"delete version {model}/{version}", lambda: self._wait(
                hook, hook.delete_version(model=model, version=version, project_id=project)))
        if deployment.get("model_created"):
            step(f"delete model {model}", lambda: self._delete_model_if_empty(
                hook, project, model))
        if errors:
            raise undeploy_error(f"caip undeploy of run {deployment.get('run_id')}", errors)

    def _delete_model_if_empty(self, hook: Any, project: str, model: str) -> None:
        left = hook.list_versions(model=model, project_id=project)
        if left:
            self.log.info("caip: keeping model %s: %d other version(s) remain", model, len(left))
            return
        self._wait(hook, hook.delete_model(model=model, project_id=project))
        self.log.info("caip: deleted model %s", model)


def _spec_kwargs(spec: Any) -> dict[str, Any]:
    """``CaipTarget.deploy`` keyword arguments from a RunSpec-like object."""
    return {**cloud_spec_kwargs(spec), "runtime_version": spec.runtime_version}
