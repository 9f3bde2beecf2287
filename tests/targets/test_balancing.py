"""Connection balancing of the local model server, for real: the supervisor hands each new
connection to the replica holding the fewest, so a few keep-alive connections (a load
test's users) spread evenly instead of wherever the kernel hashes them.

Two servers (2 and 3 replicas of the tiny model) start together for the whole module.
"""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from targets_helpers import MAX_BODY_BYTES, server_processes, solid_image

from caio_operators.targets import protocols
from caio_operators.targets.local import LocalTarget
from caio_operators.targets.local_server import pick_replica

SETTLE_S = 10.0
STOP_S = 5.0  # a clean stop takes well under a second; the supervisor kills after 10 s


@pytest.fixture(scope="module")
def servers(tiny_model_dir, tmp_path_factory):
    """{2: deployment, 3: deployment}: a 2-replica and a 3-replica server, started at once."""
    target = LocalTarget()

    def deploy(replicas: int):
        return target.deploy(
            model_uri=str(tiny_model_dir), model_name="tiny", model_version="3",
            replicas=replicas, server_dir=str(tmp_path_factory.mktemp(f"balance{replicas}")),
            threads_per_replica=1, max_body_bytes=MAX_BODY_BYTES, max_lifetime_s=600,
            startup_timeout_s=240)

    with ThreadPoolExecutor(2) as pool:
        futures = {n: pool.submit(deploy, n) for n in (2, 3)}
    deployments = {n: f.result() for n, f in futures.items() if f.exception() is None}
    failed = [f.exception() for f in futures.values() if f.exception() is not None]
    if failed:
        for deployment in deployments.values():
            target.undeploy(deployment)
        raise failed[0]
    yield deployments
    stop_times = {}
    for n, deployment in deployments.items():
        started = time.monotonic()
        target.undeploy(deployment)  # SIGTERM to every process of the server at once
        stop_times[n] = time.monotonic() - started
    for n, deployment in deployments.items():
        assert not server_processes(deployment["pid"])
        assert stop_times[n] < STOP_S, f"a replica of the {n}-replica server ignored SIGTERM"
        assert "ignored SIGTERM" not in Path(deployment["log_path"]).read_text("utf-8")


@pytest.fixture
def two(servers):
    settle(servers[2])
    return servers[2]


@pytest.fixture
def three(servers):
    settle(servers[3])
    return servers[3]


class Connection:
    """One keep-alive HTTP connection to the server; every request checks it stayed one."""

    def __init__(self, deployment) -> None:
        self.deployment = deployment
        self.http = http.client.HTTPConnection("127.0.0.1", deployment["port"], timeout=20)
        self.local_port: int | None = None
        self.replicas: list[str] = []

    def request(self, method: str = "GET", path: str = "/healthz", body: str | None = None):
        headers = {"Content-Type": "application/json"} if body else {}
        self.http.request(method, path, body=body, headers=headers)
        response = self.http.getresponse()
        data = response.read()
        assert response.status == 200, data[:500]
        port = self.http.sock.getsockname()[1]
        assert self.local_port in (None, port), "the connection was not kept alive"
        self.local_port = port
        self.replicas.append(response.getheader("X-Caio-Replica"))
        return data

    def predict(self) -> str:
        path = self.deployment["predict_url"].removeprefix(self.deployment["base_url"])
        body = json.dumps(protocols.predict_body(
            [protocols.b64(solid_image((5, 250, 5)))], "serving_preprocess"))
        return json.loads(self.request("POST", path, body))["predictions"][0]["labels"][0]

    @property
    def replica(self) -> str:
        """The replica serving this connection: the same for each of its requests."""
        assert self.replicas and len(set(self.replicas)) == 1, self.replicas
        return self.replicas[0]

    def close(self) -> None:
        self.http.close()


def open_connection(deployment, requests: int = 3) -> Connection:
    conn = Connection(deployment)
    conn.request()
    assert conn.predict() == "green"
    for _ in range(requests - 2):
        conn.request()
    assert conn.replica in {str(i) for i in range(deployment["replicas"])}
    return conn


def held(deployment) -> list[int]:
    """Client connections each replica process holds open (any TCP state), as the kernel
    sees them. A replica reports a close before it closes the descriptor, and the supervisor
    reads every report before it places a connection: once a connection is gone here, the
    next one is placed on counts that know it."""
    counts = []
    for pid in deployment["replica_pids"]:
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            counts.append(0)
            continue
        counts.append(sum(1 for c in connections if c.laddr and
                          c.laddr.port == deployment["port"]))
    return counts


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def settle(deployment) -> None:
    """Wait until no replica holds a connection (so the supervisor has heard so)."""
    assert wait_until(lambda: not any(held(deployment)), SETTLE_S), held(deployment)


