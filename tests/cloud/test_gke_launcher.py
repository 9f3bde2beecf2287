"""GkeLauncher against a fake Kubernetes API injected at the client boundary.

``FakeCluster`` stands in for ``CoreV1Api`` and ``BatchV1Api``: it validates every created
object against the Kubernetes 1.30 schema (kubernetes-validate, strict), records each call,
answers with the kubernetes client's own models (``V1Job``, ``V1Service``, ``V1PodList``,
deserialized by ``ApiClient``) and raises its real ``ApiException`` (404, 409, 403). A tiny
job controller makes the Jobs' pods and moves them through Pending/Running/Succeeded or
Failed on a fake clock, so whole runs take milliseconds. The master's log is made of stats
tables printed by Locust's own formatter (in a subprocess: Locust never runs in the test
process).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

kubernetes = pytest.importorskip("kubernetes")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from kubernetes.client import ApiClient  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

from caio_operators import storage  # noqa: E402
from caio_operators.loadgen import gke  # noqa: E402
from caio_operators.loadgen.launch import make_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.30"
NS = "bench"
RUN = "resnet-v1-manual-2024-05-01t00-00-00-00-00"
PREDICT = "https://us-central1-ml.googleapis.com/v1/projects/p/models/resnet/versions/v1:predict"
LOCAL_RESULT_KEYS = {"status", "reason", "master_exit_code", "worker_exit_codes", "started_at",
                     "ended_at", "request_files", "requests_uri", "csv_prefix", "html_path",
                     "log_dir"}


# ---------------------------------------------------------------- Locust's own stats text


STATS_SCRIPT = textwrap.dedent("""
    import json
    from locust.stats import RequestStats, get_stats_summary
    stats = RequestStats()
    tables = []
    for step in range(1, 4):
        for i in range(40):
            stats.log_request("POST", "predict:serving_default", 10 + i % 7, 512)
        for i in range(step):
            stats.log_request("POST", "predict:serving_default", 30, 0)
            stats.log_error("POST", "predict:serving_default", "HTTP 500")
        tables.append(get_stats_summary(stats, current=True))
    print(json.dumps(tables))
