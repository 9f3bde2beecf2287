"""Harvest one run: raw files in the bucket -> Parquet tables in the bucket + warehouse rows.

Idempotent: the Parquet files are overwritten atomically and the warehouse replaces the
run's rows in one transaction, so harvesting twice leaves exactly one copy.

Memory stays bounded by the raw records: they are read as Arrow tables (text as
dictionaries) and the ``requests`` table is streamed, a million rows at a time, into the
Parquet file and the warehouse, each batch made once for both (``store_tables``;
``bench/harvest.py`` measures it).
"""

from __future__ import annotations

import io
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from caio_operators import storage
from caio_operators.layout import RunLayout
from caio_operators.metrics import host as hostload
from caio_operators.results import gpu, hdr, peak
from caio_operators.results import schema as sc
from caio_operators.results.consolidate import build_tables
from caio_operators.results.histogram_tables import apply_histograms
from caio_operators.results.readers import read_run_inputs
from caio_operators.results.sampled import apply_histogram_counts
from caio_operators.results.scaling import read_scaling, scaling_timeseries
from caio_operators.results.warehouse import open_warehouse

log = logging.getLogger(__name__)

#: runs-table figures returned by harvest_run (small enough for XCom)
KEY_FIGURES = ("status", "reason", "requests", "failures", "error_rate", "throughput_rps",
               "p50_ms", "p95_ms", "p99_ms", "server_p50_ms", "peak_cpu_pct", "duration_s",
               "max_worker_cpu_pct", "generator_saturated", "max_sustainable_rps",
               "host_other_cpu_pct", "overlapping_runs", "fingerprint", "peak_gpu_pct")


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
    """Batches from the Parquet thread to the warehouse's insert, one at a time; the
    stream ends (or raises the thread's error) once the Parquet files are stored."""

    _END = object()

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.closed = threading.Event()  # the warehouse stopped reading
        self.read = False

    def put(self, item: Any) -> None:
        while not self.closed.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def end(self, error: BaseException | None = None) -> None:
        self.put(self._END if error is None else error)

    def batches(self) -> Any:
        # one pass only (a BatchedTable's batches() may be called again; this one cannot
        # be): a second reader would wait on a queue nobody fills
        if self.read:
            raise RuntimeError("the requests stream was read already: a warehouse's "
                               "replace_run must read a BatchedTable once")
        self.read = True
        while True:
            item = self.queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def store_tables(layout: RunLayout, tables: Mapping[str, Any], warehouse_uri: str,
                 **warehouse_options: Any) -> tuple[dict[str, str], dict[str, int], float]:
    """Write the tables as Parquet (``write_tables``) and replace the run's rows in the
    warehouse (``open_warehouse``, ``ensure_schema``, ``replace_run``) with them; return
    the URIs, the warehouse's row counts and the seconds until the Parquet files were
    stored.

    The other tables' Parquet files are stored first, before the warehouse is opened (a
    full or read-only bucket fails there, and nothing reaches the warehouse). A
    ``BatchedTable`` ``requests`` is then made once for both: a thread makes each batch,
    writes it to the Parquet file and hands it to the warehouse's insert, which runs
    meanwhile (DuckDB and the Parquet writer each get a core, and memory holds a couple of
    batches). The warehouse's stream ends only after ``requests.parquet`` is stored, so its
    transaction commits after every Parquet file, as when the two ran one after the other:
    a failure to store ``requests.parquet`` rolls the warehouse back and is raised (only a
    warehouse file that did not exist yet is left behind, empty of this run); a warehouse
    failure is raised once the Parquet files are stored."""
    t0 = time.perf_counter()
    requests = tables.get("requests")
    if not isinstance(requests, sc.BatchedTable):
        uris = write_tables(layout, tables)
        parquet_s = time.perf_counter() - t0
        warehouse = open_warehouse(warehouse_uri, **warehouse_options)
        warehouse.ensure_schema()
        return uris, warehouse.replace_run(tables, layout.run_id), parquet_s
    first = write_tables(layout, {n: f for n, f in tables.items() if n != "requests"})
    handoff = _Handoff()
    done: dict[str, Any] = {}

    def tee() -> Any:
        for batch in requests.batches():
            yield batch
            handoff.put(batch)

    def write() -> None:
        try:
            done["uris"] = write_tables(layout, {"requests": sc.BatchedTable(
                "requests", requests.run_id, requests.num_rows, tee)})
            done["seconds"] = time.perf_counter() - t0
            handoff.end()
        except BaseException as exc:  # handed to the warehouse's stream and raised below
            done["error"] = exc
            handoff.end(exc)

    thread = threading.Thread(target=write, name=f"parquet-{layout.run_id}", daemon=True)
    thread.start()
    try:
        warehouse = open_warehouse(warehouse_uri, **warehouse_options)
        warehouse.ensure_schema()
        streamed: dict[str, Any] = {**tables, "requests": sc.BatchedTable(
            "requests", requests.run_id, requests.num_rows, handoff.batches)}
        counts = warehouse.replace_run(streamed, layout.run_id)
    except BaseException as exc:
        handoff.closed.set()
        thread.join()
        if "error" in done:
            raise done["error"] from exc
        raise
    handoff.closed.set()
    thread.join()
    if "error" in done:  # a warehouse that read no stream: the Parquet failure still counts
        raise done["error"]
    uris = {**first, **done["uris"]}
    return {name: uris[name] for name in tables}, counts, done["seconds"]


