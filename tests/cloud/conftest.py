"""Fixtures for the cloud store tests: a real local GCS emulator and a fake BigQuery client.

``gcs`` starts ``gcp-storage-emulator`` (in memory, on 127.0.0.1 and a free port) once per
session and points gcsfs at it through ``STORAGE_EMULATOR_HOST``, so ``storage.py`` reaches
it through exactly the production code path (``fsspec.core.url_to_fs("gs://...")``).

``FakeBigQuery`` stands in for ``google.cloud.bigquery.Client`` at the client boundary. It
records every call and keeps the tables in an in-memory DuckDB catalogue named after the
project, so DELETEs, loads and SELECTs really change and return rows. It understands only
the GoogleSQL the adapter emits (backticked ``project.dataset.table`` ids, ``@params``,
backslash-escaped strings) and fails loudly on anything else, e.g. a leftover ``$name``.
"""

from __future__ import annotations

import logging
import socket
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from bq_fakes import FakeBigQuery

RESULTS_TESTS = Path(__file__).resolve().parents[1] / "results"
if str(RESULTS_TESTS) not in sys.path:
    sys.path.append(str(RESULTS_TESTS))  # raw_run.py: the hand-written run

EMULATOR_BUCKET = "caio-test"


# --- GCS emulator -------------------------------------------------------------------------------

class _RequestLog(logging.Handler):
    """The emulator logs one line per HTTP request; keep them to assert on."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith('"'):
            self.lines.append(message)


@dataclass
class Emulator:
    host: str
    port: int
    bucket: str
    log: _RequestLog = field(repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def requests(self) -> list[str]:
        """Request lines since the last ``clear()``, e.g. ``POST /upload/... HTTP/1.1``."""
        return [line.split('"')[1] for line in self.log.lines]

    def clear(self) -> None:
        self.log.lines.clear()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _forget_gcsfs_instances() -> None:
    # fsspec caches filesystem instances; one made for another endpoint must not leak in/out
    import gcsfs

    gcsfs.GCSFileSystem.clear_instance_cache()
    gcsfs.core.GCSFileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def gcs():
    """A running in-memory GCS emulator with one bucket; gcsfs talks to it."""
    from gcp_storage_emulator.server import create_server

    port = _free_port()
    emulator_log = logging.getLogger("gcp_storage_emulator")
    handler = _RequestLog()
    saved = (emulator_log.level, emulator_log.propagate)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        # gcsfs >= 2025.x asks the Storage Control API (gRPC, real credentials) for the bucket
        # type before each call; the emulator has no such API. Only read at gcsfs import.
        mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        mp.setenv("NO_GCE_CHECK", "true")  # no metadata-server probe: straight to anonymous
        server = create_server("127.0.0.1", port, in_memory=True, default_bucket=EMULATOR_BUCKET)
        emulator_log.addHandler(handler)
        emulator_log.setLevel(logging.INFO)
        emulator_log.propagate = False
        server.start()
        _forget_gcsfs_instances()
        try:
            yield Emulator("127.0.0.1", port, EMULATOR_BUCKET, handler)
        finally:
            server.stop()
            emulator_log.removeHandler(handler)
            emulator_log.setLevel(saved[0])
            emulator_log.propagate = saved[1]
            _forget_gcsfs_instances()


@pytest.fixture
def gs_bucket(gcs) -> str:
    """A fresh gs:// prefix in the emulator's bucket (buckets are prefixes here too)."""
    return f"gs://{gcs.bucket}/t-{uuid.uuid4().hex[:10]}"


# --- fake BigQuery client ------------------------------------------------------------------------

@pytest.fixture
def fake_bq() -> FakeBigQuery:
    return FakeBigQuery()


@pytest.fixture
def hook_clients(monkeypatch, fake_bq) -> list[dict]:
    """Route the Google provider's ``BigQueryHook.get_client`` to ``fake_bq``.

    The hook itself is real (it reads the Airflow connection, defined here the way
    Composer or a user would: ``AIRFLOW_CONN_<ID>``); each call is recorded.
    """
    from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook

    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
                       '{"conn_type": "google_cloud_platform", "extra": {"project": "other"}}')
    made: list[dict] = []

    def get_client(self, project_id=None, location=None):
        made.append({"gcp_conn_id": self.gcp_conn_id, "impersonation_chain":
                     self.impersonation_chain, "project_id": project_id, "location": location})
        return fake_bq

    monkeypatch.setattr(BigQueryHook, "get_client", get_client)
    return made