""")


@pytest.fixture(scope="session")
def stats_tables() -> list[list[str]]:
    """Three consecutive stats tables as a headless master prints them."""
    out = subprocess.run([sys.executable, "-c", STATS_SCRIPT], capture_output=True,
                         text=True, check=True, timeout=60)
    return json.loads(out.stdout)


def expected_rps(table: list[str]) -> float:
    return float(table[-1].split()[-2])


# ---------------------------------------------------------------- the fake cluster


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.on_sleep: list = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        for hook in self.on_sleep:
            hook(self.now)


class _Response:
    def __init__(self, obj: Any):
        self.data = json.dumps(obj)


class FakeCluster:
    """One namespace of an in-memory cluster, with a scripted job controller.

    Times are seconds after a Job's creation: its pods run from ``running_after``; the
    master exits with ``master_exit`` at ``master_ends_after`` (None: never) and the workers
    a second later; ``workers_fail_after`` fails the worker Job; ``master_waiting`` keeps
    the master pod Pending with that (reason, message).
    """

    def __init__(self, clock: Clock, tables: list[list[str]], *, running_after: float = 4.0,
                 master_ends_after: float | None = 30.0, master_exit: int = 0,
                 workers_fail_after: float | None = None,
                 master_waiting: tuple[str, str] | None = None):
        self.clock = clock
        self.tables = tables
        self.running_after = running_after
        self.master_ends_after = master_ends_after
        self.master_exit = master_exit
        self.workers_fail_after = workers_fail_after
        self.master_waiting = master_waiting
        self.jobs: dict[str, dict] = {}
        self.services: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self.calls: list[tuple[str, str]] = []
        self.created: list[dict] = []
        self.deletes: list[tuple[str, str, str | None]] = []
        self.fail: dict[str, ApiException] = {}  # method -> raised once
        self.api = ApiClient()
        self._uids = itertools.count(1)

    # -- plumbing -------------------------------------------------------------------

    def _call(self, method: str, name: str, namespace: str) -> None:
        assert namespace == NS, f"{method} in namespace {namespace}"
        self.calls.append((method, name))
        if method in self.fail:
            raise self.fail.pop(method)

    def _model(self, obj: dict, klass: str) -> Any:
        return self.api.deserialize(_Response(obj), klass)

    @staticmethod
    def _error(status: int, reason: str, message: str) -> ApiException:
        exc = ApiException(status=status, reason=reason)
        exc.body = json.dumps({"kind": "Status", "status": "Failure", "message": message,
                               "code": status})
        return exc

    def _not_found(self, kind: str, name: str) -> ApiException:
        return self._error(404, "Not Found", f'{kind} "{name}" not found')

    def _stamp(self, body: dict) -> dict:
        obj = json.loads(json.dumps(body))
        obj["metadata"]["uid"] = f"uid-{next(self._uids)}"
        obj["metadata"]["creationTimestamp"] = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock.now))
        obj["_created"] = self.clock.now
        return obj

    @staticmethod
    def _public(obj: dict) -> dict:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    # -- the job controller -----------------------------------------------------------

    def _spawn_pods(self, job: dict) -> None:
        template = job["spec"]["template"]
        for i in range(job["spec"].get("parallelism", 1)):
            name = f"{job['metadata']['name']}-{i}x{next(self._uids)}"
            labels = {**template["metadata"]["labels"], "job-name": job["metadata"]["name"]}
            self.pods[name] = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": NS, "labels": labels,
                             "creationTimestamp": job["metadata"]["creationTimestamp"],
                             "ownerReferences": [{
                                 "apiVersion": "batch/v1", "kind": "Job", "controller": True,
                                 "name": job["metadata"]["name"],
                                 "uid": job["metadata"]["uid"]}]},
                "spec": template["spec"],
                "_job": job["metadata"]["name"], "_created": job["_created"],
                "_component": labels["app.kubernetes.io/component"],
                "_exit": self.master_exit if labels["app.kubernetes.io/component"] == "master"
                else 0,
            }

    def _pod_status(self, pod: dict) -> dict:
        age = self.clock.now - pod["_created"]
        master = pod["_component"] == "master"
        ends = self.master_ends_after
        if ends is not None and not master:
            ends += 1.0
        fails = None if master else self.workers_fail_after
        running = {"name": "locust", "ready": True, "restartCount": 0, "image": "img",
                   "imageID": "", "state": {"running": {"startedAt": "2024-05-01T00:00:00Z"}}}
        if master and self.master_waiting:
            reason, message = self.master_waiting
            waiting = dict(running, ready=False,
                           state={"waiting": {"reason": reason, "message": message}})
            return {"phase": "Pending", "containerStatuses": [waiting]}
        if age < self.running_after:
            return {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True"}]}
        for at, code in ((fails, 1), (ends, pod["_exit"])):
            if at is not None and age >= at:
                term = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
                return {"phase": "Succeeded" if code == 0 else "Failed",
                        "containerStatuses": [dict(running, ready=False,
                                                   state={"terminated": term})]}
        return {"phase": "Running", "containerStatuses": [running]}

    def _job_status(self, job: dict) -> dict:
        pods = [self._pod_status(p) for p in self.pods.values()
                if p["_job"] == job["metadata"]["name"]]
        succeeded = sum(p["phase"] == "Succeeded" for p in pods)
        failed = sum(p["phase"] == "Failed" for p in pods)
        active = sum(p["phase"] in ("Pending", "Running") for p in pods)
        status: dict[str, Any] = {"active": active, "succeeded": succeeded, "failed": failed}
        if failed > job["spec"]["backoffLimit"] or (failed and not active):
            status["conditions"] = [{"type": "Failed", "status": "True",
                                     "reason": "BackoffLimitExceeded",
                                     "message": "Job has reached the specified backoff limit"}]
        elif pods and succeeded == job["spec"]["completions"]:
            status["conditions"] = [{"type": "Complete", "status": "True"}]
        return status

    def _master_log(self, pod: dict) -> str:
        age = self.clock.now - pod["_created"]
        if age < self.running_after:
            return ""
        lines = ["[2024-05-01 00:00:00,000] pod/INFO/locust.main: Starting Locust 2.47.0",
                 "[2024-05-01 00:00:01,000] pod/INFO/locust.runners: "
                 "Shape test updating to 4 users at 2.00 spawn rate"]
        printed = int((age - self.running_after) // 2)
        for i in range(min(printed, len(self.tables))):
            lines += [*self.tables[i], ""]
            if i == 1:
                lines.append("[2024-05-01 00:00:09,000] pod/INFO/locust.runners: "
                             "Shape test updating to 8 users at 2.00 spawn rate")
        if pod["_exit"] and self.master_ends_after is not None and (
                age >= self.master_ends_after):
            lines.append("caio: test config gs://b/load/config.json does not exist")
        return "\n".join(lines) + "\n"

    # -- BatchV1Api -------------------------------------------------------------------

    def create_namespaced_job(self, namespace: str, body: dict, **_: Any) -> Any:
        self._call("create_namespaced_job", body["metadata"]["name"], namespace)
        kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise self._error(409, "Conflict", f'jobs.batch "{name}" already exists')
        self.created.append(body)
        job = self._stamp(body)
        self.jobs[name] = job
        self._spawn_pods(job)
        return self._model(self._public(job), "V1Job")

    def read_namespaced_job(self, name: str, namespace: str, **_: Any) -> Any:
        self._call("read_namespaced_job", name, namespace)
        if name not in self.jobs:
            raise self._not_found("jobs.batch", name)
        job = dict(self._public(self.jobs[name]), status=self._job_status(self.jobs[name]))
        return self._model(job, "V1Job")

    def read_namespaced_job_status(self, name: str, namespace: str, **_: Any) -> Any:
        self._call("read_namespaced_job_status", name, namespace)
        if name not in self.jobs:
            raise self._not_found("jobs.batch", name)
        job = dict(self._public(self.jobs[name]), status=self._job_status(self.jobs[name]))
        return self._model(job, "V1Job")

    def delete_namespaced_job(self, name: str, namespace: str, propagation_policy=None,
                              **_: Any) -> Any:
        self._call("delete_namespaced_job", name, namespace)
        self.deletes.append(("Job", name, propagation_policy))
        if name not in self.jobs:
            raise self._not_found("jobs.batch", name)
        uid = self.jobs.pop(name)["metadata"]["uid"]
        if propagation_policy in ("Background", "Foreground"):
            for pod_name in [n for n, p in self.pods.items() if p["_job"] == name]:
                del self.pods[pod_name]
        self._collect_garbage(uid)
        return self._model({"kind": "Status", "apiVersion": "v1", "status": "Success"},
                           "V1Status")

    def _collect_garbage(self, owner_uid: str) -> None:
        """What the garbage collector does for objects owned by a deleted Job."""
        for store in (self.services, self.jobs):
            for name in [n for n, o in store.items() if any(
                    ref["uid"] == owner_uid for ref in o["metadata"].get("ownerReferences", []))]:
                removed = store.pop(name)
                if removed["kind"] == "Job":
                    for pod_name in [n for n, p in self.pods.items() if p["_job"] == name]:
                        del self.pods[pod_name]

    # -- CoreV1Api --------------------------------------------------------------------

    def create_namespaced_service(self, namespace: str, body: dict, **_: Any) -> Any:
        self._call("create_namespaced_service", body["metadata"]["name"], namespace)
        kubernetes_validate.validate(body, K8S_VERSION, strict=True)
        name = body["metadata"]["name"]
        if name in self.services:
            raise self._error(409, "Conflict", f'services "{name}" already exists')
        self.created.append(body)
        self.services[name] = self._stamp(body)
        return self._model(self._public(self.services[name]), "V1Service")

    def read_namespaced_service(self, name: str, namespace: str, **_: Any) -> Any:
        self._call("read_namespaced_service", name, namespace)
        if name not in self.services:
            raise self._not_found("services", name)
        return self._model(self._public(self.services[name]), "V1Service")

    def delete_namespaced_service(self, name: str, namespace: str, **_: Any) -> Any:
        self._call("delete_namespaced_service", name, namespace)
        self.deletes.append(("Service", name, None))
        if name not in self.services:
            raise self._not_found("services", name)
        del self.services[name]
        return self._model({"kind": "Status", "apiVersion": "v1", "status": "Success"},
                           "V1Status")

    def list_namespaced_pod(self, namespace: str, label_selector: str = "", **_: Any) -> Any:
        self._call("list_namespaced_pod", label_selector, namespace)
        wanted = dict(part.split("=", 1) for part in label_selector.split(",") if part)
        items = [dict(self._public(p), status=self._pod_status(p)) for p in self.pods.values()
                 if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
        return self._model({"apiVersion": "v1", "kind": "PodList", "metadata": {},
                            "items": items}, "V1PodList")

    def read_namespaced_pod_log(self, name: str, namespace: str, container: str = "",
                                tail_lines: int | None = None, **_: Any) -> str:
        self._call("read_namespaced_pod_log", name, namespace)
        assert container == "locust"
        if name not in self.pods:
            raise self._not_found("pods", name)
        pod = self.pods[name]
        if pod["_component"] == "master":
            text = self._master_log(pod)
        else:
            text = f"caio: worker {name} ready: 12 request bodies\ncaio: worker wrote 40 records\n"
        lines = text.splitlines()
        if tail_lines is not None:
            lines = lines[-tail_lines:]
        return "\n".join(lines) + ("\n" if lines else "")

    # -- views ------------------------------------------------------------------------

    def created_names(self) -> list[tuple[str, str]]:
        return [(b["kind"], b["metadata"]["name"]) for b in self.created]

    def methods(self, prefix: str) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0].startswith(prefix)]


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def _add(self, level: str, msg: str, *args: Any) -> None:
        self.lines.append((level, msg % args if args else msg))

    def info(self, msg, *args):
        self._add("info", msg, *args)

    def warning(self, msg, *args):
        self._add("warning", msg, *args)

    def error(self, msg, *args):
        self._add("error", msg, *args)

    def debug(self, msg, *args):
        self._add("debug", msg, *args)

    def text(self, level: str | None = None) -> str:
        return "\n".join(m for lvl, m in self.lines if level in (None, lvl))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base() -> gke.LocustBase:
    return gke.load_base(REPO / "locust" / "manifests")


@pytest.fixture
def load_dir(tmp_path) -> str:
    return storage.to_uri(tmp_path / "bucket" / "runs" / RUN / "load")


def make_target(try_number: int = 1, **kwargs: Any) -> gke.GkeTarget:
    return gke.GkeTarget(namespace=NS, image="us-docker.pkg.dev/p/caio/caio-locust:2.47.0",
                         run_id=RUN, dag_id="caio_load_test", try_number=try_number, **kwargs)


def make_launch(base: gke.LocustBase, load_dir: str, target: gke.GkeTarget, workers: int = 2):
    config = make_config(
        test_id=RUN, predict_url=PREDICT, protocol="caip", signature="serving_default",
        payload_uri=storage.join(load_dir, "payload.json"), output_uri=load_dir,
        load_shape="staircase", users=8, spawn_rate=2, duration_s=20, step_users=4,
        step_duration_s=10)
    return gke.gke_launch_spec(config=config, config_uri=storage.join(load_dir, "config.json"),
                               target=target, workers=workers, publish_uri=load_dir, base=base)


def make_launcher(base, load_dir, cluster, clock, *, try_number: int = 1, workers: int = 2,
                  log: RecordingLog | None = None, **kwargs: Any) -> gke.GkeLauncher:
    target = make_target(try_number)
    return gke.GkeLauncher(
        make_launch(base, load_dir, target, workers), target, core_api=cluster,
        batch_api=cluster, base=base, log=log or RecordingLog(), clock=clock.time,
        sleep=clock.sleep, **{"progress_every_s": 5.0, "poll_s": 1.0, **kwargs})


def write_raw_records(load_dir: str, n: int) -> None:
    """What the workers' locustfile writes to the bucket (the launcher only counts them)."""
    for i in range(n):
        storage.write_text(storage.join(load_dir, "requests", f"worker-w0-{i:06d}.csv"),
                           "ts,latency_ms,ok,status_code,signature,worker,bytes,error\n")