def _plain(value: Any) -> Any:
    """JSON-friendly scalar: NaN/NA -> None, numpy -> Python."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _with_problems(runs: pd.DataFrame, problems: Sequence[str]) -> pd.DataFrame:
    runs = runs.copy()
    note = "; ".join(problems)
    status, reason = runs.at[0, "status"], runs.at[0, "reason"] or ""
    if status == "success":
        runs.at[0, "status"], runs.at[0, "reason"] = "degraded", note
    else:
        runs.at[0, "reason"] = f"{reason!s}; {note}" if reason else note
    return sc.conform("runs", runs)


def read_histograms(layout: RunLayout, skipped: list[str]
                    ) -> list[hdr.HistogramRecord]:
    """The HDR histogram records the workers wrote (all of them do, closed or open loop); a
    file that cannot be read is logged, added to ``skipped`` and left out, like a raw
    record file."""
    records: list[hdr.HistogramRecord] = []
    for uri in storage.list_files(hdr.histograms_dir(layout), ".jsonl"):
        try:
            records += hdr.read_records([uri])
        except (ValueError, storage.StorageError, UnicodeDecodeError) as exc:
            log.warning("skipping unreadable histogram file %s: %s", uri, exc)
            skipped.append(uri)
    return records


def record_sample(layout: RunLayout) -> float:
    """The share of successful requests the workers kept as raw records (the run's test
    config; 1.0 when it says nothing or cannot be read)."""
    try:
        config = json.loads(storage.read_text(layout.config_uri))
        return float(config.get("record_sample", 1.0))
    except (OSError, ValueError, TypeError, AttributeError, storage.StorageError):
        return 1.0


def read_host_file(layout: RunLayout, skipped: list[str]) -> dict[str, Any] | None:
    """The machine's CPU figures of a load run from this machine (``load/host.json``, by
    the local launcher); None when the load ran elsewhere. Unreadable: logged, skipped."""
    uri = storage.join(layout.load_dir, hostload.HOST_FILE)
    if not storage.exists(uri):
        return None
    try:
        host = hostload.read_host(storage.read_text(uri))
    except (OSError, UnicodeDecodeError, storage.StorageError) as exc:
        host = None
        log.warning("cannot read %s: %s", uri, exc)
    if host is None:
        skipped.append(uri)
    return host


def with_target_replicas(layout: RunLayout, timeseries: pd.DataFrame, interval_s: float,
                         skipped: list[str]) -> pd.DataFrame:
    """``timeseries`` plus ``target_replicas`` from the local server's scaling records (up to
    the run's last interval); unchanged without records."""
    records = read_scaling(layout, skipped)
    if records.empty or timeseries.empty:
        return timeseries
    end_s = timeseries["ts"].max().timestamp()
    extra = scaling_timeseries(layout.run_id, records, interval_s, end_s)
    return sc.conform("timeseries", pd.concat([timeseries, extra], ignore_index=True))


