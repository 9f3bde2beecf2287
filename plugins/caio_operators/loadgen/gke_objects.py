"""The objects of one headless GKE run: a master Job, a worker Job with
``parallelism = workers`` and a headless Service, derived from the manifests' Deployments
with LaunchSpec's argv (minus the leading ``locust``: the image's entrypoint)."""

from __future__ import annotations

import copy
import json
import math
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from caio_operators import storage
from caio_operators.loadgen.gke_manifests import (
    DAG_LABEL,
    LOCUST_COMMAND,
    PUBLISH_ENV,
    RUN_LABEL,
    TRY_LABEL,
    LocustBase,
    base_name,
    container_of,
    label_value,
    load_base,
)
from caio_operators.loadgen.launch import LaunchSpec, build_launch_spec


@dataclass(frozen=True)
class GkeTarget:
    """Where and as what the pods run: namespace, image, and the run they belong to."""

    namespace: str
    image: str
    run_id: str
    dag_id: str = ""
    try_number: int = 1
    service_account: str = ""  # Kubernetes service account (Workload Identity); "" = default

    def __post_init__(self) -> None:
        if not self.image:
            raise ValueError("locust_image is empty; build locust/Dockerfile, push it and pass "
                             "its reference")
        if not self.run_id:
            raise ValueError("run_id is empty")

    @property
    def service_name(self) -> str:
        return base_name(self.run_id)

    @property
    def master_job(self) -> str:
        return base_name(self.run_id) + "-master"

    @property
    def worker_job(self) -> str:
        return base_name(self.run_id) + "-worker"

    @property
    def run_label(self) -> str:
        return label_value(self.run_id)

    @property
    def selector(self) -> str:
        """Label selector of every pod of this run."""
        return f"{RUN_LABEL}={self.run_label}"

    def labels(self) -> dict[str, str]:
        labels = {RUN_LABEL: self.run_label, TRY_LABEL: str(int(self.try_number))}
        if self.dag_id:
            labels[DAG_LABEL] = label_value(self.dag_id)
        return labels

    def annotations(self) -> dict[str, str]:
        return {RUN_LABEL: self.run_id, **({DAG_LABEL: self.dag_id} if self.dag_id else {})}


# ---------------------------------------------------------------- launch spec and objects


def gke_launch_spec(
    *,
    config: Mapping[str, Any],
    config_uri: str,
    target: GkeTarget,
    workers: int,
    publish_uri: str,
    base: LocustBase | None = None,
    grace_s: float = 30.0,
    expect_workers_max_wait_s: int = 300,
    csv_name: str = "locust",
    html_name: str = "locust_report.html",
) -> LaunchSpec:
    """The LaunchSpec for pods: ``locust`` (the image's entrypoint) with the image's
    locustfile, the master bound on all interfaces, workers pointed at the run's Service,
    Locust's files in the master pod's scratch folder and published to ``publish_uri``.

    ``expect_workers_max_wait_s`` covers worker pods that wait for a node or an image pull.
    """
    base = base or load_base()
    work = base.work_dir.rstrip("/")
    return build_launch_spec(
        config=config,
        config_uri=config_uri,
        locust_cmd=LOCUST_COMMAND,
        locustfile=base.locustfile,
        workers=workers,
        csv_prefix=posixpath.join(work, csv_name),
        html_path=posixpath.join(work, html_name),
        log_dir=posixpath.join(work, "logs"),
        master_host=target.service_name,
        bind_host="*",
        master_port=base.master_port,
        grace_s=grace_s,
        expect_workers_max_wait_s=expect_workers_max_wait_s,
        env={PUBLISH_ENV: publish_uri},
        publish_uri=publish_uri,
        index_workers=False,  # one pod template: the Indexed Job numbers the pods
    )


def build_gke_launch(spec: Any, target: GkeTarget, base: LocustBase | None = None,
                     **kwargs: Any) -> LaunchSpec:
    """The GKE LaunchSpec of a run (a RunSpec): the config already written at
    ``layout.config_uri``; Locust's CSV/HTML published to the run's load folder under the
    names the harvest reads (``layout.locust_csv_prefix``, ``layout.locust_html``)."""
    layout = spec.layout
    config = json.loads(storage.read_text(layout.config_uri))
    return gke_launch_spec(
        config=config, config_uri=layout.config_uri, target=target, workers=spec.workers,
        publish_uri=layout.load_dir, base=base,
        csv_name=posixpath.basename(layout.locust_csv_prefix),
        html_name=posixpath.basename(layout.locust_html), **kwargs)


def pod_args(argv: Sequence[str]) -> list[str]:
    """LaunchSpec argv without the ``locust`` command the image's entrypoint supplies."""
    n = len(LOCUST_COMMAND)
    if tuple(argv[:n]) != LOCUST_COMMAND:
        raise ValueError(f"argv starts with {list(argv[:n])!r}, not {list(LOCUST_COMMAND)!r}: "
                         "build it with gke_launch_spec (pods run the image's `locust`)")
    return list(argv[n:])