# ---------------------------------------------------------------- a whole run


def test_run_creates_the_derived_objects_watches_and_cleans_up(base, load_dir, stats_tables):
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables, running_after=7.0, master_ends_after=35.0)
    log = RecordingLog()
    launcher = make_launcher(base, load_dir, cluster, clock, log=log, workers=3)
    write_raw_records(load_dir, 2)
    spec, target = launcher.spec, launcher.target

    result = launcher.run(timeout_s=120)

    assert result["status"] == "success", result["reason"]
    assert result["reason"] == ""
    assert set(result) >= LOCAL_RESULT_KEYS
    assert result["master_exit_code"] == 0
    assert result["worker_exit_codes"] == [0, 0, 0]
    assert result["request_files"] == 2
    assert result["csv_prefix"] == storage.join(load_dir, "locust")
    assert result["html_path"] == storage.join(load_dir, "locust_report.html")
    assert result["jobs"] == [target.master_job, target.worker_job]

    # master Job first (it owns the others), then its Service and the worker Job
    assert cluster.created_names() == [("Job", target.master_job),
                                       ("Service", target.service_name),
                                       ("Job", target.worker_job)]
    master, service, worker = cluster.created
    expected = gke.build_objects(spec, target, base, active_deadline_s=120 + 30)
    master_uid = cluster_uid(cluster, master)
    assert master == expected.master_job
    owner = [{"apiVersion": "batch/v1", "kind": "Job", "name": target.master_job,
              "uid": master_uid}]
    assert service == dict(expected.service,
                           metadata={**expected.service["metadata"], "ownerReferences": owner})
    assert worker == dict(expected.worker_job,
                          metadata={**expected.worker_job["metadata"], "ownerReferences": owner})

    # the pods run exactly LaunchSpec's argv, minus the image's `locust` entrypoint
    assert spec.master_argv[0] == "locust"
    assert container(master)["args"] == list(spec.master_argv[1:])
    assert container(worker)["args"] == list(spec.worker_argvs[0][1:])
    assert worker["spec"]["parallelism"] == worker["spec"]["completions"] == 3
    # pods share one argv; the Indexed Job's JOB_COMPLETION_INDEX is each one's share
    assert worker["spec"]["completionMode"] == "Indexed"
    assert "--caio-worker-index" not in worker["spec"]["template"]["spec"]["containers"][0][
        "args"]
    assert master["spec"]["parallelism"] == 1 and master["spec"]["backoffLimit"] == 0
    assert container(master)["image"] == container(worker)["image"] == target.image
    assert {"name": "CAIO_PUBLISH_URI", "value": load_dir} in container(master)["env"]
    for obj in (master, service, worker):
        labels = obj["metadata"]["labels"]
        assert labels["caio.dev/run-id"] == RUN
        assert labels["caio.dev/dag-id"] == "caio_load_test"
        assert labels["caio.dev/try-number"] == "1"
    assert master["spec"]["template"]["metadata"]["labels"]["caio.dev/run-id"] == RUN
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"]["caio.dev/run-id"] == RUN
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "master"
    # workers reach the master through this run's Service, on the port it listens on
    assert target.service_name in spec.worker_argvs[0]
    assert service["spec"]["ports"][0]["port"] == base.master_port == int(
        spec.master_argv[spec.master_argv.index("--master-bind-port") + 1])

    # everything deleted at the end, the Jobs with their pods
    assert sorted(cluster.deletes) == sorted([("Job", target.master_job, "Background"),
                                              ("Job", target.worker_job, "Background"),
                                              ("Service", target.service_name, None)])
    assert not cluster.jobs and not cluster.services and not cluster.pods

    # progress every ~5 s: pod phases, users, req/s and failures from the master's stats
    progress = [m for lvl, m in log.lines if m.startswith("load: ") and "elapsed" in m]
    assert len(progress) >= 4
    assert "waiting for Locust's first stats" in progress[0]
    assert "master Pending" in progress[0]
    last = stats_tables[-1]
    assert any(f"8 users, {expected_rps(last):.1f} req/s, 126 requests, 6 failures" in m
               for m in progress), progress
    assert any("4 users" in m for m in progress)
    assert any("pods: master Running; workers 3 Running" in m for m in progress)

    # the pod logs were copied next to Locust's files before the pods went
    logs = storage.local_path(storage.join(load_dir, "logs"))
    assert sorted(p.name for p in logs.iterdir()) == ["master.log", "worker-0.log",
                                                      "worker-1.log", "worker-2.log"]
    assert "Aggregated" in (logs / "master.log").read_text()
    assert "success" in log.text("info").splitlines()[-1]


