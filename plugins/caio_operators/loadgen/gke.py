"""Run a LaunchSpec on GKE: a headless Locust master Job, a headless Service for the master
port and a worker Job with ``parallelism = workers``, watched to the end and always deleted.

The pods run exactly LaunchSpec's argv (minus the leading ``locust``: the image's entrypoint),
so a GKE run and a local run differ only in where the processes live. The pod templates
come from the Kustomize base in ``locust/manifests`` (the one source of truth, also used for
interactive web-UI runs): :func:`render_base` renders it in Python (the Composer worker has
no kubectl; a test checks the result equals ``kubectl kustomize``) and
:func:`build_objects` turns its Deployments into Jobs.

Every object is named from the run id and labelled ``caio.dev/run-id``, so a retry of the
task finds the objects of the try before and waits on them instead of starting a second
test. The master Job owns the Service and the worker Job, carries ``activeDeadlineSeconds``
and ``ttlSecondsAfterFinished``: even if Airflow dies mid-run, Kubernetes cleans up.

Results: workers write raw records to the bucket themselves; the master's Locust CSV/HTML
are uploaded by the locustfile at exit to ``$CAIO_PUBLISH_URI`` (``LaunchSpec.publish_uri``);
the pod logs are copied to ``<publish_uri>/logs/`` by this launcher before it deletes them.

``kubernetes`` is imported only when connecting (its import takes seconds); tests inject
CoreV1Api/BatchV1Api-like objects.

Why one module: the launcher is a state machine over the objects it created
(create, re-attach, watch, collect logs, clean up share its lock and object list); the pure
parts live in gke_manifests.py, gke_objects.py and gke_status.py.
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from caio_operators import storage
from caio_operators.hooks.gke import api_message, api_status, connect, explain_api_error

# gke is the public entry of the GKE runner: its building blocks are re-exported here.
from caio_operators.loadgen.gke_manifests import (
    COMPONENT_LABEL,
    CONTAINER,
    DAG_LABEL,
    LOCUST_COMMAND,
    MANIFESTS_ENV,
    MAX_BASE_NAME,
    NAME_PREFIX,
    PUBLISH_ENV,
    RUN_LABEL,
    TRY_LABEL,
    GkeError,
    LocustBase,
    ManifestError,
    base_name,
    container_of,
    default_manifests_dir,
    label_value,
    load_base,
    render_base,
)
from caio_operators.loadgen.gke_objects import (
    GkeObjects,
    GkeTarget,
    build_gke_launch,
    build_objects,
    gke_launch_spec,
    pod_args,
    with_owner,
)
from caio_operators.loadgen.gke_status import (
    component_of,
    exit_code,
    job_state,
    parse_master_log,
    pod_state,
    summarize_pods,
)
from caio_operators.loadgen.launch import LaunchSpec
from caio_operators.loadgen.progress import format_progress

__all__ = [
    "COMPONENT_LABEL",
    "CONTAINER",
    "DAG_LABEL",
    "LOCUST_COMMAND",
    "MANIFESTS_ENV",
    "MAX_BASE_NAME",
    "NAME_PREFIX",
    "PUBLISH_ENV",
    "RUN_LABEL",
    "TRY_LABEL",
    "GkeError",
    "GkeLauncher",
    "GkeObjects",
    "GkeTarget",
    "LocustBase",
    "ManifestError",
    "base_name",
    "build_gke_launch",
    "build_objects",
    "container_of",
    "default_manifests_dir",
    "exit_code",
    "gke_launch_spec",
    "job_state",
    "label_value",
    "load_base",
    "parse_master_log",
    "pod_args",
    "pod_state",
    "render_base",
    "summarize_pods",
    "with_owner",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- the launcher


class GkeLauncher:
    """Start (or re-attach to), watch and always clean up one distributed Locust run on GKE.

    ``core_api``/``batch_api``: ``kubernetes.client.CoreV1Api``/``BatchV1Api`` (or fakes);
    :meth:`for_run` connects to the RunSpec's cluster.
    """

    in_cloud: ClassVar[bool] = True
    host_figures: dict[str, Any] | None = None  # it samples no machine of ours

    def __init__(self, launch_spec: LaunchSpec, target: GkeTarget, *, core_api: Any,
                 batch_api: Any, base: LocustBase | None = None,
                 log: logging.Logger | Any = None, progress_every_s: float = 10.0,
                 poll_s: float = 2.0, startup_timeout_s: float = 300.0,
                 stop_grace_s: float = 30.0, ttl_after_finished_s: int = 3600,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        self.spec = launch_spec
        self.target = target
        self.core = core_api
        self.batch = batch_api
        self.base = base or load_base()
        self.log = log or logger
        self.progress_every_s = progress_every_s
        self.poll_s = poll_s
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.ttl_after_finished_s = ttl_after_finished_s
        self.clock = clock
        self.sleep = sleep
        self.objects: GkeObjects | None = None
        self._uids: dict[str, str] = {}  # job name -> uid of the Job this run watches
        self._ours: set[tuple[str, str]] = set()  # (kind, name) created or re-attached: to delete
        self._users: int | None = None
        self._master_code: int | None = None
        self._worker_codes: list[int | None] = []
        self._stop_requested = False
        self._lock = threading.RLock()

    @classmethod
    def for_run(cls, spec: Any, *, deployment: Mapping[str, Any] | None = None,
                try_number: int = 1, service_account: str = "",
                core_api: Any = None, batch_api: Any = None,
                manifests_dir: str | os.PathLike | None = None, **kwargs: Any) -> GkeLauncher:
        """The launcher of a RunSpec (``load_runner=gke``): its cluster, namespace and image;
        the test config must already be written at ``layout.config_uri``. Its timeout is
        its own (:meth:`default_timeout_s`); ``try_number`` labels the objects, and
        ``deployment`` is not needed (the config holds the predict URL)."""
        base = load_base(manifests_dir)
        target = GkeTarget(namespace=spec.gke_namespace, image=spec.locust_image,
                           run_id=spec.run_id, dag_id=spec.dag_id, try_number=try_number,
                           service_account=service_account)
        launch = build_gke_launch(spec, target, base)
        if core_api is None or batch_api is None:
            from kubernetes import client

            api_client = connect(project_id=spec.project, location=spec.gke_location,
                                 cluster=spec.gke_cluster, gcp_conn_id=spec.gcp_conn_id,
                                 impersonation_chain=spec.impersonation)
            core_api = core_api or client.CoreV1Api(api_client)
            batch_api = batch_api or client.BatchV1Api(api_client)
        return cls(launch, target, core_api=core_api, batch_api=batch_api, base=base, **kwargs)

    @classmethod
    def begin_try(cls, spec: Any, log: logging.Logger | Any = None) -> None:
        """Nothing to clear: a retry re-attaches to the pods of the try before, so the
        records they wrote stay."""

    # ---------------------------------------------------------------- public

    def default_timeout_s(self) -> float:
        """Pod start-up (scheduling, image pull) + the shape + the grace to stop."""
        return self.startup_timeout_s + self.spec.duration_s + self.spec.grace_s

    def run(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Run to the end of the shape (or ``timeout_s``, default :meth:`default_timeout_s`)
        and return the local launcher's result dict (``status``, ``reason``,
        ``master_exit_code``, ``worker_exit_codes``, ``started_at``, ``ended_at``,
        ``request_files``, ...) plus ``namespace``, ``jobs`` and ``service``."""
        spec = self.spec
        timeout_s = timeout_s if timeout_s is not None else self.default_timeout_s()
        started_at = self.clock()
        self.objects = build_objects(
            spec, self.target, self.base, active_deadline_s=timeout_s + self.stop_grace_s,
            ttl_after_finished_s=self.ttl_after_finished_s)
        if not spec.publish_uri:
            self.log.warning("load: no publish_uri: Locust's CSV/HTML stay in the master pod "
                             "and are lost when it is deleted")
        reason = ""
        try:
            self._start_all()
            reason = self._watch(started_at, timeout_s)
            if not reason:
                self._wait_workers()
        except Exception as exc:
            reason = f"launcher error: {type(exc).__name__}: {exc}"
            raise
        finally:
            if not self._stop_requested:
                self._collect()
            self._cleanup()
            ended_at = self.clock()
        result = {
            "status": "failed" if reason else "success",
            "reason": reason,
            "master_exit_code": self._master_code,
            "worker_exit_codes": list(self._worker_codes),
            "started_at": started_at,
            "ended_at": ended_at,
            "request_files": len(storage.list_files(spec.requests_uri, ".csv")),
            "requests_uri": spec.requests_uri,
            "csv_prefix": self._published(spec.csv_prefix),
            "html_path": self._published(spec.html_path),
            "log_dir": (storage.join(spec.publish_uri, "logs") if spec.publish_uri
                        else spec.log_dir),
            "namespace": self.target.namespace,
            "jobs": [self.target.master_job, self.target.worker_job],
            "service": self.target.service_name,
        }
        log = self.log.info if not reason else self.log.error
        log(f"load: {result['status']}{f' ({reason})' if reason else ''} in "
            f"{ended_at - started_at:.1f} s, {result['request_files']} raw record files")
        return result

    def stop(self) -> None:
        """Stop the run now (Airflow's ``on_kill``): delete the Jobs and the Service (their
        pods get SIGTERM: Locust stops, writes its files and the workers flush). Safe to call
        from another thread and more than once."""
        self._stop_requested = True
        self._cleanup()

    def close(self) -> None:
        """Nothing to remove here: :meth:`run` and :meth:`stop` delete what it created."""

    # ---------------------------------------------------------------- steps

    def _published(self, pod_path: str) -> str:
        if not self.spec.publish_uri:
            return pod_path
        return storage.join(self.spec.publish_uri, posixpath.basename(pod_path))

    def _start_all(self) -> None:
        """Create the master Job, then the Service and worker Job it owns; reuse any of them
        a previous try of this run created."""
        assert self.objects is not None
        objs = self.objects
        ns = self.target.namespace
        existing = self._read_job(objs.master_job)
        state = job_state(existing)[0] if existing is not None else ""
        if state == "failed":
            self.log.info(f"load: job {self.target.master_job} of an earlier try failed "
                          f"({job_state(existing)[1]}); deleting it and starting again")
            self._delete_one(objs.master_job)  # its Service and workers follow (owned)
            self._wait_gone([objs.master_job])
            existing = None
        if existing is not None:
            master = self._reattach(existing, objs.master_job)
        else:
            master = self._create(self.batch.create_namespaced_job, objs.master_job,
                                  self._read_job)
        if master is None:
            return  # stopped
        self._uids[self.target.master_job] = master.metadata.uid
        if state == "succeeded":
            # an earlier try's test already ran to its end: collect it, start nothing new
            worker = self._read(self.batch.read_namespaced_job, objs.worker_job)
            if worker is not None and _owned_by(worker, master.metadata.uid):
                self._uids[self.target.worker_job] = worker.metadata.uid
                self._ours.add(_key(objs.worker_job))
            return
        for body, read, create in (
            (objs.service, self._read_service, self.core.create_namespaced_service),
            (objs.worker_job, self._read_job, self.batch.create_namespaced_job),
        ):
            current = read(body)
            if current is not None and not _owned_by(current, master.metadata.uid):
                # left by an earlier attempt whose master is gone: not ours to reuse
                self._delete_one(body)
                self._wait_gone([body])
                current = None
            if current is not None:
                obj = self._reattach(current, body)
            else:
                obj = self._create(create, with_owner(body, master), read)
            if obj is None:
                return
            if body["kind"] == "Job":
                self._uids[body["metadata"]["name"]] = obj.metadata.uid
        self.log.info(
            f"load: locust on GKE: job {self.target.master_job} (master), job "
            f"{self.target.worker_job} ({self.spec.workers} workers), service "
            f"{self.target.service_name} in namespace {ns}; image {self.target.image}; "
            f"{self.spec.duration_s:.0f} s shape")

    def _create(self, create: Callable[..., Any], body: dict[str, Any],
                read: Callable[[dict[str, Any]], Any]) -> Any:
        kind, name = body["kind"], body["metadata"]["name"]
        with self._lock:
            if self._stop_requested:
                return None
            try:
                created = create(namespace=self.target.namespace, body=body)
                self._ours.add(_key(body))
                return created
            except Exception as exc:
                if api_status(exc) != 409:
                    raise GkeError(explain_api_error(
                        exc, f"create {kind} {name}", self.target.namespace)) from exc
        found = read(body)  # created meanwhile (a concurrent try): use it if it is this run's
        if found is None:
            raise GkeError(f"{kind} {name} exists and vanished again; retry the task")
        return self._reattach(found, body)

    def _check_run(self, obj: Any, kind: str) -> Any:
        """``obj`` if it belongs to this run (logging the re-attach); raise if it does not;
        None if it is being deleted (then wait for it to go)."""
        labels = (obj.metadata.labels or {}) if obj.metadata else {}
        name = obj.metadata.name
        if labels.get(RUN_LABEL) != self.target.run_label:
            raise GkeError(
                f"{kind} {name} in namespace {self.target.namespace} exists but belongs to run "
                f"{labels.get(RUN_LABEL)!r}, not {self.target.run_label!r}; delete it "
                f"(kubectl delete {kind.lower()} {name} -n {self.target.namespace}) and retry")
        if obj.metadata.deletion_timestamp is not None:
            self.log.info(f"load: {kind} {name} of an earlier try is being deleted; waiting")
            return None
        return obj

    def _reattach(self, obj: Any, body: dict[str, Any]) -> Any:
        """Use ``obj`` (checked to be this run's) instead of creating ``body``."""
        labels = obj.metadata.labels or {}
        self.log.info(f"load: re-attaching to {body['kind']} {body['metadata']['name']} "
                      f"created by try {labels.get(TRY_LABEL, '?')} of this run")
        with self._lock:
            self._ours.add(_key(body))
        return obj

    def _read_job(self, body: dict[str, Any]) -> Any:
        obj = self._read(self.batch.read_namespaced_job, body)
        if obj is not None and self._check_run(obj, "Job") is None:
            self._wait_gone([body])
            return None
        return obj

    def _read_service(self, body: dict[str, Any]) -> Any:
        obj = self._read(self.core.read_namespaced_service, body)
        if obj is not None and self._check_run(obj, "Service") is None:
            self._wait_gone([body])
            return None
        return obj

    def _read(self, read: Callable[..., Any], body: dict[str, Any]) -> Any:
        name = body["metadata"]["name"]
        try:
            return read(name=name, namespace=self.target.namespace)
        except Exception as exc:
            if api_status(exc) == 404:
                return None
            raise GkeError(explain_api_error(exc, f"read {body['kind']} {name}",
                                             self.target.namespace)) from exc

    def _wait_gone(self, bodies: Sequence[dict[str, Any]] | None = None,
                   timeout_s: float = 120.0) -> None:
        bodies = bodies if bodies is not None else (self.objects.all() if self.objects else [])
        end = self.clock() + timeout_s
        readers = {"Job": self.batch.read_namespaced_job,
                   "Service": self.core.read_namespaced_service}
        for body in bodies:
            while self._read(readers[body["kind"]], body) is not None:
                if self.clock() >= end:
                    raise GkeError(f"{body['kind']} {body['metadata']['name']} is still being "
                                   f"deleted after {timeout_s:.0f} s; retry the task later")
                self.sleep(self.poll_s)

    def _watch(self, started_at: float, timeout_s: float) -> str:
        """Poll until the master Job ends; return '' for a normal end, else why it was cut."""
        deadline = started_at + timeout_s
        next_progress = started_at + self.progress_every_s
        master_started = False
        workers_failed_at = 0.0
        while True:
            if self._stop_requested:
                return "stopped by request"
            state, why = job_state(self._job_status(self.target.master_job))
            if state == "succeeded":
                return ""
            if state == "failed":
                return (f"locust master job {self.target.master_job} failed"
                        f"{f' ({why})' if why else ''}: {self._log_tail('master')}")
            now = self.clock()
            wstate, wwhy = job_state(self._job_status(self.target.worker_job))
            if wstate == "failed":
                # the master notices lost workers itself; give it time to end the test
                workers_failed_at = workers_failed_at or now
                if now - workers_failed_at > self.stop_grace_s:
                    return (f"locust worker job {self.target.worker_job} failed"
                            f"{f' ({wwhy})' if wwhy else ''}: {self._log_tail('worker')}")
            if now >= deadline:
                return f"deadline of {timeout_s:.0f} s exceeded"
            due = now >= next_progress
            late = not master_started and now - started_at >= self.startup_timeout_s
            if due or late:
                pods = self._pods()
                master_started = master_started or any(
                    component_of(p) == "master" and p.status is not None
                    and p.status.phase in ("Running", "Succeeded", "Failed") for p in pods)
                if late and not master_started:
                    return (f"the locust master pod did not start within "
                            f"{self.startup_timeout_s:.0f} s: {summarize_pods(pods)}")
                if due:
                    self.log.info(f"{format_progress(now - started_at, self._progress(pods))}"
                                  f"; pods: {summarize_pods(pods)}")
                    while next_progress <= now:
                        next_progress += self.progress_every_s
            self.sleep(self.poll_s)

    def _wait_workers(self) -> None:
        """After the master's normal end: the workers got its quit and flush their last raw
        records; wait for them to exit (bounded)."""
        end = self.clock() + self.stop_grace_s
        while self.clock() < end:
            job = self._job_status(self.target.worker_job, missing_ok=True)
            if job is None or job_state(job)[0] != "running":
                return
            self.sleep(self.poll_s)
        self.log.warning(f"load: workers still running {self.stop_grace_s:.0f} s after the "
                         "master ended; deleting them")

    def _job_status(self, name: str, missing_ok: bool = False) -> Any:
        try:
            return self.batch.read_namespaced_job_status(name=name,
                                                         namespace=self.target.namespace)
        except Exception as exc:
            if api_status(exc) == 404 and (missing_ok or self._stop_requested):
                return None  # stop() deleted it, or it is not needed any more
            if api_status(exc) == 404:
                raise GkeError(f"job {name} disappeared from namespace "
                               f"{self.target.namespace} (deleted by someone else?)") from exc
            raise GkeError(explain_api_error(exc, f"read job {name}",
                                             self.target.namespace)) from exc

    def _pods(self) -> list[Any]:
        """This run's pods, only those of the Jobs this try watches, oldest first."""
        result = self.core.list_namespaced_pod(namespace=self.target.namespace,
                                               label_selector=self.target.selector)
        uids = set(self._uids.values())
        pods = [p for p in result.items or []
                if not uids or any(ref.uid in uids for ref in p.metadata.owner_references or [])]
        return sorted(pods, key=lambda p: (str(p.metadata.creation_timestamp or ""),
                                           p.metadata.name))

    def _progress(self, pods: Sequence[Any]) -> dict[str, float] | None:
        master = [p for p in pods if component_of(p) == "master"]
        if not master or master[-1].status is None or master[-1].status.phase == "Pending":
            return None
        try:
            text = self.core.read_namespaced_pod_log(
                name=master[-1].metadata.name, namespace=self.target.namespace,
                container=CONTAINER, tail_lines=200)
        except Exception as exc:  # progress is best effort
            self.log.debug(f"load: cannot read the master log: {exc}")
            return None
        progress = parse_master_log(text or "", self._users)
        if progress is not None:
            self._users = int(progress["users"])
        return progress

    def _log_tail(self, component: str, lines: int = 3) -> str:
        """The last lines of a pod's log: where Locust and the locustfile say what broke."""
        try:
            pods = [p for p in self._pods() if component_of(p) == component]
        except Exception as exc:
            return f"(cannot list pods: {api_message(exc)})"
        if not pods:
            return f"(no {component} pod)"
        pod = pods[-1]
        try:
            text = self.core.read_namespaced_pod_log(
                name=pod.metadata.name, namespace=self.target.namespace, container=CONTAINER,
                tail_lines=50)
        except Exception as exc:
            return f"({pod_state(pod)}; no log: {api_message(exc)})"
        tail = [line for line in (text or "").splitlines() if line.strip()][-lines:]
        return " | ".join(tail) or f"({pod_state(pod)}; empty log)"

    def _collect(self) -> None:
        """Exit codes of the pods and their logs (to ``<publish_uri>/logs``) before the pods
        are deleted. Best effort: a run is not failed by its logs."""
        try:
            pods = self._pods()
        except Exception as exc:
            self.log.error(f"load: cannot list the pods: {api_message(exc)}")
            return
        masters = [p for p in pods if component_of(p) == "master"]
        workers = sorted((p for p in pods if component_of(p) == "worker"),
                         key=lambda p: p.metadata.name)
        self._master_code = exit_code(masters[-1]) if masters else None
        self._worker_codes = [exit_code(p) for p in workers]
        if not self.spec.publish_uri:
            return
        named = [("master.log", masters[-1])] if masters else []
        named += [(f"worker-{i}.log", pod) for i, pod in enumerate(workers)]
        copied = 0
        for file_name, pod in named:
            try:
                text = self.core.read_namespaced_pod_log(
                    name=pod.metadata.name, namespace=self.target.namespace,
                    container=CONTAINER)
                storage.write_text(storage.join(self.spec.publish_uri, "logs", file_name),
                                   text or "")
                copied += 1
            except Exception as exc:
                self.log.warning(f"load: cannot copy the log of pod {pod.metadata.name}: "
                                 f"{type(exc).__name__}: {api_message(exc)}")
        if copied:
            self.log.info(f"load: copied {copied} pod logs to "
                          f"{storage.join(self.spec.publish_uri, 'logs')}")

    def _cleanup(self) -> None:
        """Delete the worker Job, the Service and the master Job (pods go with their Jobs),
        those this launcher created or re-attached to: never another run's. NotFound counts
        as deleted; other errors are logged, never raised over the run's own outcome."""
        if self.objects is None:
            return
        with self._lock:
            for body in (self.objects.worker_job, self.objects.service,
                         self.objects.master_job):
                if _key(body) in self._ours:
                    self._delete_one(body)

    def _delete_one(self, body: dict[str, Any]) -> None:
        kind, name, ns = body["kind"], body["metadata"]["name"], self.target.namespace
        try:
            if kind == "Job":
                # Background: return now; the garbage collector deletes the pods (SIGTERM)
                self.batch.delete_namespaced_job(name=name, namespace=ns,
                                                 propagation_policy="Background")
            else:
                self.core.delete_namespaced_service(name=name, namespace=ns)
            self.log.info(f"load: deleted {kind} {name}")
        except Exception as exc:
            if api_status(exc) == 404:
                return
            self.log.error("load: " + explain_api_error(exc, f"delete {kind} {name}", ns) +
                           f" Delete it by hand: kubectl delete {kind.lower()} {name} -n {ns}")


def _key(body: dict[str, Any]) -> tuple[str, str]:
    return body["kind"], body["metadata"]["name"]


def _owned_by(obj: Any, uid: str) -> bool:
    return any(ref.uid == uid for ref in (obj.metadata.owner_references or []))


__all__ = ["GkeError", "GkeLauncher", "GkeObjects", "GkeTarget", "LocustBase", "ManifestError",
           "base_name", "build_gke_launch", "build_objects", "gke_launch_spec", "job_state",
           "label_value", "load_base", "parse_master_log", "pod_args", "render_base",
           "summarize_pods", "with_owner"]
