"""Buffered CSV record files of the local server: one whole file per flush.

Files are `<directory>/<prefix>-<seq:06d>.csv`, each with the header, written atomically
(temp file + rename) so that a reader polling the directory never sees half a file.

Server records: ``ts`` is the wall clock when the request was fully read, ``latency_ms``
the time from then until the response was ready (time.perf_counter); health, status and
OpenAPI probes are not recorded. ``model_ms`` is the part of it spent in the model call
that served the request and ``queue_ms`` the part spent waiting for that call (dynamic
batching; 0 without), so ``latency_ms - model_ms - queue_ms`` is the server's own overhead
(JSON, base64, instance arrays, response encoding); both are empty for a failed request.
They come last: readers of older files see them as missing. Samples: ``cpu_percent`` is 100
for one busy core.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from caio_operators import storage

log = logging.getLogger(__name__)

SERVER_RECORD_COLUMNS = (
    "ts", "latency_ms", "ok", "status_code", "signature", "replica", "instances", "error",
    "model_ms", "queue_ms")
SAMPLE_COLUMNS = ("ts", "replica", "pid", "cpu_percent", "rss_mb")


class CsvBatchWriter:
    """Collects rows from any thread; ``flush()`` writes what was collected as one file."""

    def __init__(self, directory: str | Path | None, prefix: str,
                 columns: Sequence[str]) -> None:
        self.directory = Path(directory) if directory else None  # None: rows are dropped
        self.prefix = prefix
        self.columns = tuple(columns)
        self._rows: list[tuple] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, row: tuple) -> None:
        with self._lock:
            self._rows.append(row)

    def flush(self) -> Path | None:
        """Write the rows collected since the last flush; None when there were none."""
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows or self.directory is None:
                return None
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(self.columns)
            writer.writerows(rows)
            path = self.directory / f"{self.prefix}-{self._seq:06d}.csv"
            self._seq += 1
            storage.write_text(str(path), text.getvalue())
            return path

    def start(self, interval_s: float) -> None:
        """Flush every ``interval_s`` seconds from a daemon thread until ``close()``."""
        self._thread = threading.Thread(
            target=self._run, args=(interval_s,), name=f"flush-{self.prefix}", daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.flush()
            except Exception:  # keep serving: this batch is lost, later ones may still land
                log.exception("cannot write %s records to %s", self.prefix, self.directory)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