def cluster_uid(cluster: FakeCluster, body: dict) -> str:
    """The uid the fake gave an object (it is deleted by now: look at the owner refs)."""
    for call in cluster.created:
        for ref in call["metadata"].get("ownerReferences", []):
            if ref["name"] == body["metadata"]["name"]:
                return ref["uid"]
    raise AssertionError("no owner reference to " + body["metadata"]["name"])


def container(obj: dict) -> dict:
    return gke.container_of(obj)


# ---------------------------------------------------------------- retries


def test_retry_reattaches_to_the_jobs_of_the_try_before(base, load_dir, stats_tables):
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables, master_ends_after=40.0)
    # try 1 created everything, then its Airflow worker died (no cleanup ran)
    first = make_launcher(base, load_dir, cluster, clock, try_number=1)
    objs = gke.build_objects(first.spec, first.target, base, active_deadline_s=300)
    master = cluster.create_namespaced_job(namespace=NS, body=objs.master_job)
    cluster.create_namespaced_service(namespace=NS, body=gke.with_owner(objs.service, master))
    cluster.create_namespaced_job(namespace=NS, body=gke.with_owner(objs.worker_job, master))
    clock.sleep(15)
    created_before = len(cluster.created)

    log = RecordingLog()
    second = make_launcher(base, load_dir, cluster, clock, try_number=2, log=log)
    result = second.run(timeout_s=120)

    assert result["status"] == "success", result["reason"]
    assert len(cluster.created) == created_before  # nothing created twice
    assert cluster.methods("create_") == [c for c in cluster.calls[:3]]
    text = log.text("info")
    assert f"re-attaching to Job {second.target.master_job} created by try 1" in text
    assert f"re-attaching to Service {second.target.service_name} created by try 1" in text
    assert result["worker_exit_codes"] == [0, 0]
    assert not cluster.jobs and not cluster.services and not cluster.pods
    # it waited for the old test to end (25 s more), not for a new one
    assert result["ended_at"] - result["started_at"] < 40


