"""LocalTarget: run the local model server (`local_server.py`) as a detached process group.

``deploy`` starts the supervisor in its own session (so that it outlives the task that
started it and can be stopped as one group), waits for its ready file and returns a
`LocalDeployment`. It stops by itself after ``max_lifetime_s`` even if no teardown ever
comes. ``undeploy`` stops it: SIGTERM (replicas flush their records), then SIGKILL for
whatever is left, and checks that nothing is. A pid is only signalled after checking that
it is still our server (command line and start time), never a process that reused it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from caio_operators import storage
from caio_operators.targets.base import DeployError, LocalDeployment, UndeployError
from caio_operators.targets.protocols import HEALTH_PATH, predict_url
from caio_operators.targets.scaling import SCALING_DIR, AutoscalingConfig
from caio_operators.targets.server_args import (
    DEFAULT_BATCH_TIMEOUT_MS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_LIFETIME_S,
    DEFAULT_REQUEST_TIMEOUT_S,
    MODULE,
    ModelDirError,
    check_model_dir,
)

if TYPE_CHECKING:
    from caio_operators.spec import RunSpec

log = logging.getLogger(__name__)

NAME = "local"
READY_FILE = "ready.json"
TEARDOWN_FILE = "teardown.json"  # what undeploy found still running (read by harvest)
LOG_FILE = "server.log"
STOP_TIMEOUT_S = 30.0  # the supervisor gives replicas 10 s after SIGTERM
KILL_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40

# Popen handles of servers started by this process, so that we reap them (no zombies).
_children: dict[int, subprocess.Popen] = {}


def _package_root() -> str:
    """The directory holding `caio_operators`, for the server's PYTHONPATH."""
    import caio_operators

    return str(Path(caio_operators.__file__).resolve().parent.parent)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty server log)"


def _local_dir(uri_or_path: str, what: str) -> Path:
    if not storage.is_local(str(uri_or_path)):
        raise DeployError(
            f"the local target needs a local {what}; {uri_or_path!r} is not a file:// URI "
            "or path. Use a file:// bucket, or target=endpoint for a remote server")
    return storage.local_path(str(uri_or_path))


def _clear_records(*directories: Path) -> None:
    """A re-deploy of the same run replaces its server records instead of adding to them."""
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.csv"):
            old.unlink(missing_ok=True)


def _server_processes(pid: int, create_time: float, ready_file: str) -> list[psutil.Process]:
    """Live processes of the server whose supervisor was ``pid`` started at ``create_time``.

    The supervisor leads its own process group, and its replicas are in it. A pid number
    cannot be reused while its process group has members, so members of group ``pid``
    that run our module are ours as long as the leader is ours or gone.
    """
    found: list[psutil.Process] = []
    leader_recycled = False
    try:
        leader = psutil.Process(pid)
        ours = (abs(leader.create_time() - create_time) < 1.0
                and MODULE in leader.cmdline() and ready_file in leader.cmdline())
        if not ours:
            leader_recycled = True
    except psutil.NoSuchProcess:
        pass
    except psutil.AccessDenied:
        leader_recycled = True
    if leader_recycled:
        return found
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if os.getpgid(proc.pid) != pid or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
        except OSError:
            continue
        if MODULE in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


def _reap(pid: int) -> None:
    child = _children.pop(pid, None)
    if child is not None:
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _children[pid] = child


