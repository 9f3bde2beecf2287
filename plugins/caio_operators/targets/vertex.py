"""VertexTarget: serve the SavedModel from a Vertex AI endpoint, and take it down again.

Deploy = upload the SavedModel (``artifact_uri`` = the model URI) with a prebuilt TF
serving container, create (or re-attach to) an endpoint, deploy the model with dedicated
resources and an autoscaling target, and wait for each long-running operation. Every
resource is labelled with the run id, so a retry of the same run finds and reuses what
an earlier try created instead of duplicating it. The Deployment dict says which
resources this run created; undeploy deletes only those, tries every step even if one
fails, and treats NotFound as already done. A deploy that fails cleans up after itself.

The request bodies are built by the pure functions of ``targets/vertex_requests.py``.
Uses the Google provider's ``ModelServiceHook`` / ``EndpointServiceHook`` (imported
lazily: the provider's clients are heavy). Tests inject hooks whose GAPIC clients are fakes.

What it shares with the caip target (labels, argument checks, the common run params, the
Monitoring scope) lives in ``targets/cloud.py``.
"""

from __future__ import annotations

import logging
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
    run_labels,
    undeploy_error,
)
from caio_operators.targets.protocols import cloud_base_url, predict_url
from caio_operators.targets.vertex_requests import (
    ACCELERATOR_METRIC,
    CPU_METRIC,
    default_serving_image,
    deployed_model_spec,
    model_spec,
)

if TYPE_CHECKING:
    pass

__all__ = ["ACCELERATOR_METRIC", "CPU_METRIC", "NAME", "RUN_LABEL", "STAGE", "VertexTarget",
           "default_serving_image", "deployed_model_spec", "model_spec"]

_log = logging.getLogger(__name__)

NAME = "vertex"
STAGE = "vertex"  # key in hooks.errors.STAGES


def _last(name: str) -> str:
    """The id at the end of a resource name (``.../models/123@2`` -> ``123``)."""
    return name.rpartition("/")[-1].partition("@")[0]


def _filter(**equals: str) -> str:
    # Values are label_value()-clean ([a-z0-9_-]) so quoting them cannot break the filter.
    return " AND ".join(f'{key}="{value}"' for key, value in equals.items())