def test_retry_after_the_test_finished_collects_it_without_starting_another(
        base, load_dir, stats_tables):
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables, master_ends_after=20.0)
    first = make_launcher(base, load_dir, cluster, clock)
    objs = gke.build_objects(first.spec, first.target, base, active_deadline_s=300)
    master = cluster.create_namespaced_job(namespace=NS, body=objs.master_job)
    cluster.create_namespaced_job(namespace=NS, body=gke.with_owner(objs.worker_job, master))
    clock.sleep(60)  # the Service got lost too, say: nothing needs it any more
    created = len(cluster.created)
    cluster.jobs.pop(objs.worker_job["metadata"]["name"])  # and the workers' Job, TTL'd

    result = make_launcher(base, load_dir, cluster, clock, try_number=2).run(timeout_s=120)

    assert result["status"] == "success"
    assert len(cluster.created) == created
    assert result["master_exit_code"] == 0
    assert not cluster.jobs


def test_retry_after_a_failed_try_deletes_its_jobs_and_starts_again(
        base, load_dir, stats_tables):
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables, master_ends_after=10.0, master_exit=1)
    first = make_launcher(base, load_dir, cluster, clock)
    objs = gke.build_objects(first.spec, first.target, base, active_deadline_s=300)
    master = cluster.create_namespaced_job(namespace=NS, body=objs.master_job)
    cluster.create_namespaced_service(namespace=NS, body=gke.with_owner(objs.service, master))
    cluster.create_namespaced_job(namespace=NS, body=gke.with_owner(objs.worker_job, master))
    clock.sleep(20)  # try 1's master failed
    cluster.master_exit = 0
    old_uid = master.metadata.uid

    log = RecordingLog()
    result = make_launcher(base, load_dir, cluster, clock, try_number=2, log=log).run(
        timeout_s=120)

    assert result["status"] == "success", result["reason"]
    assert "of an earlier try failed" in log.text("info")
    assert cluster.created_names()[3:] == cluster.created_names()[:3]  # created afresh
    new_master = cluster.created[3]
    assert new_master["metadata"]["labels"]["caio.dev/try-number"] == "2"
    assert all(ref["uid"] != old_uid
               for b in cluster.created[4:] for ref in b["metadata"]["ownerReferences"])


