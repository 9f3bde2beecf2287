"""Store one run's tables: a Parquet file each in the bucket, the run's rows in the warehouse.

``RunStore`` starts on the ``requests`` table (the bulk: every record) while the other
tables are still being built: one thread makes each batch once, writes it to the Parquet
file in memory and hands it to the warehouse's insert, which runs in another thread
inside an open transaction (``Warehouse.replacing``). ``finish`` adds the built tables,
stores every Parquet file, then lets the warehouse commit. ``bench/harvest.py`` measures it.
"""

from __future__ import annotations

import io
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from caio_operators import storage
from caio_operators.layout import RunLayout
from caio_operators.results import schema as sc
from caio_operators.results.warehouse import open_warehouse


def parquet_bytes(table: str, frame: pd.DataFrame | sc.BatchedTable) -> bytes:
    """``frame`` as a Parquet file with exactly the schema of ``table`` (zstd); a
    ``BatchedTable`` is written batch by batch (one row group each)."""
    buffer = io.BytesIO()
    if isinstance(frame, sc.BatchedTable):
        with pq.ParquetWriter(buffer, sc.arrow_schema(table), compression="zstd") as writer:
            for batch in frame.batches():
                writer.write_batch(batch)
    else:
        pq.write_table(sc.to_arrow(table, frame), buffer, compression="zstd")
    return buffer.getvalue()


def write_tables(layout: RunLayout, tables: Mapping[str, pd.DataFrame | sc.BatchedTable]
                 ) -> dict[str, str]:
    """Write each table to ``layout.table_uri(name)`` atomically; return the URIs."""
    return {name: storage.write_bytes(layout.table_uri(name), parquet_bytes(name, frame))
            for name, frame in tables.items()}


class _Handoff:
    """One thread's items to another, one at a time; ``closed`` when the reader stopped
    (a writer then drops its items instead of waiting for ever)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.closed = threading.Event()

    def put(self, item: Any) -> None:
        while not self.closed.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self) -> Any:
        """The next item; an exception put in is raised here."""
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


_END = object()


class RunStore:
    """The Parquet files and the warehouse rows of one run, all stored or none.

    Use it as a context manager: ``start(requests)``, build the other tables, then
    ``finish(tables)``; a block that raises before ``finish`` returns stores nothing (the
    warehouse rolls back, no Parquet file is written). ``finish`` stores every Parquet file
    before the warehouse commits: a bucket that cannot take them (full, read-only) rolls
    the warehouse back (a DuckDB file this made is removed) and is raised; a warehouse
    that fails is raised once the Parquet files are stored (they are the run's record;
    harvesting again fills the warehouse).
    Memory holds the ``requests`` Parquet bytes and a couple of batches.
    """

    def __init__(self, layout: RunLayout, warehouse_uri: str, **warehouse_options: Any):
        self.layout = layout
        self.warehouse_uri = warehouse_uri
        self.warehouse_options = warehouse_options
        self._batches = _Handoff()  # requests batches: Parquet thread -> warehouse thread
        self._rest = _Handoff()  # the other tables, then _END once the files are stored
        self._cancel = threading.Event()
        self._requests: dict[str, Any] = {}  # the Parquet thread's bytes or error
        self._warehouse: dict[str, Any] = {}  # the warehouse thread's counts or error
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        if error is not None:
            self._stop(error)

    def start(self, requests: sc.BatchedTable) -> None:
        """Begin on ``requests``: its Parquet bytes and its warehouse insert, in threads."""
        run_id = self.layout.run_id
        self._threads = [
            threading.Thread(target=self._write_requests, args=(requests,),
                             name=f"parquet-{run_id}", daemon=True),
            threading.Thread(target=self._load_warehouse, args=(requests,),
                             name=f"warehouse-{run_id}", daemon=True)]
        for thread in self._threads:
            thread.start()

    def finish(self, tables: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, int], float]:
        """Add ``tables`` (the run's others), store every Parquet file, commit the
        warehouse; return the URIs (``requests`` included), the warehouse's row counts and
        when (``time.perf_counter``) the Parquet files were stored."""
        try:
            self._rest.put(tables)  # the warehouse inserts them while their files are made
            files = {name: parquet_bytes(name, frame) for name, frame in tables.items()}
            self._threads[0].join()
            if "error" in self._requests:
                raise self._requests["error"]
            files["requests"] = self._requests["bytes"]
            uris = {name: storage.write_bytes(self.layout.table_uri(name), data)
                    for name, data in files.items()}
        except BaseException as exc:
            self._stop(exc)
            raise
        stored_at = time.perf_counter()
        self._rest.put(_END)  # the files are stored: the warehouse may commit
        self._threads[1].join()
        if "error" in self._warehouse:
            raise self._warehouse["error"]
        return uris, self._warehouse["counts"], stored_at

    def _stop(self, error: BaseException) -> None:
        """Nothing more is stored: the warehouse rolls back, the threads end (idempotent:
        ``finish`` and the block's end may both call it)."""
        self._cancel.set()
        self._rest.put(error)
        for thread in self._threads:
            thread.join()

    def _write_requests(self, requests: sc.BatchedTable) -> None:
        def tee() -> Iterator[Any]:
            for batch in requests.batches():
                if self._cancel.is_set():
                    raise RuntimeError("the run's store was stopped")
                yield batch
                self._batches.put(batch)

        try:
            self._requests["bytes"] = parquet_bytes("requests", sc.BatchedTable(
                "requests", requests.run_id, requests.num_rows, tee))
            self._batches.put(_END)
        except BaseException as exc:  # raised by finish, and in the warehouse's stream
            self._requests["error"] = exc
            self._batches.put(exc)

    def _load_warehouse(self, requests: sc.BatchedTable) -> None:
        read = False

        def stream() -> Iterator[Any]:
            # one pass only: a second reader would wait on a queue nobody fills
            nonlocal read
            if read:
                raise RuntimeError("the requests stream was read already: a warehouse must "
                                   "read a BatchedTable once")
            read = True
            while (batch := self._batches.get()) is not _END:
                yield batch

        try:
            warehouse = open_warehouse(self.warehouse_uri, **self.warehouse_options)
            with warehouse.replacing(self.layout.run_id) as load:
                counts = {"requests": load("requests", sc.BatchedTable(
                    "requests", requests.run_id, requests.num_rows, stream))}
                for name, frame in self._rest.get().items():
                    counts[name] = load(name, frame)
                self._rest.get()  # _END once the Parquet files are stored, else the error
            self._warehouse["counts"] = counts
        except BaseException as exc:  # raised by finish once the Parquet files are stored
            self._warehouse["error"] = exc
        finally:
            self._batches.closed.set()
            self._rest.closed.set()