@dataclass(frozen=True)
class GkeObjects:
    service: dict[str, Any]
    master_job: dict[str, Any]
    worker_job: dict[str, Any]

    def all(self) -> list[dict[str, Any]]:
        return [self.service, self.master_job, self.worker_job]


def build_objects(launch: LaunchSpec, target: GkeTarget, base: LocustBase, *,
                  active_deadline_s: float, ttl_after_finished_s: int = 3600) -> GkeObjects:
    """The run's headless Service and its master and worker Jobs, derived from the base.

    ``active_deadline_s`` bounds the Jobs even if nobody deletes them; the ownerReferences
    to the master Job are added at creation (they need its uid).
    """
    port = int(launch.meta.get("master_port", base.master_port))
    if port != base.master_port:
        raise ValueError(f"LaunchSpec master port {port} differs from the manifests' "
                         f"{base.master_port}; build it with gke_launch_spec")
    deadline = max(1, math.ceil(active_deadline_s))
    master = _job(base.master, target, name=target.master_job, args=pod_args(launch.master_argv),
                  env=launch.env, deadline_s=deadline, ttl_s=ttl_after_finished_s,
                  backoff_limit=0, parallelism=1, keep_ports=("master",))
    workers = launch.workers
    worker_argvs = {tuple(a) for a in launch.worker_argvs}
    if len(worker_argvs) != 1:
        raise ValueError("GKE workers share one pod template: every worker argv must be equal")
    # a worker pod that dies (node preemption, OOM) is replaced, at most `workers` times
    worker = _job(base.worker, target, name=target.worker_job,
                  args=pod_args(launch.worker_argvs[0]), env=launch.env, deadline_s=deadline,
                  ttl_s=ttl_after_finished_s, backoff_limit=workers, parallelism=workers,
                  keep_ports=())
    # each pod gets JOB_COMPLETION_INDEX 0..workers-1 (its open_rate share), kept by the
    # pod that replaces it
    worker["spec"]["completionMode"] = "Indexed"
    svc = base.service
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": target.service_name,
            "namespace": target.namespace,
            "labels": {**(svc["metadata"].get("labels") or {}), **target.labels()},
            "annotations": target.annotations(),
        },
        "spec": {
            # headless: workers resolve the master pod's IP directly, as soon as it has one
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {**(svc["spec"].get("selector") or {}), RUN_LABEL: target.run_label},
            "ports": [copy.deepcopy(base.master_port_spec)],
        },
    }
    return GkeObjects(service=service, master_job=master, worker_job=worker)


def _job(deployment: Mapping[str, Any], target: GkeTarget, *, name: str, args: list[str],
         env: Mapping[str, str], deadline_s: int, ttl_s: int, backoff_limit: int,
         parallelism: int, keep_ports: Iterable[str]) -> dict[str, Any]:
    template = copy.deepcopy(deployment["spec"]["template"])
    meta = template.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), **target.labels()}
    meta["annotations"] = {**(meta.get("annotations") or {}), **target.annotations()}
    pod = template["spec"]
    pod["restartPolicy"] = "Never"
    if target.service_account:
        pod["serviceAccountName"] = target.service_account
    container = container_of({"spec": {"template": template}})
    container["image"] = target.image
    container.pop("command", None)
    container["args"] = list(args)
    container.pop("envFrom", None)  # the interactive ConfigMap: the argv names the config
    container["env"] = _merge_env(container.get("env") or [], env)
    keep = set(keep_ports)
    ports = [p for p in container.get("ports") or [] if p.get("name") in keep]
    if ports:
        container["ports"] = ports
    else:
        container.pop("ports", None)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": target.namespace,
            "labels": {**(deployment["metadata"].get("labels") or {}), **target.labels()},
            "annotations": target.annotations(),
        },
        "spec": {
            "parallelism": parallelism,
            "completions": parallelism,
            "backoffLimit": backoff_limit,
            "activeDeadlineSeconds": deadline_s,
            "ttlSecondsAfterFinished": int(ttl_s),
            "template": template,
        },
    }


def _merge_env(base_env: list[dict[str, Any]], env: Mapping[str, str]) -> list[dict[str, Any]]:
    out = [dict(e) for e in base_env if e.get("name") not in env]
    out.extend({"name": k, "value": str(v)} for k, v in env.items())
    return out


def with_owner(obj: dict[str, Any], owner: Any) -> dict[str, Any]:
    """``obj`` owned by the master Job (a V1Job): deleting or garbage-collecting the Job
    deletes it too."""
    out = copy.deepcopy(obj)
    out["metadata"]["ownerReferences"] = [{
        "apiVersion": "batch/v1", "kind": "Job", "name": owner.metadata.name,
        "uid": owner.metadata.uid,
    }]
    return out


# ---------------------------------------------------------------- reading the cluster