def test_objects_of_another_run_with_the_same_name_are_left_alone(base, load_dir,
                                                                  stats_tables):
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables)
    launcher = make_launcher(base, load_dir, cluster, clock)
    foreign = gke.build_objects(launcher.spec, launcher.target, base, active_deadline_s=60)
    foreign.master_job["metadata"]["labels"]["caio.dev/run-id"] = "someone-else"
    cluster.create_namespaced_job(namespace=NS, body=foreign.master_job)

    with pytest.raises(gke.GkeError, match="belongs to run 'someone-else'"):
        launcher.run(timeout_s=60)
    # nothing created, and the other run's Job survived the cleanup in `finally`
    assert cluster.created_names() == [("Job", launcher.target.master_job)]
    assert list(cluster.jobs) == [launcher.target.master_job]
    assert cluster.deletes == []


# ---------------------------------------------------------------- failures and cleanup


def test_master_failure_fails_the_run_with_its_log_and_cleans_up(base, load_dir, stats_tables):
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables, master_ends_after=12.0, master_exit=1)
    log = RecordingLog()
    result = make_launcher(base, load_dir, cluster, clock, log=log).run(timeout_s=120)

    assert result["status"] == "failed"
    assert "master job" in result["reason"] and "BackoffLimitExceeded" in result["reason"]
    assert "does not exist" in result["reason"]  # the master log's last lines
    assert result["master_exit_code"] == 1
    assert not cluster.jobs and not cluster.services and not cluster.pods
    assert "failed" in log.text("error")


def test_deadline_stops_the_run_and_cleans_up(base, load_dir, stats_tables):
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables, master_ends_after=None)
    launcher = make_launcher(base, load_dir, cluster, clock)
    result = launcher.run(timeout_s=45)

    assert result["status"] == "failed"
    assert result["reason"] == "deadline of 45 s exceeded"
    assert 45 <= result["ended_at"] - result["started_at"] < 50
    assert result["master_exit_code"] is None  # still running when it was cut
    assert len(cluster.deletes) == 3
    assert not cluster.jobs and not cluster.services and not cluster.pods


def test_master_pod_that_never_starts_fails_early_with_the_reason(base, load_dir,
                                                                  stats_tables):
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables, master_waiting=(
        "ImagePullBackOff", 'Back-off pulling image "us-docker.pkg.dev/p/caio/nope"'))
    launcher = make_launcher(base, load_dir, cluster, clock, startup_timeout_s=60)
    result = launcher.run(timeout_s=600)

    assert result["status"] == "failed"
    assert "did not start within 60 s" in result["reason"]
    assert "ImagePullBackOff" in result["reason"]
    assert result["ended_at"] - result["started_at"] < 70
    assert not cluster.jobs and not cluster.pods


def test_failed_workers_end_the_run(base, load_dir, stats_tables):
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables, master_ends_after=None, workers_fail_after=8.0)
    result = make_launcher(base, load_dir, cluster, clock, stop_grace_s=10).run(timeout_s=300)

    assert result["status"] == "failed"
    assert f"worker job {gke.base_name(RUN)}-worker failed" in result["reason"]
    assert result["worker_exit_codes"] == [1, 1]
    assert not cluster.jobs and not cluster.pods


def test_stop_deletes_everything_and_ends_the_run(base, load_dir, stats_tables):
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables, master_ends_after=None)
    launcher = make_launcher(base, load_dir, cluster, clock)
    stopped = []

    def on_kill(now: float) -> None:
        if now >= 1020 and not stopped:
            stopped.append(now)
            launcher.stop()  # what the operator's on_kill calls

    clock.on_sleep.append(on_kill)
    result = launcher.run(timeout_s=300)

    assert result["status"] == "failed" and result["reason"] == "stopped by request"
    assert not cluster.jobs and not cluster.services and not cluster.pods
    # stop() deleted the three objects; the run's finally found them gone (NotFound is fine)
    assert len(cluster.deletes) == 6
    assert result["ended_at"] - 1000 < 25
    launcher.stop()  # again: harmless