def harvest_run(layout: RunLayout, meta: Mapping[str, Any], warehouse_uri: str,
                interval_s: float = sc.DEFAULT_INTERVAL_S, *,
                extra_timeseries: pd.DataFrame | None = None,
                problems: Sequence[str] = (),
                **warehouse_options: Any) -> dict[str, Any]:
    """Read the run's raw files, build the tables, store them as Parquet and in the warehouse.

    ``extra_timeseries``: more ``timeseries`` rows of this run (e.g. from Cloud Monitoring),
    added to those built from the raw files. ``problems``: why the stored data is
    incomplete (e.g. a metrics backend that failed); a successful run becomes ``degraded``
    with them as its reason, a failed or degraded one gets them added to its reason.
    ``warehouse_options`` go to ``open_warehouse`` (``gcp_conn_id``,
    ``impersonation_chain`` for BigQuery).

    When the workers wrote HDR histograms (``<run>/load/histograms``: every worker does;
    older runs and other tools' records may have none), the client latency percentiles (runs
    figures and per-interval series) come from them (``histogram_tables.apply_histograms``). The
    workers' CPU samples (``<run>/load/workers``) flag a saturated load generator
    (``runs.generator_saturated``). A peak search's ``<run>/load/peak/search.json`` gives
    the ``max_sustainable_rps`` columns and ``peak_*`` series (``results/peak.py``). The
    local server's GPU samples (``<run>/server/gpu``) give the ``gpu_*`` series, and the
    finished series ``runs.peak_gpu_pct`` (``results/gpu.py``).

    Returns a small dict: run_id, row counts, table URIs, key figures, skipped files,
    ``latency_source`` ("histograms" or "records") and the seconds spent: ``read``,
    ``build``, ``parquet`` (until the Parquet files are stored) and ``warehouse`` (the rest
    of the warehouse's load, which overlaps the Parquet writing: ``store_tables``).
    """
    if meta.get("run_id") != layout.run_id:
        raise ValueError(f"meta run_id {meta.get('run_id')!r} does not match the layout's "
                         f"run_id {layout.run_id!r}")
    t0 = time.perf_counter()
    raw = read_run_inputs(layout, records="arrow")
    histograms = read_histograms(layout, raw.skipped)
    t_read = time.perf_counter()
    tables = build_tables(meta, raw.client, raw.server, raw.samples, raw.locust_history,
                          interval_s=interval_s, worker_cpu=raw.worker_cpu,
                          batched_requests=True)
    # when the workers wrote histograms, client latency percentiles come from them
    tables = apply_histograms(tables, histograms, interval_s)
    sample = record_sample(layout)
    if sample < 1.0:
        if histograms:  # the raw records are a sample: counts come from the histograms
            tables = apply_histogram_counts(tables, histograms, interval_s)
        else:
            problems = [*problems, f"raw records are a {sample:.0%} sample and the workers "
                                   "wrote no histograms: counts and rates cover the sample only"]
    host = read_host_file(layout, raw.skipped)
    if host is not None:
        tables["runs"] = sc.conform("runs", tables["runs"].assign(**hostload.host_columns(host)))
        tables["timeseries"] = sc.conform("timeseries", pd.concat(
            [tables["timeseries"], hostload.host_timeseries(layout.run_id, host, interval_s)],
            ignore_index=True))
        problems = [*problems, *hostload.host_problems(host)]
    gpu_rows = gpu.gpu_timeseries(layout.run_id, gpu.read_gpu_samples(
        gpu.gpu_samples_dir(layout), raw.skipped), interval_s)
    if len(gpu_rows):
        tables["timeseries"] = sc.conform("timeseries", pd.concat(
            [tables["timeseries"], gpu_rows], ignore_index=True))
    tables["timeseries"] = with_target_replicas(layout, tables["timeseries"], interval_s,
                                                raw.skipped)
    search = peak.read_search(layout, raw.skipped)
    tables = peak.apply_search(tables, search)
    if search is not None and search.get("status") != "converged":
        problems = [*problems, f"the peak search did not converge: {search.get('reason')}"]
    if extra_timeseries is not None and len(extra_timeseries):
        extra = sc.conform("timeseries", extra_timeseries)
        others = set(extra["run_id"]) - {layout.run_id}
        if others:
            raise ValueError(f"extra_timeseries holds rows of other runs {sorted(others)[:5]}, "
                             f"not only {layout.run_id!r}")
        tables["timeseries"] = sc.conform(
            "timeseries", pd.concat([tables["timeseries"], extra], ignore_index=True))
    # local GPU samples or the cloud's accelerator series, whichever the run has
    tables["runs"] = tables["runs"].assign(peak_gpu_pct=gpu.peak_gpu_pct(tables["timeseries"]))
    if problems:
        tables["runs"] = _with_problems(tables["runs"], problems)
    t_build = time.perf_counter()
    uris, counts, parquet_s = store_tables(layout, tables, warehouse_uri,
                                           **warehouse_options)
    t_parquet = t_build + parquet_s
    t_done = time.perf_counter()
    run = tables["runs"].iloc[0]
    result = {
        "run_id": layout.run_id,
        "counts": counts,
        "tables": uris,
        "warehouse": warehouse_uri,
        "skipped_files": list(raw.skipped),
        "latency_source": "histograms" if histograms else "records",
        "figures": {name: _plain(run[name]) for name in KEY_FIGURES},
        "seconds": {"read": round(t_read - t0, 3), "build": round(t_build - t_read, 3),
                    "parquet": round(t_parquet - t_build, 3),
                    "warehouse": round(t_done - t_parquet, 3),
                    "total": round(t_done - t0, 3)},
    }
    log.info("harvested run %s: %s rows in %.2f s (%s skipped files)", layout.run_id,
             counts, t_done - t0, len(raw.skipped))
    return result
