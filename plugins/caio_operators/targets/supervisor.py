"""The local server's supervisor: starts the replicas, balances, samples, scales, stops.

See ``local_server.py`` for the whole server. The supervisor starts each replica as
``python -m caio_operators.targets.local_server --replica-index i ...`` with a private
admin socket and a channel, waits until every replica answers ``/healthz``, then lets the
balancer (``balancer.py``) hand out connections, writes the ready file, and once a second
samples each replica's CPU% and RSS (and the GPUs, ``metrics/gpu.py``) and feeds the
autoscaler (``scaling.py``). On stop it ends the replicas, SIGTERM first.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from caio_operators import storage
from caio_operators.metrics.gpu import LocalGpus
from caio_operators.targets import scaling
from caio_operators.targets.balancer import ConnectionBalancer, channel_pair
from caio_operators.targets.records import SAMPLE_COLUMNS, CsvBatchWriter
from caio_operators.targets.server_args import (
    MODULE,
    ModelDirError,
    check_model_dir,
    scaling_policy,
    threads_per_replica,
)

log = logging.getLogger("caio_operators.targets.local_server")

STOP_GRACE_S = 10.0
SAMPLE_INTERVAL_S = 1.0
SAMPLE_FLUSH_INTERVAL_S = 2.0
LISTEN_BACKLOG = 1024


@dataclass
class Replica:
    index: int
    process: subprocess.Popen
    admin_port: int
    sampler: psutil.Process | None = None  # once serving
    exit_logged: bool = False
    retiring: bool = False  # scaled in: its exit is expected


def _health_ok(port: int, timeout: float = 1.0) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        body = response.read()
        return response.status == 200 and json.loads(body).get("status") == "ok"
    except (OSError, ValueError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)


class Supervisor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.time()
        self.deadline = self.started + args.max_lifetime_s
        self.stop = threading.Event()
        self.replicas: list[Replica] = []
        self.port = 0
        self.samples: CsvBatchWriter | None = None
        self._balancer: ConnectionBalancer | None = None
        self._gpus: LocalGpus | None = None
        self.scaling_records: CsvBatchWriter | None = None
        self.scaler: scaling.ScalingController | None = None
        self.intra = threads_per_replica(max(args.replicas, args.max_replicas),
                                         args.threads_per_replica)
        self.model_dir = ""
        self.env: dict[str, str] = {}

    @property
    def balancer(self) -> ConnectionBalancer:
        """The connection balancer, from ``run()`` on (it owns the listening socket)."""
        if self._balancer is None:
            raise RuntimeError("the supervisor is not running: no balancer yet")
        return self._balancer

    @property
    def gpus(self) -> LocalGpus:
        """The replicas' GPUs (pinning and GPU samples), from ``run()`` on."""
        if self._gpus is None:
            raise RuntimeError("the supervisor is not running: no GPUs opened yet")
        return self._gpus

    # lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        args = self.args
        if args.ready_file:
            Path(args.ready_file).unlink(missing_ok=True)  # a stale one would lie
        try:
            model_dir = check_model_dir(args.model_dir)
        except ModelDirError as exc:
            log.error("%s", exc)
            return 2
        try:
            # GPU samples follow the starting replicas; scaled-out ones are pinned by the same
            # rule but not sampled (docs/gpu.md)
            gpus = self._gpus = LocalGpus.open(args.gpus, args.replicas)
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        try:
            listener = _listen(args.host, args.port)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s; pick another --port or --host",
                      args.host, args.port, exc.strerror or exc)
            return 2
        balancer = self._balancer = ConnectionBalancer(listener, stopping=self.stop)
        self.port = listener.getsockname()[1]
        try:
            self._spawn(str(model_dir))
            if not self._wait_ready():
                stopped = self.stop.is_set() or time.time() >= self.deadline
                return 0 if stopped else 1
            # Connections that came early wait in the backlog until now.
            balancer.start()
            self._write_ready_file()
            return self._supervise()
        finally:
            balancer.stop_accepting()
            self._stop_replicas()
            balancer.close()  # after the replicas: they take its end of file for a fault
            if self.samples is not None:
                self.samples.close()
            gpus.close()
            if self.scaling_records is not None:
                self.scaling_records.close()
            if args.ready_file:
                Path(args.ready_file).unlink(missing_ok=True)
            log.info("stopped")

    def _spawn(self, model_dir: str) -> None:
        """Start the replicas, each with a private admin socket and a channel for connections.

        The supervisor keeps the channels' other ends (in the balancer) and nothing else:
        each replica's admin socket and channel end live in that replica only, so a dead
        replica's channel reads as closed.
        """
        args = self.args
        self.model_dir = model_dir
        self.env = dict(os.environ)
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        for _ in range(args.replicas):
            self._start_replica(accepting=True)
        log.info("started %d replica(s) for %s:%d (pids %s; %d intra-op threads each; %s)",
                 len(self.replicas), args.host, self.port,
                 ", ".join(str(r.process.pid) for r in self.replicas), self.intra,
                 self.gpus.describe())

    def _start_replica(self, accepting: bool) -> int:
        """Start one replica process; its index (the same in the balancer)."""
        args, model_dir, intra = self.args, self.model_dir, self.intra
        ours, theirs = channel_pair()
        index = self.balancer.add(ours, accepting=accepting)
        with theirs, _listen("127.0.0.1", 0) as admin:
            argv = [
                sys.executable, "-m", MODULE, "--replica-index", str(index),
                "--model-dir", model_dir, "--model-name", args.model_name,
                "--model-version", args.model_version,
                "--channel-fd", str(theirs.fileno()), "--admin-fd", str(admin.fileno()),
                "--supervisor-pid", str(os.getpid()),
                "--deadline", repr(self.deadline + 30),
                "--intra-threads", str(intra), "--inter-threads", "1",
                "--records-dir", args.records_dir,
                "--max-body-bytes", str(args.max_body_bytes),
                "--request-timeout-s", repr(args.request_timeout_s),
                "--batch-max", str(args.batch_max),
                "--batch-timeout-ms", repr(args.batch_timeout_ms),
            ]
            if args.import_keras:
                argv.append("--import-keras")
            process = subprocess.Popen(argv, env=self.gpus.env(index, self.env),
                                       stdin=subprocess.DEVNULL,
                                       pass_fds=(theirs.fileno(), admin.fileno()))
            self.replicas.append(Replica(index, process, admin.getsockname()[1]))
        return index

    def _wait_ready(self) -> bool:
        pending = {r.index for r in self.replicas}
        while pending:
            if self.stop.is_set() or self._expired():
                return False
            for replica in self.replicas:
                code = replica.process.poll()
                if code is not None:
                    log.error("replica %d (pid %d) exited with status %d while starting; "
                              "see its messages above", replica.index, replica.process.pid, code)
                    return False
            pending = {i for i in pending if not _health_ok(self.replicas[i].admin_port)}
            if pending:
                self.stop.wait(0.25)
        log.info("all %d replica(s) ready in %.1f s", len(self.replicas),
                 time.time() - self.started)
        return True

    def _expired(self) -> bool:
        if time.time() >= self.deadline:
            log.warning("maximum lifetime of %.0f s reached; stopping", self.args.max_lifetime_s)
            return True
        return False

    def ready_info(self) -> dict:
        host = self.args.host
        url_host = f"[{host}]" if ":" in host else host
        return {
            "pid": os.getpid(),
            "host": host,
            "port": self.port,
            "base_url": f"http://{url_host}:{self.port}",
            "replicas": len(self.replicas),
            "replica_pids": [r.process.pid for r in self.replicas],
            "replica_admin_ports": [r.admin_port for r in self.replicas],
            "model_dir": self.args.model_dir,
            "model_name": self.args.model_name,
            "model_version": self.args.model_version,
            "started_at": self.started,
            "deadline": self.deadline,
        }

    def _write_ready_file(self) -> None:
        if self.args.ready_file:
            storage.write_text(self.args.ready_file, json.dumps(self.ready_info(), indent=2))

    def _supervise(self) -> int:
        if self.args.samples_dir:
            os.makedirs(self.args.samples_dir, exist_ok=True)
            self.samples = CsvBatchWriter(self.args.samples_dir, "samples", SAMPLE_COLUMNS)
            self.samples.start(SAMPLE_FLUSH_INTERVAL_S)
        self.gpus.start(self.args.gpu_samples_dir, SAMPLE_INTERVAL_S, SAMPLE_FLUSH_INTERVAL_S)
        self._start_scaling()
        for replica in self.replicas:
            self._start_sampler(replica)
        next_sample = time.monotonic() + SAMPLE_INTERVAL_S
        while not self.stop.wait(max(0.0, next_sample - time.monotonic())):
            next_sample += SAMPLE_INTERVAL_S
            if self._expired():
                return 0
            if not self.balancer.alive():
                log.error("the server no longer accepts connections; stopping")
                return 1
            alive = self._check_replicas()
            if not alive:
                log.error("no replica is left serving; stopping")
                return 1
            cpu = self._sample(alive)
            if self.scaler is not None:
                self.scaler.tick(time.time(), cpu)
        return 0

    @staticmethod
    def _start_sampler(replica: Replica) -> None:
        try:
            replica.sampler = psutil.Process(replica.process.pid)
            replica.sampler.cpu_percent(None)  # the first reading only starts the clock
        except psutil.NoSuchProcess:
            replica.sampler = None

    def _start_scaling(self) -> None:
        """The scaling records and, when min < max replicas, the autoscaler."""
        args = self.args
        if args.scaling_dir:
            os.makedirs(args.scaling_dir, exist_ok=True)
        records = self.scaling_records = CsvBatchWriter(
            args.scaling_dir or None, "scaling", scaling.SCALING_COLUMNS)
        records.start(SAMPLE_FLUSH_INTERVAL_S)
        policy = scaling_policy(args)
        self.scaler = scaling.ScalingController(
            pool=self, recorder=records, policy=policy,
            threads_per_replica=self.intra, drain_timeout_s=args.drain_timeout_s)
        self.scaler.started(time.time(), [r.index for r in self.replicas])
        if policy is not None:
            log.info("autoscaling between %d and %d replicas on %.0f%% CPU (scale out after "
                     "%.0f s above, in after %.0f s below)", policy.min_replicas,
                     policy.max_replicas, policy.target_pct, policy.up_window_s,
                     policy.down_window_s)

    # the scaling controller's port (scaling.Pool) ----------------------------------------

    def start_replica(self) -> int:
        return self._start_replica(accepting=False)

    def replica_healthy(self, index: int) -> bool:
        return _health_ok(self.replicas[index].admin_port, timeout=0.5)

    def replica_exit_code(self, index: int) -> int | None:
        return self.replicas[index].process.poll()

    def open_connections(self, index: int) -> int:
        return self.balancer.open[index]

    def set_accepting(self, index: int, accepting: bool) -> None:
        if accepting:
            self._start_sampler(self.replicas[index])
        self.balancer.set_accepting(index, accepting)

    def terminate_replica(self, index: int) -> None:
        replica = self.replicas[index]
        replica.retiring = True
        if replica.process.poll() is None:
            replica.process.send_signal(signal.SIGTERM)

    def _check_replicas(self) -> list[Replica]:
        alive = []
        for replica in self.replicas:
            code = replica.process.poll()
            if code is None:
                alive.append(replica)
            elif not replica.exit_logged and not replica.retiring:
                replica.exit_logged = True
                log.error("replica %d (pid %d) exited with status %d; %d replica(s) keep "
                          "serving (not restarted)", replica.index, replica.process.pid, code,
                          sum(r.process.poll() is None for r in self.replicas))
        return alive

    def _sample(self, alive: list[Replica]) -> dict[int, float]:
        """Record each ready replica's CPU% and RSS; the CPU% by replica index."""
        now, cpus = time.time(), {}
        for replica in alive:
            if replica.sampler is None:
                continue
            try:
                with replica.sampler.oneshot():
                    cpu = replica.sampler.cpu_percent(None)
                    rss = replica.sampler.memory_info().rss / 2**20
            except psutil.Error:
                continue
            cpus[replica.index] = cpu
            if self.samples is not None:
                self.samples.add((f"{now:.6f}", replica.index, replica.process.pid,
                                  f"{cpu:.1f}", f"{rss:.1f}"))
        return cpus

    def _stop_replicas(self) -> None:
        for replica in self.replicas:
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGTERM)
        end = time.monotonic() + STOP_GRACE_S
        for replica in self.replicas:
            try:
                replica.process.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("replica %d (pid %d) ignored SIGTERM; killing it",
                            replica.index, replica.process.pid)
                replica.process.kill()
                replica.process.wait()