def test_stop_from_another_thread_while_running(base, load_dir, stats_tables):
    """The real threading of on_kill: run() polls in one thread, stop() arrives from another."""
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables, master_ends_after=None)
    launcher = make_launcher(base, load_dir, cluster, clock)
    launcher.sleep = lambda s: (clock.sleep(s), time.sleep(0.002))
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(launcher.run(timeout_s=10_000)))
    thread.start()
    deadline = time.monotonic() + 10
    while len(cluster.created) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    launcher.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert out["reason"] == "stopped by request"
    assert not cluster.jobs and not cluster.services and not cluster.pods


def test_stop_before_the_run_creates_nothing(base, load_dir, stats_tables):
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables)
    launcher = make_launcher(base, load_dir, cluster, clock)
    launcher.stop()
    result = launcher.run(timeout_s=60)
    assert result["reason"] == "stopped by request"
    assert cluster.created == []


def test_not_found_on_delete_counts_as_deleted(base, load_dir, stats_tables):
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables, master_ends_after=10.0)
    log = RecordingLog()
    launcher = make_launcher(base, load_dir, cluster, clock, log=log)

    def someone_deletes_the_service(now: float) -> None:
        cluster.services.clear()

    clock.on_sleep.append(someone_deletes_the_service)
    result = launcher.run(timeout_s=120)
    assert result["status"] == "success"
    assert ("Service", launcher.target.service_name, None) in cluster.deletes
    assert log.text("error") == ""


def test_forbidden_create_names_the_missing_role(base, load_dir, stats_tables):
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables)
    cluster.fail["create_namespaced_job"] = FakeCluster._error(
        403, "Forbidden", 'jobs.batch is forbidden: User "sa@p.iam.gserviceaccount.com" cannot '
        'create resource "jobs" in API group "batch" in the namespace "bench"')
    launcher = make_launcher(base, load_dir, cluster, clock)
    with pytest.raises(gke.GkeError) as caught:
        launcher.run(timeout_s=60)
    message = str(caught.value)
    assert "HTTP 403" in message and 'cannot create resource "jobs"' in message
    assert "roles/container.developer" in message
    assert cluster.jobs == {}


def test_cleanup_errors_are_logged_with_a_kubectl_hint(base, load_dir, stats_tables):
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables, master_ends_after=6.0)
    cluster.fail["delete_namespaced_service"] = FakeCluster._error(
        500, "Internal Server Error", "etcdserver: request timed out")
    log = RecordingLog()
    result = make_launcher(base, load_dir, cluster, clock, log=log).run(timeout_s=60)
    assert result["status"] == "success"
    errors = log.text("error")
    assert "HTTP 500: etcdserver: request timed out" in errors
    assert f"kubectl delete service {gke.base_name(RUN)} -n {NS}" in errors


# ---------------------------------------------------------------- pure parts


def test_parse_master_log_reads_locusts_stats_table(stats_tables):
    text = "\n".join(["[x] host/INFO/locust.runners: Shape test updating to 6 users at 2.00 "
                      "spawn rate", *stats_tables[0], "", *stats_tables[1]])
    progress = gke.parse_master_log(text)
    assert progress == {"requests": 83, "failures": 3, "rps": expected_rps(stats_tables[1]),
                        "users": 6}
    assert gke.parse_master_log("\n".join(stats_tables[0]), users=2)["users"] == 2
    assert gke.parse_master_log("Starting Locust 2.47.0\n") is None


@pytest.mark.parametrize("run_id", [
    RUN, "a", "x" * 63, "UPPER_and.dots", "resnet-v1-" + "9" * 60,
])
def test_names_are_valid_deterministic_and_fit(run_id):
    import re

    name = gke.base_name(run_id)
    assert name == gke.base_name(run_id)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    assert len(name + "-worker") <= 63
    assert gke.base_name(run_id + "x") != name
    value = gke.label_value(run_id)
    assert len(value) <= 63
    assert re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", value)


def test_pod_args_insists_on_the_image_entrypoint():
    assert gke.pod_args(["locust", "-f", "x.py"]) == ["-f", "x.py"]
    with pytest.raises(ValueError, match="gke_launch_spec"):
        gke.pod_args([sys.executable, "-m", "locust", "-f", "x.py"])


