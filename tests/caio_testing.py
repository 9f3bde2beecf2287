"""Helpers shared by the test folders (conftest.py holds only fixtures)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import sys
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
# CAIO_TEST_INSTALLED=1 (make test-compat): test the installed wheel, not plugins/.
INSTALLED = os.environ.get("CAIO_TEST_INSTALLED") == "1"
if not INSTALLED and str(REPO / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO / "plugins"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def dag_bag(folder: Path):
    """Airflow's DagBag of ``folder`` (airflow.dag_processing.dagbag from Airflow 3.2,
    airflow.models.dagbag before: make test-compat runs the oldest supported Airflow)."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ModuleNotFoundError:
        from airflow.models.dagbag import DagBag
    return DagBag(dag_folder=str(folder))


# Every process the tests start inherits this mark, so the leak check below finds exactly
# ours, including orphans re-parented to init, and nothing else running on the machine.
SESSION_MARK = "CAIO_TEST_SESSION"
os.environ[SESSION_MARK] = uuid.uuid4().hex

# Command-line fragments of every process this project starts.
OUR_PROCESSES = ("caio_operators.targets.local_server", "locustfile.py", "caio-serve")


def our_processes() -> list:
    """Live servers and Locust processes started by this test session."""
    import psutil

    mark = os.environ[SESSION_MARK]
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if not any(marker in cmd for marker in OUR_PROCESSES):
                continue
            if proc.environ().get(SESSION_MARK) == mark:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


LOCUST_DIR = REPO / "locust"


def load_locust_module(name: str) -> ModuleType:
    """Import ``locust/<name>.py`` by path (the folder name would clash with the locust
    package); these helper modules never import locust or gevent."""
    if name in sys.modules:
        return sys.modules[name]
    sys.path.insert(0, str(LOCUST_DIR))  # for their sibling imports
    try:
        spec = importlib.util.spec_from_file_location(name, LOCUST_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(LOCUST_DIR))
    return module


#: A peak search report as the Locust master writes it (locust/caio_peak.search_report),
#: three steps: 40 req/s passes, 80 fails, 60 passes; done at 60.
PEAK_SEARCH_REPORT = {
    "status": "converged", "reason": "converged: 60/s passes, 80/s fails",
    "max_sustainable_rps": 60.0, "slo_ms": 100.0, "slo_percentile": 99.0,
    "max_error_rate": 0.01, "precision": 0.5, "window_s": 2.0, "stable_windows": 3,
    "tolerance": 0.1, "min_requests": 50,
    "steps": [
        {"step": 0, "rate": 40.0, "latency_ms": 20.0, "error_rate": 0.0,
         "throughput_rps": 40.0, "windows": 3, "passed": True,
         "reason": "stable and within the SLO"},
        {"step": 1, "rate": 80.0, "latency_ms": 900.0, "error_rate": 0.05,
         "throughput_rps": 70.0, "windows": 3, "passed": False,
         "reason": "error rate 5.00% > 1.00% in 3 consecutive windows"},
        {"step": 2, "rate": 60.0, "latency_ms": 30.0, "error_rate": 0.0,
         "throughput_rps": 60.0, "windows": 3, "passed": True,
         "reason": "stable and within the SLO"},
    ],
    "windows": [
        {"step": step, "seq": seq, "ts": 1_700_000_000.0 + 8 * step + 2 * seq,
         "elapsed_s": 2.0, "rate": rate, "throughput_rps": tput, "latency_ms": lat,
         "requests": int(2 * rate), "errors": errors, "workers": 2, "action": "hold",
         "reason": ""}
        for step, rate, tput, lat, errors in ((0, 40.0, 40.0, 20.0, 0), (1, 80.0, 70.0, 900.0, 8),
                                              (2, 60.0, 60.0, 30.0, 0))
        for seq in (1, 2, 3)
    ],
}


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threaded test HTTP server that takes a burst of new connections (an overloaded or
    stalled server piles them up) and stays quiet about clients that hang up mid-request
    (expected at the end of a load)."""

    request_queue_size = 512
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def measured(status: str, reason: str) -> bool:
    """The run measured its target: ``success``, or ``degraded`` only because its machine
    was shared during the load (metrics/host.py). Other people's processes on a test
    machine are outside a test's control; the rule itself is tested with a CPU burner
    and literal figures in tests/results/test_host.py."""
    if status == "success":
        return True
    parts = [p.strip() for p in (reason or "").split("; ")]
    return status == "degraded" and all(p.startswith("shared machine:") for p in parts)


def chart_data(page: str) -> list[dict]:
    """The chart specs a report page embeds (analysis/charts.py's spec_json, drawn ones)."""
    found = re.search(r"<script type='application/json' id='caio-chart-data'>(.*?)</script>",
                      page, re.S)
    assert found, "the page holds no chart data"
    return json.loads(found.group(1))


def doc_commands(page: str, marker: str) -> list[list[str]]:
    """The commands between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in
    ``docs/<page>``, continuation lines joined, as argv lists: tests run a doc's commands as
    they are written, so the two cannot drift."""
    text = (REPO / "docs" / page).read_text()
    block = re.search(rf"<!-- {marker}:start -->\n```bash\n(.*?)```\n<!-- {marker}:end -->",
                      text, re.S)
    assert block, f"docs/{page} lost its {marker} markers"
    text = block.group(1).replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.strip()]