class VertexTarget(CloudTarget):
    """Deploy to / undeploy from a Vertex AI endpoint.

    :param model_hook: a ``ModelServiceHook`` (default: built per call from
        ``gcp_conn_id`` / ``impersonation_chain``).
    :param endpoint_hook: an ``EndpointServiceHook`` (same default).
    :param operation_timeout_s: how long to wait for one long-running operation.
    :param poll_initial_s: first delay between operation polls (backoff x1.5, at most 60 s).
    """

    name = NAME

    def __init__(
        self,
        *,
        model_hook: Any = None,
        endpoint_hook: Any = None,
        operation_timeout_s: float = 3600.0,
        poll_initial_s: float = 5.0,
        log: logging.Logger | None = None,
    ) -> None:
        self._model_hook = model_hook
        self._endpoint_hook = endpoint_hook
        self.operation_timeout_s = operation_timeout_s
        self.poll_initial_s = poll_initial_s
        self.log = log or _log

    # -- plumbing -----------------------------------------------------------------------

    def _hooks(self, gcp_conn_id: str, impersonation_chain: list[str] | None) -> tuple[Any, Any]:
        model_hook, endpoint_hook = self._model_hook, self._endpoint_hook
        if model_hook is None:
            from airflow.providers.google.cloud.hooks.vertex_ai.model_service import (
                ModelServiceHook,
            )

            model_hook = ModelServiceHook(gcp_conn_id=gcp_conn_id,
                                          impersonation_chain=impersonation_chain)
        if endpoint_hook is None:
            from airflow.providers.google.cloud.hooks.vertex_ai.endpoint_service import (
                EndpointServiceHook,
            )

            endpoint_hook = EndpointServiceHook(gcp_conn_id=gcp_conn_id,
                                                impersonation_chain=impersonation_chain)
        return model_hook, endpoint_hook

    def _wait(self, hook: Any, operation: Any, what: str) -> Any:
        """Block until ``operation`` is done; its result (raises on an operation error)."""
        from google.api_core.future.polling import DEFAULT_POLLING

        self.log.info("vertex: waiting for %s (%s)", what,
                      getattr(getattr(operation, "operation", None), "name", "operation"))
        polling = DEFAULT_POLLING.with_delay(initial=self.poll_initial_s,
                                             maximum=max(self.poll_initial_s, 60.0),
                                             multiplier=1.5)
        return hook.wait_for_operation_result(
            operation=operation, timeout=int(self.operation_timeout_s), polling=polling)

    # -- deploy -------------------------------------------------------------------------

    def run_protocol(self, spec: Any) -> str:
        return "vertex"

    def deploy_run(self, spec: Any) -> dict[str, Any]:
        """``deploy`` with a run's params (``_spec_kwargs``). A signature other than the
        default is sent to ``:rawPredict``: Vertex's ``:predict`` accepts only
        ``{instances, parameters}`` and serves the default signature, while ``:rawPredict``
        passes the TF Serving body (with ``signature_name``) through."""
        deployed = dict(self.deploy(**_spec_kwargs(spec)))
        if spec.signature != "serving_default":
            deployed["predict_url"] = deployed["predict_url"].replace(":predict", ":rawPredict")
        return deployed

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
        serving_container_image: str = "",
        endpoint: str = "",
        dag_id: str = "",
        access_logging: bool = True,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: str | Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Upload, deploy and wait until the endpoint serves; return the Deployment dict.

        ``endpoint``: an existing endpoint id or resource name to deploy into (it is kept
        on undeploy); empty = create one for this run (deleted on undeploy).
        """
        check_cloud_args(NAME, project=project, model_uri=model_uri, run_id=run_id)
        chain = impersonation_list(impersonation_chain)
        labels = run_labels(run_id, model_name=model_name, model_version=model_version,
                            dag_id=dag_id)
        run = labels[RUN_LABEL]
        image = serving_container_image or default_serving_image(region, accelerator_type)
        base = cloud_base_url("vertex", region)
        deployment: dict[str, Any] = {
            "target": NAME, "protocol": "vertex", "predict_url": "", "base_url": base,
            "health_url": "", "project": project, "region": region, "run_id": run_id,
            "model_name": model_name, "model_version": model_version, "model_uri": model_uri,
            "gcp_conn_id": gcp_conn_id, "impersonation_chain": chain,
            "serving_container_image": image,
            "machine_type": machine_type, "accelerator_type": accelerator_type,
            "accelerator_count": accelerator_count, "min_replicas": min_replicas,
            "max_replicas": max_replicas, "autoscaling_target": autoscaling_target,
            "replicas": min_replicas,
            "model": "", "model_id": "", "model_created": False,
            "endpoint": "", "endpoint_id": "", "endpoint_created": False,
            "deployed_model_id": "", "previous_traffic_split": {},
        }
        model_hook, endpoint_hook = self._hooks(gcp_conn_id, chain)
        where = {"project_id": project, "region": region}
        try:
            self._ensure_model(model_hook, where, deployment, labels, run, display_name=(
                f"caio-{label_value(model_name)}-{label_value(model_version)}"),
                description=f"caio-bench run {run_id}: {model_name} {model_version}",
                model_uri=model_uri, image=image)
            self._ensure_endpoint(endpoint_hook, where, deployment, labels, run, endpoint)
            self._ensure_deployed(endpoint_hook, where, deployment, deployed_model_spec(
                model=deployment["model"], display_name=f"caio-{run}"[:128],
                machine_type=machine_type, accelerator_type=accelerator_type,
                accelerator_count=accelerator_count, min_replicas=min_replicas,
                max_replicas=max_replicas, autoscaling_target=autoscaling_target,
                access_logging=access_logging))
        except Exception as exc:
            message = explain_google_error(exc, STAGE)
            self.log.error("vertex: %s; cleaning up what this run created", message)
            note = cleanup_note(lambda: self._teardown(deployment, model_hook, endpoint_hook))
            raise DeployError(message + note) from exc
        deployment["predict_url"] = predict_url(
            "vertex", base, project=project, location=region, endpoint=deployment["endpoint_id"])
        self.log.info("vertex: serving at %s", deployment["predict_url"])
        return deployment

    def _ensure_model(self, hook: Any, where: dict, deployment: dict, labels: dict, run: str,
                      *, display_name: str, description: str, model_uri: str,
                      image: str) -> None:
        found = list(hook.list_models(
            **where, filter=_filter(**{f"labels.{RUN_LABEL}": run, "display_name": display_name})))
        if found:
            # An earlier try of this run uploaded it: reuse it (still ours to delete).
            deployment.update(model=found[0].name, model_created=True)
            self.log.info("vertex: reusing model %s from an earlier try", found[0].name)
        else:
            spec = model_spec(display_name=display_name, model_uri=model_uri, image_uri=image,
                              labels=labels, description=description)
            result = self._wait(hook, hook.upload_model(**where, model=spec), "model upload")
            deployment.update(model=result.model, model_created=True)
            self.log.info("vertex: uploaded model %s", result.model)
        deployment["model_id"] = _last(deployment["model"])

    def _ensure_endpoint(self, hook: Any, where: dict, deployment: dict, labels: dict,
                         run: str, endpoint: str) -> None:
        if endpoint:
            existing = hook.get_endpoint(**where, endpoint=_last(endpoint))
            deployment.update(
                endpoint=existing.name, endpoint_created=False,
                previous_traffic_split={k: int(v) for k, v in existing.traffic_split.items()})
        else:
            display_name = f"caio-{run}"[:128]
            found = list(hook.list_endpoints(**where, filter=_filter(
                **{f"labels.{RUN_LABEL}": run, "display_name": display_name})))
            if found:
                deployment.update(endpoint=found[0].name, endpoint_created=True)
                self.log.info("vertex: re-attaching to endpoint %s", found[0].name)
            else:
                spec = {"display_name": display_name, "labels": dict(labels)}
                result = self._wait(hook, hook.create_endpoint(**where, endpoint=spec),
                                    "endpoint creation")
                deployment.update(endpoint=result.name, endpoint_created=True)
                self.log.info("vertex: created endpoint %s", result.name)
        deployment["endpoint_id"] = _last(deployment["endpoint"])

    def _ensure_deployed(self, hook: Any, where: dict, deployment: dict, spec: dict) -> None:
        current = hook.get_endpoint(**where, endpoint=deployment["endpoint_id"])
        ours = [dm.id for dm in current.deployed_models
                if _last(dm.model) == deployment["model_id"]]
        if ours:
            deployment["deployed_model_id"] = ours[0]
            self.log.info("vertex: model already deployed as %s", ours[0])
            return
        # "0" is the model being deployed: it takes all traffic for the benchmark.
        result = self._wait(hook, hook.deploy_model(
            **where, endpoint=deployment["endpoint_id"], deployed_model=spec,
            traffic_split={"0": 100}), "model deployment")
        deployment["deployed_model_id"] = result.deployed_model.id
        self.log.info("vertex: deployed model %s", result.deployed_model.id)

    # -- undeploy -----------------------------------------------------------------------

    def undeploy(self, deployment: Mapping[str, Any]) -> None:
        """Undeploy the model, then delete the endpoint and the model if this run created them.

        Every step is attempted; NotFound counts as done; UndeployError lists what failed.
        """
        model_hook, endpoint_hook = self._hooks(
            deployment.get("gcp_conn_id", "google_cloud_default"),
            impersonation_list(deployment.get("impersonation_chain")))
        if not deployment.get("model_id") and not deployment.get("endpoint_id"):
            deployment = self._discover(deployment, model_hook, endpoint_hook)
        self._teardown(deployment, model_hook, endpoint_hook)

    def _discover(self, deployment: Mapping[str, Any], model_hook: Any,
                  endpoint_hook: Any) -> dict[str, Any]:
        """Fill in the resources labelled with the run id (for a teardown that only knows
        ``project``, ``region`` and ``run_id``, e.g. after a deploy task was killed)."""
        where = {"project_id": deployment["project"], "region": deployment["region"]}
        run_filter = _filter(**{f"labels.{RUN_LABEL}": label_value(deployment["run_id"])})
        found = dict(deployment)
        models = list(model_hook.list_models(**where, filter=run_filter))
        endpoints = list(endpoint_hook.list_endpoints(**where, filter=run_filter))
        if models:
            found.update(model=models[0].name, model_id=_last(models[0].name),
                         model_created=True)
        if endpoints:
            found.update(endpoint=endpoints[0].name, endpoint_id=_last(endpoints[0].name),
                         endpoint_created=True)
        self.log.info("vertex: run %s labels found model %s, endpoint %s",
                      deployment["run_id"], found.get("model_id") or "-",
                      found.get("endpoint_id") or "-")
        return found

    def _teardown(self, deployment: Mapping[str, Any], model_hook: Any,
                  endpoint_hook: Any) -> None:
        where = {"project_id": deployment["project"], "region": deployment["region"]}
        errors: list[str] = []

        def step(what: str, action: Callable[[], None]) -> None:
            try:
                action()
            except Exception as exc:
                if is_not_found(exc):
                    self.log.info("vertex: %s: already gone", what)
                    return
                message = f"{what}: {explain_google_error(exc, STAGE)}"
                self.log.error("vertex: %s", message)
                errors.append(message)

        endpoint_id = deployment.get("endpoint_id") or ""
        model_id = deployment.get("model_id") or ""
        if endpoint_id and (model_id or deployment.get("endpoint_created")):
            step(f"undeploy model {model_id} from endpoint {endpoint_id}",
                 lambda: self._undeploy_model(endpoint_hook, where, deployment))
        if endpoint_id and deployment.get("endpoint_created"):
            step(f"delete endpoint {endpoint_id}", lambda: self._wait(
                endpoint_hook, endpoint_hook.delete_endpoint(**where, endpoint=endpoint_id),
                "endpoint deletion"))
        if model_id and deployment.get("model_created"):
            step(f"delete model {model_id}", lambda: self._wait(
                model_hook, model_hook.delete_model(**where, model=model_id), "model deletion"))
        if errors:
            raise undeploy_error(f"vertex undeploy of run {deployment.get('run_id')}", errors)

    def _undeploy_model(self, hook: Any, where: dict, deployment: Mapping[str, Any]) -> None:
        # Look the deployed models up rather than trusting the dict alone: a deploy that
        # was interrupted may have deployed without recording the id.
        endpoint_id, model_id = deployment["endpoint_id"], deployment.get("model_id")
        current = hook.get_endpoint(**where, endpoint=endpoint_id)
        # On an endpoint the run created everything deployed is the run's.
        ours = {dm.id for dm in current.deployed_models
                if deployment.get("endpoint_created") or _last(dm.model) == model_id}
        if deployment.get("deployed_model_id"):
            ours.add(deployment["deployed_model_id"])
        others = [dm.id for dm in current.deployed_models if dm.id not in ours]
        for deployed_id in sorted(ours):
            split = _remaining_split(deployment.get("previous_traffic_split") or {}, others)
            try:
                self._wait(hook, hook.undeploy_model(
                    **where, endpoint=endpoint_id, deployed_model_id=deployed_id,
                    traffic_split=split), f"undeploy of {deployed_id}")
            except Exception as exc:
                if not is_not_found(exc):
                    raise
        self.log.info("vertex: undeployed %s from endpoint %s", sorted(ours), endpoint_id)


def _remaining_split(previous: Mapping[str, int], others: Sequence[str]) -> dict[str, int] | None:
    """Traffic for the models left on a shared endpoint once ours is gone.

    The endpoint's split from before the run if it still adds up, else all traffic to
    the first remaining model; None when nothing remains (the API then empties it).
    """
    if not others:
        return None
    kept = {k: int(v) for k, v in previous.items() if k in others and int(v) > 0}
    if sum(kept.values()) == 100:
        return kept
    return {others[0]: 100}


def _spec_kwargs(spec: Any) -> dict[str, Any]:
    """``VertexTarget.deploy`` keyword arguments from a RunSpec-like object."""
    return {**cloud_spec_kwargs(spec), "serving_container_image": spec.serving_container_image}