def test_build_gke_launch_from_a_run_spec(base, tmp_path):
    from caio_operators.layout import RunLayout
    from caio_operators.loadgen.launch import write_config

    class Spec:  # the RunSpec fields build_gke_launch reads
        run_id = RUN
        workers = 2
        layout = RunLayout(storage.to_uri(tmp_path / "bucket"), RUN)

    config = make_config(
        test_id=RUN, predict_url=PREDICT, protocol="caip", signature="serving_default",
        payload_uri=Spec.layout.payload_uri, output_uri=Spec.layout.load_dir,
        load_shape="constant", users=4, spawn_rate=2, duration_s=30)
    write_config(Spec.layout.config_uri, config)
    launch = gke.build_gke_launch(Spec, make_target(), base)
    # Locust's files land where harvest reads them
    assert launch.publish_uri == Spec.layout.load_dir
    assert storage.join(launch.publish_uri, Path(launch.csv_prefix).name) == (
        Spec.layout.locust_csv_prefix)
    assert storage.join(launch.publish_uri, Path(launch.html_path).name) == (
        Spec.layout.locust_html)
    assert launch.master_argv[launch.master_argv.index("--caio-config") + 1] == (
        Spec.layout.config_uri)
    assert launch.requests_uri == Spec.layout.client_requests_dir
    assert launch.duration_s == 30 + 30  # the shape, then at most the stop timeout


# ---------------------------------------------------------------- real Locust output


TINY_LOCUSTFILE = textwrap.dedent("""
    from locust import HttpUser, LoadTestShape, constant, task

    class Ping(HttpUser):
        wait_time = constant(0.05)

        @task
        def ping(self):
            self.client.get("/ping")

    class Steps(LoadTestShape):
        def tick(self):
            t = self.get_run_time()
            if t > 5:
                return None
            return (1, 10) if t < 2 else (3, 10)
""")


@pytest.mark.slow
def test_parse_master_log_on_a_real_headless_locust_run(tmp_path):
    """A real headless Locust (standalone: same stats printer and shape log lines as a
    master) against a loopback server: its log parses into users, requests and req/s."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "tiny.py").write_text(TINY_LOCUSTFILE)
        out = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(tmp_path / "tiny.py"), "--headless",
             "--host", f"http://127.0.0.1:{server.server_port}", "--loglevel", "INFO"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-2000:]
    progress = gke.parse_master_log(text)
    assert progress is not None, text[-2000:]
    assert progress["users"] == 3
    assert progress["requests"] > 10 and progress["failures"] == 0
    assert "Shape test updating to 3 users" in text


def test_for_run_builds_the_launcher_of_a_run_spec(tmp_path, stats_tables):
    from caio_operators.layout import RunLayout
    from caio_operators.loadgen.launch import write_config

    class Spec:  # the RunSpec fields for_run reads (clients injected: no connect())
        run_id = RUN
        dag_id = "caio_load_test"
        workers = 3
        gke_namespace = NS
        locust_image = "us-docker.pkg.dev/p/caio/caio-locust:2.47.0"
        layout = RunLayout(storage.to_uri(tmp_path / "bucket"), RUN)

    write_config(Spec.layout.config_uri, make_config(
        test_id=RUN, predict_url=PREDICT, protocol="caip", signature="serving_default",
        payload_uri=Spec.layout.payload_uri, output_uri=Spec.layout.load_dir,
        load_shape="constant", users=6, spawn_rate=3, duration_s=20))
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables, master_ends_after=25.0)
    launcher = gke.GkeLauncher.for_run(
        Spec, try_number=4, core_api=cluster, batch_api=cluster,
        manifests_dir=REPO / "locust" / "manifests", log=RecordingLog(), clock=clock.time,
        sleep=clock.sleep)
    assert launcher.target == gke.GkeTarget(namespace=NS, image=Spec.locust_image, run_id=RUN,
                                            dag_id="caio_load_test", try_number=4)
    assert launcher.default_timeout_s() == 300 + (20 + 30) + 30  # startup + run + grace
    result = launcher.run()
    assert result["status"] == "success", result["reason"]
    assert result["worker_exit_codes"] == [0, 0, 0]
    assert cluster.created[0]["metadata"]["labels"]["caio.dev/try-number"] == "4"
    assert result["csv_prefix"] == Spec.layout.locust_csv_prefix


def test_gs_bucket_run_publishes_logs_and_counts_records_in_the_bucket(base, gs_bucket,
                                                                       stats_tables):
    """The production gs:// path (storage.py through gcsfs) against the local GCS emulator."""
    load_dir = storage.join(gs_bucket, "runs", RUN, "load")
    write_raw_records(load_dir, 3)
    clock = Clock()
    cluster = FakeCluster(clock, stats_tables, master_ends_after=12.0)
    result = make_launcher(base, load_dir, cluster, clock).run(timeout_s=60)

    assert result["status"] == "success", result["reason"]
    assert result["request_files"] == 3
    assert result["csv_prefix"] == f"{load_dir}/locust"
    assert storage.list_files(storage.join(load_dir, "logs"), ".log") == [
        f"{load_dir}/logs/master.log", f"{load_dir}/logs/worker-0.log",
        f"{load_dir}/logs/worker-1.log"]
    assert "Aggregated" in storage.read_text(f"{load_dir}/logs/master.log")
