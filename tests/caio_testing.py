"""Helpers shared by the test folders (conftest.py holds only fixtures)."""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO / "plugins"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
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