def _signal_all(procs: list[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.send_signal(sig)  # psutil refuses a process that is not the one it saw


def stop_server(pid: int, create_time: float, ready_file: str) -> None:
    """Stop the server group of supervisor ``pid``; raise UndeployError if any survives."""
    procs = _server_processes(pid, create_time, ready_file)
    if procs:
        log.info("stopping local model server pid %d (%d processes)", pid, len(procs))
        _signal_all(procs, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=STOP_TIMEOUT_S)
        if alive:
            log.warning("killing %s: still running %.0f s after SIGTERM",
                        [p.pid for p in alive], STOP_TIMEOUT_S)
            _signal_all(alive, signal.SIGKILL)
            psutil.wait_procs(alive, timeout=KILL_TIMEOUT_S)
    _reap(pid)
    left = _server_processes(pid, create_time, ready_file)
    if left:
        raise UndeployError(
            f"local model server pid {pid}: processes {[p.pid for p in left]} are still "
            "running after SIGKILL; stop them by hand (kill -9) and check the server log")


class LocalTarget:
    """The local model server on 127.0.0.1, N replica processes behind one port."""

    name = NAME

    def run_protocol(self, spec: RunSpec) -> str:
        return "caip"  # the local server's default route

    def run_replicas(self, spec: RunSpec) -> int:
        return spec.replicas

    def monitored_target(self, spec: RunSpec, deployment: Mapping[str, Any] | None) -> None:
        """None: the local sampler measures the server, not Cloud Monitoring."""
        return None

    def teardown_stub(self, spec: Any) -> None:
        """None: without a deployment there is nothing of this target to find."""
        return None

    def server_problem(self, deployment: Mapping[str, Any]) -> tuple[str, str] | None:
        """What undeploy found still running (``teardown.json``): failed when the server
        had died before its teardown, degraded when some of its replicas had."""
        if not deployment.get("server_dir"):
            return None
        uri = storage.join(storage.to_uri(str(deployment["server_dir"])), TEARDOWN_FILE)
        if not storage.exists(uri):
            return None
        return teardown_problem(json.loads(storage.read_text(uri)))

    def deploy_run(self, spec: RunSpec) -> LocalDeployment:
        """``deploy`` with a run's params: its server folder, threads, batching, GPUs and
        autoscaling."""
        autoscaling = None
        if spec.local_autoscaling:
            autoscaling = AutoscalingConfig(
                min_replicas=spec.min_replicas, max_replicas=spec.max_replicas,
                target_pct=spec.autoscaling_target, up_window_s=spec.scale_up_window_s,
                down_window_s=spec.scale_down_window_s)
        return self.deploy(
            model_uri=spec.model_uri, model_name=spec.model_name,
            model_version=spec.model_version, replicas=spec.replicas,
            server_dir=str(storage.local_path(spec.layout.server_dir)),
            threads_per_replica=spec.server_threads,
            # the server stops itself after this even if no teardown comes; the hours allow
            # for its load waiting in the host pool behind other runs' loads
            max_lifetime_s=spec.duration_s + 4 * 3600,
            batch_max=spec.server_batch_max, batch_timeout_ms=spec.server_batch_timeout_ms,
            gpus=spec.local_gpus, autoscaling=autoscaling)

    def deploy(
        self,
        *,
        model_uri: str,
        model_name: str,
        model_version: str,
        replicas: int,
        server_dir: str,
        threads_per_replica: int = 0,
        startup_timeout_s: float = 300.0,
        max_lifetime_s: float = DEFAULT_MAX_LIFETIME_S,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        import_keras: bool = False,
        batch_max: int = 0,
        batch_timeout_ms: float = DEFAULT_BATCH_TIMEOUT_MS,
        gpus: str = "",
        autoscaling: AutoscalingConfig | None = None,
    ) -> LocalDeployment:
        """Start the server and wait until every replica serves.

        :param model_uri: the SavedModel (file:// URI or local path).
        :param server_dir: local directory (or file:// URI) for the server's records
            (``requests/``), samples (``samples/``), ready file and log; earlier records
            there are replaced.
        :param threads_per_replica: TF intra-op threads per replica; 0: cores // replicas.
        :param max_lifetime_s: the server stops by itself after this, teardown or not.
        :param request_timeout_s: a request must arrive whole within this from its first byte
            (slow clients get 408).
        :param batch_max: dynamic batching: up to this many instances of concurrent requests
            per model call, waiting up to ``batch_timeout_ms`` for them; 0 or 1: off.
        :param gpus: the replicas' GPUs ('' not pinned, 'none', 'all', '0,1'; see
            ``metrics/gpu.py``), sampled into ``gpu/``.
        :param autoscaling: scale between its bounds (``replicas`` is the starting count);
            None: ``replicas`` fixed. Either way the server writes ``scaling/`` records.
        :raises DeployError: with the tail of the server log when it does not come up.
        """
        if not isinstance(replicas, int) or replicas < 1:
            raise DeployError(f"replicas must be a whole number >= 1, got {replicas!r}")
        if startup_timeout_s <= 0 or max_lifetime_s <= 0:
            raise DeployError("startup_timeout_s and max_lifetime_s must be positive")
        if batch_max < 0 or batch_timeout_ms < 0:
            raise DeployError(f"batch_max ({batch_max}) and batch_timeout_ms "
                              f"({batch_timeout_ms}) must be 0 or more")
        try:
            model_dir = check_model_dir(_local_dir(model_uri, "model_uri"))
        except ModelDirError as exc:
            raise DeployError(f"cannot serve model_uri {model_uri!r}: {exc}") from None
        root = _local_dir(server_dir, "server_dir")
        records_dir, samples_dir = root / "requests", root / "samples"
        gpu_dir = root / "gpu"
        ready_file, log_path = root / READY_FILE, root / LOG_FILE
        scaling_dir = root / SCALING_DIR
        _clear_records(records_dir, samples_dir, gpu_dir, scaling_dir)
        ready_file.unlink(missing_ok=True)
        (root / TEARDOWN_FILE).unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", MODULE,
            "--model-dir", str(model_dir), "--model-name", str(model_name),
            "--model-version", str(model_version), "--replicas", str(replicas),
            "--host", host, "--port", str(port),
            "--records-dir", str(records_dir), "--samples-dir", str(samples_dir),
            "--ready-file", str(ready_file), "--max-lifetime-s", str(max_lifetime_s),
            "--threads-per-replica", str(threads_per_replica),
            "--max-body-bytes", str(max_body_bytes),
            "--request-timeout-s", repr(request_timeout_s),
            "--batch-max", str(batch_max), "--batch-timeout-ms", repr(float(batch_timeout_ms)),
            "--gpus", gpus, "--gpu-samples-dir", str(gpu_dir),
            "--scaling-dir", str(scaling_dir),
            *(autoscaling.argv() if autoscaling is not None else ()),
        ]
        if import_keras:
            argv.append("--import-keras")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_root(), env.get("PYTHONPATH", "")) if p)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                cwd=root, env=env, start_new_session=True, close_fds=True)
        _children[process.pid] = process
        create_time = psutil.Process(process.pid).create_time()
        log.info("starting local model server pid %d (%d replicas), log %s",
                 process.pid, replicas, log_path)
        try:
            ready = self._wait_ready(process, ready_file, startup_timeout_s)
        except DeployError as exc:
            try:
                stop_server(process.pid, create_time, str(ready_file))
            except UndeployError as left:
                log.error("%s", left)
            raise DeployError(f"{exc}. The server log {log_path} ends with:\n"
                              f"{log_tail(log_path)}") from None
        base_url = ready["base_url"]
        return LocalDeployment(
            target=NAME, protocol="caip", project="local",
            model_name=str(model_name), model_version=str(model_version),
            predict_url=predict_url("caip", base_url, "local", str(model_name),
                                    str(model_version)),
            base_url=base_url, health_url=base_url + HEALTH_PATH,
            pid=process.pid, pid_create_time=create_time, host=ready["host"],
            port=ready["port"], replicas=ready["replicas"], replica_pids=ready["replica_pids"],
            model_uri=str(model_uri), server_dir=str(server_dir),
            records_dir=str(records_dir), samples_dir=str(samples_dir),
            ready_file=str(ready_file), log_path=str(log_path), deadline=ready["deadline"],
            hostname=socket.gethostname())

    @staticmethod
    def _wait_ready(process: subprocess.Popen, ready_file: Path, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready_file.exists():
                try:
                    ready = json.loads(ready_file.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    ready = {}
                if ready.get("pid") == process.pid:
                    return ready
            code = process.poll()
            if code is not None:
                raise DeployError(f"the local model server exited with status {code} "
                                  "before it was ready")
            time.sleep(0.2)
        raise DeployError(f"the local model server was not ready within {timeout_s:.0f} s "
                          "(startup_timeout_s); it was stopped")

    def undeploy(self, deployment: Mapping[str, Any]) -> None:
        """Stop the server of ``deployment``; a server already gone is success."""
        pid = deployment.get("pid")
        if not pid:
            log.info("deployment has no server pid; nothing to stop")
            return
        host = deployment.get("hostname")
        if host and host != socket.gethostname():
            raise UndeployError(
                f"the local model server pid {pid} runs on host {host!r}, not on this host "
                f"({socket.gethostname()!r}); run the teardown on the same machine as the "
                "deploy (it stops by itself at its deadline anyway)")
        create_time = float(deployment.get("pid_create_time", 0.0))
        ready_file = str(deployment.get("ready_file", ""))
        record_teardown_state(deployment, _server_processes(int(pid), create_time, ready_file))
        stop_server(int(pid), create_time, ready_file)


def record_teardown_state(deployment: Mapping[str, Any], procs: list[psutil.Process]) -> dict:
    """Write ``<server_dir>/teardown.json``: whether the supervisor and each replica were
    still running when the teardown came. A server or replica that died mid-run is how
    harvest tells a crashed server from one that served to the end."""
    running = {proc.pid for proc in procs}
    replica_pids = list(deployment.get("replica_pids") or [])
    state = {
        "checked_at": time.time(),
        "supervisor_pid": deployment.get("pid"),
        "supervisor_running": deployment.get("pid") in running,
        "replicas": len(replica_pids),
        "dead_replicas": [i for i, rp in enumerate(replica_pids) if rp not in running],
        "log_path": deployment.get("log_path"),
    }
    server_dir = deployment.get("server_dir")
    if server_dir:
        try:
            storage.write_text(storage.join(storage.to_uri(str(server_dir)), TEARDOWN_FILE),
                               json.dumps(state, indent=2))
        except storage.StorageError as exc:  # stopping the server matters more
            log.error("cannot record the server's state at teardown: %s", exc)
    return state


def teardown_problem(state: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(status, reason)`` for a run whose server (``failed``) or some replicas
    (``degraded``) had died before the teardown; None when all were serving."""
    log_path = state.get("log_path") or "server.log"
    if not state.get("supervisor_running", True):
        return ("failed", f"the local model server (pid {state.get('supervisor_pid')}) had "
                f"died before the teardown: requests after its death failed; see {log_path}")
    dead = list(state.get("dead_replicas") or [])
    if dead:
        names = ", ".join(f"replica-{i}" for i in dead)
        return ("degraded", f"{names} of {state.get('replicas')} died mid-run; the other "
                f"replicas kept serving; see {log_path}")
    return None
