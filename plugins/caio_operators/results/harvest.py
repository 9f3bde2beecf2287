"""Harvest one run: raw files in the bucket -> Parquet tables in the bucket + warehouse rows.

Idempotent: the Parquet files are overwritten atomically and the warehouse replaces the
run's rows in one transaction, so harvesting twice leaves exactly one copy.

Memory stays bounded by the raw records: they are read as Arrow tables (text as
dictionaries) and the ``requests`` table is streamed, a million rows at a time, into the
Parquet file and the warehouse, each batch made once for both, while the other tables are
built (``store.RunStore``; ``bench/harvest.py`` measures it).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from caio_operators import storage
from caio_operators.layout import RunLayout
from caio_operators.metrics import host as hostload
from caio_operators.results import gpu, hdr, peak
from caio_operators.results import schema as sc
from caio_operators.results.consolidate import requests_table, run_records, summary_tables
from caio_operators.results.histogram_tables import apply_histograms
from caio_operators.results.readers import read_run_inputs
from caio_operators.results.sampled import apply_histogram_counts
from caio_operators.results.scaling import read_scaling, scaling_timeseries
from caio_operators.results.store import RunStore

log = logging.getLogger(__name__)

#: runs-table figures returned by harvest_run (small enough for XCom)
KEY_FIGURES = ("status", "reason", "requests", "failures", "error_rate", "throughput_rps",
               "p50_ms", "p95_ms", "p99_ms", "server_p50_ms", "peak_cpu_pct", "duration_s",
               "max_worker_cpu_pct", "generator_saturated", "max_sustainable_rps",
               "host_other_cpu_pct", "overlapping_runs", "fingerprint", "peak_gpu_pct")


def use_jemalloc() -> str:
    """Arrow's memory from jemalloc from now on in this process, where pyarrow has it; the
    pool's name. Harvest frees and refills gigabytes: with pyarrow's default (mimalloc)
    the kernel's page faults cost 4-5 CPU-s for 10 M + 10 M records and the peak is
    2.0 GB, with jemalloc 2-3 CPU-s and 1.8 GB (bench/README.md). Buffers keep the pool
    they came from, so switching while others are alive is safe."""
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without it
        return pa.default_memory_pool().backend_name
    pa.set_memory_pool(pool)
    return pool.backend_name


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


def _with_other_inputs(layout: RunLayout, tables: dict[str, pd.DataFrame], skipped: list[str],
                       histograms: list[hdr.HistogramRecord], interval_s: float,
                       extra_timeseries: pd.DataFrame | None, problems: Sequence[str]
                       ) -> dict[str, pd.DataFrame]:
    """``runs`` and ``timeseries`` completed with the run's other inputs (``harvest_run``
    says which), and ``problems`` plus those they show in the run's status."""
    # when the workers wrote histograms, client latency percentiles come from them
    tables = apply_histograms(tables, histograms, interval_s)
    sample = record_sample(layout)
    if sample < 1.0:
        if histograms:  # the raw records are a sample: counts come from the histograms
            tables = apply_histogram_counts(tables, histograms, interval_s)
        else:
            problems = [*problems, f"raw records are a {sample:.0%} sample and the workers "
                                   "wrote no histograms: counts and rates cover the sample only"]
    host = read_host_file(layout, skipped)
    if host is not None:
        tables["runs"] = sc.conform("runs", tables["runs"].assign(**hostload.host_columns(host)))
        tables["timeseries"] = sc.conform("timeseries", pd.concat(
            [tables["timeseries"], hostload.host_timeseries(layout.run_id, host, interval_s)],
            ignore_index=True))
        problems = [*problems, *hostload.host_problems(host)]
    gpu_rows = gpu.gpu_timeseries(layout.run_id, gpu.read_gpu_samples(
        gpu.gpu_samples_dir(layout), skipped), interval_s)
    if len(gpu_rows):
        tables["timeseries"] = sc.conform("timeseries", pd.concat(
            [tables["timeseries"], gpu_rows], ignore_index=True))
    tables["timeseries"] = with_target_replicas(layout, tables["timeseries"], interval_s,
                                                skipped)
    search = peak.read_search(layout, skipped)
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
    return tables


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
    ``build`` (the other tables, while the records are stored: ``store.RunStore``),
    ``parquet`` (from then until every Parquet file is stored) and ``warehouse`` (from then
    until the warehouse committed).
    """
    if meta.get("run_id") != layout.run_id:
        raise ValueError(f"meta run_id {meta.get('run_id')!r} does not match the layout's "
                         f"run_id {layout.run_id!r}")
    use_jemalloc()
    t0 = time.perf_counter()
    raw = read_run_inputs(layout, records="arrow")
    histograms = read_histograms(layout, raw.skipped)
    t_read = time.perf_counter()
    records = run_records(meta, raw.client, raw.server)
    # records shares the raw numbers and recodes the text: the raw tables' text columns
    # would be a second copy through the build (the memory peak)
    raw.client = raw.server = records.client.slice(0, 0)
    # the records are stored while the other tables are built (two cores kept busy)
    with RunStore(layout, warehouse_uri, **warehouse_options) as store:
        store.start(requests_table(records))
        tables = summary_tables(meta, records, raw.samples, raw.locust_history, interval_s,
                                worker_cpu=raw.worker_cpu)
        tables = _with_other_inputs(layout, tables, raw.skipped, histograms, interval_s,
                                    extra_timeseries, problems)
        t_build = time.perf_counter()
        uris, counts, t_parquet = store.finish(tables)
    t_done = time.perf_counter()
    run = tables["runs"].iloc[0]
    result = {
        "run_id": layout.run_id,
        "counts": {name: counts[name] for name in sc.TABLES},
        "tables": {name: uris[name] for name in sc.TABLES},
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
