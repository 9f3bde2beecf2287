"""Run a LaunchSpec as local processes: one Locust master, N workers, each in its own
process group, with progress in the task log and nothing left behind.

Locust is never imported here (it monkey-patches the interpreter with gevent); it only runs
as ``python -m locust`` subprocesses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

from caio_operators import storage
from caio_operators.loadgen.launch import LaunchSpec, build_launch_spec, locust_command
from caio_operators.loadgen.progress import (
    format_progress,
    parse_progress,
    peak_progress,
    read_progress,
)
from caio_operators.metrics.host import HostWatch

logger = logging.getLogger(__name__)

#: how long a run's load may take past its shape's duration (start-up, stop, upload)
RUN_TIMEOUT_GRACE_S = 120


def default_locustfile() -> Path:
    """``$CAIO_LOCUSTFILE``, the repository's ``locust/locustfile.py``, or the packaged copy."""
    from caio_operators import resources

    explicit = os.environ.get("CAIO_LOCUSTFILE")
    path = Path(explicit) if explicit else resources.find("locust", "locustfile.py")
    if not path.is_file():
        raise FileNotFoundError(
            f"locustfile {path} not found; set CAIO_LOCUSTFILE to the path of "
            "caio-bench's locust/locustfile.py")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (the master binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def local_launch_spec(
    *,
    config: dict[str, Any],
    config_uri: str,
    load_dir: str | os.PathLike,
    workers: int,
    locustfile: str | os.PathLike | None = None,
    python: str | None = None,
    grace_s: float = 30.0,
    publish_uri: str | None = None,
) -> LaunchSpec:
    """A LaunchSpec for this machine: ``<python> -m locust`` bound to 127.0.0.1 on a free
    port, Locust's CSV/HTML and the process logs under ``load_dir`` (a local directory;
    ``publish_uri``: a bucket folder to copy them to after the run)."""
    load_dir = Path(load_dir)
    port = free_port()
    return build_launch_spec(
        publish_uri=publish_uri,
        config=config,
        config_uri=config_uri,
        locust_cmd=locust_command(python or sys.executable),
        locustfile=str(locustfile or default_locustfile()),
        workers=workers,
        csv_prefix=str(load_dir / "locust"),
        html_path=str(load_dir / "locust_report.html"),
        log_dir=str(load_dir / "logs"),
        master_port=port,
        grace_s=grace_s,
        expect_workers_max_wait_s=60,
    )


def build_launch(spec: Any, *, work_dir: str | os.PathLike | None = None,
                 **kwargs: Any) -> LaunchSpec:
    """The local LaunchSpec of a run (a RunSpec): config at ``layout.config_uri``,
    ``spec.workers`` workers. Locust's CSV/HTML and logs go to the run's load folder when the
    bucket is local; for a ``gs://`` bucket they go to ``work_dir`` (default: a temporary
    folder) and are copied to the bucket after the run. The config must already be written
    (``launch.build_config`` + ``launch.write_config``)."""
    layout = spec.layout
    config = json.loads(storage.read_text(layout.config_uri))
    publish = None
    if storage.is_local(layout.load_dir):
        load_dir = storage.local_path(layout.load_dir)
    else:
        publish = layout.load_dir
        load_dir = Path(work_dir or tempfile.mkdtemp(prefix=f"caio-load-{spec.run_id}-"))
    return local_launch_spec(config=config, config_uri=layout.config_uri, load_dir=load_dir,
                             workers=spec.workers, publish_uri=publish, **kwargs)


class LocalLauncher:
    """Start, watch and always clean up one local distributed Locust run.

    ``timeout_s``: the default of :meth:`run` (else the shape's duration + grace);
    ``work_dir``: a folder this launcher owns, removed by :meth:`close`.
    """

    in_cloud: ClassVar[bool] = False

    def __init__(self, launch_spec: LaunchSpec, log: logging.Logger | Any = None,
                 progress_every_s: float = 5.0, stop_grace_s: float = 8.0,
                 host_watch: HostWatch | None = None, timeout_s: float | None = None,
                 work_dir: str | os.PathLike | None = None):
        self.spec = launch_spec
        self.timeout_s = timeout_s
        self.work_dir = work_dir
        # samples the machine's CPU during the load (metrics/host.py); its figures end up
        # in host_figures
        self.host_watch = host_watch
        self.host_figures: dict[str, Any] | None = None
        self.log = log or logger
        self.progress_every_s = progress_every_s
        self.stop_grace_s = stop_grace_s
        self.master: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._logs: list[IO[bytes]] = []
        self._stop_requested = False
        # (index, pid, exit code) of workers that died while the master still ran
        self.worker_deaths: list[tuple[int, int, int | None]] = []

    @classmethod
    def for_run(cls, spec: Any, *, deployment: Mapping[str, Any] | None = None,
                try_number: int = 1, log: logging.Logger | Any = None,
                **kwargs: Any) -> LocalLauncher:
        """The launcher of a RunSpec (``load_runner=local``); the test config must already
        be written at ``layout.config_uri``. Locust's CSV/HTML and logs go to the run's load
        folder when the bucket is local, else to a temporary folder of its own that it
        copies to the bucket after the run (and :meth:`close` removes). It may run the
        shape's duration + ``RUN_TIMEOUT_GRACE_S`` and samples this machine's CPU."""
        work_dir = None
        if not storage.is_local(spec.layout.load_dir):
            work_dir = tempfile.mkdtemp(prefix=f"caio-load-{spec.run_id}-")
        try:
            launch = build_launch(spec, work_dir=work_dir)
        except BaseException:
            if work_dir is not None:
                shutil.rmtree(work_dir, ignore_errors=True)
            raise
        kwargs.setdefault("host_watch", host_watch(spec, deployment))
        kwargs.setdefault("timeout_s", spec.duration_s + RUN_TIMEOUT_GRACE_S)
        return cls(launch, log=log, work_dir=work_dir, **kwargs)

    @classmethod
    def begin_try(cls, spec: Any, log: logging.Logger | Any = None) -> None:
        """A retry starts clean: the records of a killed or timed-out try (its processes all
        ended with it) must not be harvested with this try's."""
        clear_load_outputs(spec.layout, log)

    # ---------------------------------------------------------------- public

    def run(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Run to the end of the shape (or ``timeout_s``, default the launcher's own, else
        duration + grace) and return ``{status, reason, master_exit_code,
        worker_exit_codes, started_at, ended_at, request_files, ...paths}``."""
        spec = self.spec
        if timeout_s is None:
            timeout_s = self.timeout_s
        timeout_s = timeout_s if timeout_s is not None else spec.duration_s + spec.grace_s
        started_at = time.time()
        reason = ""
        try:
            if self.host_watch is not None:
                self.host_watch.start()
            self._start_all()
            reason = self._watch(started_at, timeout_s)
        except Exception as exc:
            reason = f"launcher error: {type(exc).__name__}: {exc}"
            raise
        finally:
            self._shutdown()
            ended_at = time.time()
            if self.host_watch is not None:
                self.host_figures = self.host_watch.finish()
            for handle in self._logs:
                handle.close()
            self._logs.clear()
            if spec.publish_uri:
                self._publish(spec.publish_uri)
        master_code = self.master.returncode if self.master else None
        if not reason and master_code != 0:
            reason = f"locust master exited with code {master_code}: {self._log_tail('master.log')}"
        status = "failed" if reason else "success"
        if status == "success" and self.worker_deaths:
            # the others carried the load on: the run is measured, but not as configured
            status, reason = "degraded", worker_deaths_reason(self.worker_deaths)
        result = {
            "status": status,
            "reason": reason,
            "master_exit_code": master_code,
            "worker_exit_codes": [w.returncode for w in self.workers],
            "started_at": started_at,
            "ended_at": ended_at,
            "request_files": len(storage.list_files(spec.requests_uri, ".csv")),
            "requests_uri": spec.requests_uri,
            "csv_prefix": spec.csv_prefix,
            "html_path": spec.html_path,
            "log_dir": spec.log_dir,
        }
        log = self.log.info if status == "success" else self.log.error
        log(f"load: {result['status']}{f' ({reason})' if reason else ''} in "
            f"{ended_at - started_at:.1f} s, {result['request_files']} raw record files")
        return result

    def stop(self) -> None:
        """Stop the run now (Airflow's ``on_kill``): SIGTERM everything, then SIGKILL.
        Safe to call from another thread or a signal handler, and more than once."""
        self._stop_requested = True
        self._shutdown()

    def close(self) -> None:
        """Remove the work folder this launcher owns (its files are in the bucket)."""
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # ---------------------------------------------------------------- steps

    def _publish(self, publish_uri: str) -> None:
        try:
            copied = upload_outputs(self.spec, publish_uri)
            self.log.info(f"load: copied {len(copied)} Locust files to {publish_uri}")
        except Exception as exc:  # the raw records are already in the bucket
            self.log.error(f"load: cannot copy Locust's files to {publish_uri}: "
                           f"{type(exc).__name__}: {exc}")

    def _start_all(self) -> None:
        if self._stop_requested:
            return
        log_dir = Path(self.spec.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        Path(self.spec.csv_prefix).parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.spec.env}
        self.master = self._spawn(self.spec.master_argv, log_dir / "master.log", env)
        self.log.info(f"load: started locust master (pid {self.master.pid}) for "
                      f"{self.spec.workers} workers, {self.spec.duration_s:.0f} s shape; "
                      f"logs in {log_dir}")
        for i, argv in enumerate(self.spec.worker_argvs):
            self.workers.append(self._spawn(argv, log_dir / f"worker-{i}.log", env))
        pids = ", ".join(str(w.pid) for w in self.workers)
        self.log.info(f"load: started {len(self.workers)} locust workers (pids {pids})")

    def _spawn(self, argv: tuple[str, ...], log_path: Path, env: dict[str, str]):
        handle = log_path.open("ab")
        self._logs.append(handle)
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=handle,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def _watch(self, started_at: float, timeout_s: float) -> str:
        """Poll until the master exits; return '' for a normal end, else why it was cut."""
        if self.master is None:
            return "stopped by request"
        deadline = started_at + timeout_s
        next_progress = started_at + self.progress_every_s
        reported_dead: set[int] = set()
        all_dead_at = 0.0
        peak_seen = 0
        while True:
            if self._stop_requested:
                return "stopped by request"
            if self.master.poll() is not None:
                return ""
            if self.host_watch is not None:
                self.host_watch.tick()
            now = time.time()
            for i, worker in enumerate(self.workers):
                if worker.poll() is not None and i not in reported_dead:
                    reported_dead.add(i)
                    log = self.log.info if worker.returncode == 0 else self.log.warning
                    if worker.returncode != 0:
                        self.worker_deaths.append((i, worker.pid, worker.returncode))
                    log(f"load: locust worker {i} (pid {worker.pid}) exited with code "
                        f"{worker.returncode}; log: {Path(self.spec.log_dir) / f'worker-{i}.log'}")
            if self.workers and len(reported_dead) == len(self.workers):
                # at a normal end the master quits the workers first: give it time to follow
                all_dead_at = all_dead_at or now
                if now - all_dead_at > self.stop_grace_s:
                    return f"all locust workers exited: {self._log_tail('worker-0.log')}"
            if now >= deadline:
                return f"deadline of {timeout_s:.0f} s exceeded"
            if now >= next_progress:
                progress = read_progress(self.spec.history_csv)
                self.log.info(format_progress(now - started_at, progress))
                if self.spec.meta.get("shape") == "peak_search":
                    lines, peak_seen = peak_progress(self.spec.peak_search_uri, peak_seen)
                    for line in lines:
                        self.log.info(line)
                next_progress += self.progress_every_s
            time.sleep(0.25)

    def _shutdown(self) -> None:
        """Stop cleanly, then surely: SIGTERM a master still running (it tells the workers to
        quit, and they flush their records), give the workers time to exit, SIGTERM those
        left, and finally SIGKILL every process group."""
        procs = [p for p in (self.master, *self.workers) if p is not None]
        if self.master is not None and self.master.poll() is None:
            _signal_group(self.master, signal.SIGTERM)
            _wait_all([self.master], self.stop_grace_s / 2)
        if self.master is not None and self.master.returncode == 0:
            _wait_all(self.workers, self.stop_grace_s / 2)  # they got the master's quit
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        _wait_all(procs, self.stop_grace_s / 2)
        for proc in procs:
            # the group too: anything a process left behind in its session goes as well
            _signal_group(proc, signal.SIGKILL)
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.log.error(f"load: process {proc.pid} did not die after SIGKILL")

    def _log_tail(self, name: str, lines: int = 3) -> str:
        """The last lines of a process log: where Locust and the locustfile say what broke."""
        try:
            text = (Path(self.spec.log_dir) / name).read_text(errors="replace")
        except OSError:
            return f"(no {name})"
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail) or f"(empty {name})"


def host_watch(spec: Any, deployment: Mapping[str, Any] | None) -> HostWatch:
    """The sampler of this machine's CPU for a load run from here: this process (Locust
    runs under it) and a local model server count as the run's own."""
    server = (deployment or {}).get("pid")  # only a local server's deployment has one
    return HostWatch(spec.run_id, roots=[server] if server else [])


def clear_load_outputs(layout: Any, log: logging.Logger | Any = None) -> None:
    """Remove what an earlier try of the load left in the run's load folder."""
    if storage.exists(layout.load_dir):
        (log or logger).info("removing the outputs of an earlier load try in %s",
                             layout.load_dir)
        storage.remove_tree(layout.load_dir)


def worker_deaths_reason(deaths: list[tuple[int, int, int | None]]) -> str:
    """Why a run whose master finished is degraded: the workers that died mid-run."""
    which = ", ".join(f"{i} (pid {pid}, exit code {code})" for i, pid, code in deaths)
    return (f"locust worker {which} died mid-run; the records it flushed before are kept, "
            "those it still held are lost, and the other workers carried on")


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the pid


def _wait_all(procs: list[subprocess.Popen], timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, end - time.monotonic()))


def upload_outputs(spec: LaunchSpec, load_dir_uri: str) -> list[str]:
    """Copy Locust's CSVs, HTML and the process logs into a (remote) load folder; for a local
    run whose bucket is ``gs://``. A ``file://`` load folder needs nothing."""
    if storage.is_local(load_dir_uri):
        return []
    out = []
    sources = [Path(spec.csv_prefix + s) for s in
               ("_stats.csv", "_stats_history.csv", "_failures.csv", "_exceptions.csv")]
    sources += [Path(spec.html_path), *sorted(Path(spec.log_dir).glob("*.log"))]
    for src in sources:
        if src.is_file():
            sub = ("logs", src.name) if src.suffix == ".log" else (src.name,)
            out.append(storage.put_file(src, storage.join(load_dir_uri, *sub)))
    return out


__all__ = ["RUN_TIMEOUT_GRACE_S", "LocalLauncher", "build_launch", "clear_load_outputs",
           "default_locustfile", "format_progress", "free_port", "host_watch",
           "local_launch_spec", "parse_progress", "peak_progress", "read_progress",
           "upload_outputs", "worker_deaths_reason"]
