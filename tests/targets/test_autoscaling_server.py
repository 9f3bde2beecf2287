"""Autoscaling of the real local server: 1 replica -> more under load -> back to 1, and not
one request fails meanwhile (new replicas get connections once ready; a scaled-in replica
drains its keep-alive connections with ``Connection: close`` before it stops).

The load is four keep-alive clients in this process against a 1-thread replica with a 25%
CPU target: well above the target on an idle machine, and still above it on a loaded one
(a busy machine slows the requests, not the share of a core the replica burns).
"""

from __future__ import annotations

import csv
import http.client
import json
import threading
import time
from pathlib import Path

from targets_helpers import MAX_BODY_BYTES, server_processes, solid_image

from caio_operators.targets import protocols
from caio_operators.targets.local import LocalTarget
from caio_operators.targets.scaling import SCALING_COLUMNS, AutoscalingConfig

CLIENTS = 4


def scaling_rows(server_dir: Path) -> list[dict]:
    rows = []
    for path in sorted((server_dir / "scaling").glob("*.csv")):
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            assert tuple(reader.fieldnames) == SCALING_COLUMNS
            rows.extend(reader)
    return sorted(rows, key=lambda r: float(r["ts"]))


def ready_counts(server_dir: Path) -> list[int]:
    return [int(r["to_replicas"]) for r in scaling_rows(server_dir) if r["event"] == "ready"]


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s: {what}"
        time.sleep(0.5)


def client(deployment, stop: threading.Event, results: list, replicas: set) -> None:
    """Predict requests on one keep-alive connection until ``stop``; a server's
    ``Connection: close`` makes http.client open a new one for the next request."""
    path = deployment["predict_url"].removeprefix(deployment["base_url"])
    body = json.dumps(protocols.predict_body(
        [protocols.b64(solid_image((5, 250, 5)))], "serving_preprocess"))
    conn = http.client.HTTPConnection("127.0.0.1", deployment["port"], timeout=30)
    try:
        while not stop.is_set():
            try:
                conn.request("POST", path, body=body,
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                results.append(response.status)
                replicas.add(response.getheader("X-Caio-Replica"))
            except (OSError, http.client.HTTPException) as exc:
                results.append(repr(exc))
                conn.close()
    finally:
        conn.close()


def test_scales_out_under_load_and_back_in_without_a_failed_request(tiny_model_dir, tmp_path):
    server_dir = tmp_path / "server"
    target = LocalTarget()
    deployment = target.deploy(
        model_uri=str(tiny_model_dir), model_name="tiny", model_version="3", replicas=1,
        server_dir=str(server_dir), threads_per_replica=1, max_body_bytes=MAX_BODY_BYTES,
        max_lifetime_s=600, startup_timeout_s=240,
        autoscaling=AutoscalingConfig(min_replicas=1, max_replicas=3, target_pct=25,
                                      up_window_s=2, down_window_s=4, drain_timeout_s=20))
    stop, results, served_by = threading.Event(), [], set()
    threads = [threading.Thread(target=client, args=(deployment, stop, results, served_by))
               for _ in range(CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: max(ready_counts(server_dir), default=0) >= 2, 120,
                 "a second replica ready under load")
        # keep the load on a little, so that the new replica serves some of it
        wait_for(lambda: len(served_by) >= 2, 30, "requests answered by the new replica")
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        wait_for(lambda: ready_counts(server_dir)[-1] == 1, 90, "back to 1 replica when idle")
    finally:
        stop.set()
        target.undeploy(deployment)
    assert not server_processes(deployment["pid"])

    failures = [r for r in results if r != 200]
    assert results and not failures, f"{len(failures)} of {len(results)}: {failures[:5]}"
    rows = scaling_rows(server_dir)
    targets = [(int(r["from_replicas"]), int(r["to_replicas"])) for r in rows
               if r["event"] == "target"]
    assert targets[0] == (0, 1)  # the start
    assert any(after > before for before, after in targets[1:]), rows
    assert targets[-1][1] == 1 and targets[-1][0] > 1, rows  # the scale-in
    assert any("above the 25% target" in r["reason"] for r in rows)
    assert any("drained and stopped" in r["reason"] for r in rows)
    log = Path(deployment["log_path"]).read_text("utf-8")
    assert "exited with status" not in log and "ignored SIGTERM" not in log