def close_all(connections: list[Connection]) -> None:
    for conn in connections:
        conn.close()


# The policy, with literal numbers -------------------------------------------------------


def test_pick_replica_fewest_open_then_round_robin():
    assert pick_replica([0, 0, 0], [True] * 3, start=0) == 0
    assert pick_replica([0, 0, 0], [True] * 3, start=2) == 2
    assert pick_replica([1, 0, 1], [True] * 3, start=2) == 1
    assert pick_replica([2, 1, 1], [True] * 3, start=2) == 2
    assert pick_replica([2, 1, 1], [True] * 3, start=0) == 1
    assert pick_replica([5, 0, 1], [True, False, True], start=1) == 2
    assert pick_replica([0, 0], [False, False], start=0) is None


# Real servers -------------------------------------------------------------------------------


def test_four_keep_alive_connections_on_two_replicas_are_served_two_and_two(two):
    connections = [open_connection(two) for _ in range(4)]  # one after another, all kept
    try:
        assert Counter(c.replica for c in connections) == {"0": 2, "1": 2}
        for conn in connections:  # still the same replica, later too
            conn.request()
            assert conn.replica in ("0", "1")
        assert held(two) == [2, 2]
    finally:
        close_all(connections)


def test_six_connections_on_three_replicas_are_served_two_two_two(three):
    connections = [open_connection(three) for _ in range(6)]
    try:
        assert Counter(c.replica for c in connections) == {"0": 2, "1": 2, "2": 2}
        assert held(three) == [2, 2, 2]
    finally:
        close_all(connections)


def test_new_connections_go_to_the_replica_with_fewer_open(three):
    connections = [open_connection(three) for _ in range(6)]
    try:
        by_replica = {r: [c for c in connections if c.replica == r] for r in "012"}
        for conn in by_replica["1"] + by_replica["2"][:1]:
            conn.close()
        assert wait_until(lambda: held(three) == [2, 0, 1], SETTLE_S), held(three)
        first = open_connection(three)
        assert first.replica == "1"  # holds none
        more = [open_connection(three) for _ in range(2)]  # 1 and 2 tie, then 1
        assert Counter(c.replica for c in [first, *more]) == {"1": 2, "2": 1}
        assert held(three) == [2, 2, 2]
        connections += [first, *more]
    finally:
        close_all(connections)


def test_nothing_leaks_in_supervisor_or_replicas(three):
    supervisor = psutil.Process(three["pid"])
    replicas = [psutil.Process(pid) for pid in three["replica_pids"]]

    def usage():
        return [(p.num_fds(), p.num_threads()) for p in (supervisor, *replicas)]

    before = usage()
    for _ in range(3):
        connections = [open_connection(three, requests=2) for _ in range(6)]
        # Connections that send nothing, or half a request, are handed over and closed too.
        idle = [http.client.HTTPConnection("127.0.0.1", three["port"], timeout=5)
                for _ in range(3)]
        for conn in idle:
            conn.connect()
        idle[0].sock.sendall(b"GET /healthz HTTP/1.1\r\nHost")
        assert wait_until(lambda: sum(held(three)) == 9, SETTLE_S), held(three)
        close_all(connections)
        for conn in idle:
            conn.close()
        settle(three)
    # The supervisor keeps no client connection: its only TCP socket is the listening one.
    tcp = supervisor.net_connections(kind="tcp")
    assert [c.status for c in tcp] == [psutil.CONN_LISTEN]
    assert wait_until(lambda: usage() == before, SETTLE_S), (before, usage())
    # And the balance is still even after all that churn.
    connections = [open_connection(three) for _ in range(3)]
    try:
        assert sorted(c.replica for c in connections) == ["0", "1", "2"]
    finally:
        close_all(connections)


def test_killing_a_replica_sends_new_connections_to_the_survivor(two):
    held = [open_connection(two) for _ in range(2)]
    doomed = next(c for c in held if c.replica == "0")
    survivor = next(c for c in held if c.replica == "1")
    victim = psutil.Process(two["replica_pids"][0])
    victim.kill()
    # Its descriptors close as it dies, before anyone reaps it.
    assert wait_until(lambda: not victim.is_running()
                      or victim.status() == psutil.STATUS_ZOMBIE, 10)
    with pytest.raises((OSError, http.client.HTTPException)):
        doomed.request()  # its connections fail
    fresh = []
    try:
        for _ in range(6):  # no waiting for the supervisor to notice: the first hand-off
            fresh.append(open_connection(two))  # to the dead replica fails and goes on
        assert [c.replica for c in fresh] == ["1"] * 6
        survivor.request()
        assert survivor.replica == "1"
        assert psutil.pid_exists(two["pid"])
        log = Path(two["log_path"]).read_text(encoding="utf-8")
        assert "replica 0 takes no more connections" in log
    finally:
        close_all([*held, *fresh])
