"""The fast harvest path (Arrow records, streamed ``requests``, partial-sort percentiles)
gives exactly what the previous pandas algorithms gave. The previous code is kept here,
verbatim, as the reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from caio_operators import storage
from caio_operators.results import readers, stats
from caio_operators.results import schema as sc
from caio_operators.results.consolidate import build_tables
from caio_operators.results.harvest import harvest_run
from caio_operators.results.series import replica_name
from caio_operators.results.store import parquet_bytes
from caio_operators.results.warehouse import DuckDBWarehouse, run_frames_as_arrow

# --- the previous implementations ----------------------------------------------------------


def old_percentiles(values, qs):
    arr = np.sort(np.asarray(values, dtype=float))
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return {float(q): math.nan for q in qs}
    return {float(q): float(arr[stats.nearest_rank(q, arr.size) - 1]) for q in qs}


def old_binned_percentiles(bins, values, qs, size):
    results = [np.full(size, np.nan) for _ in qs]
    if bins.size == 0:
        return results
    order = np.lexsort((values, bins))
    b, v = bins[order], values[order]
    uniq, start, counts = np.unique(b, return_index=True, return_counts=True)
    for res, q in zip(results, qs, strict=True):
        res[uniq] = v[start + stats.nearest_rank(q, counts) - 1]
    return results


def old_requests_table(run_id, client, server):
    def clean(df):
        if df.empty:
            return df
        out = df[df["ts"].notna()]
        return out.assign(ok=out["ok"].fillna(False).astype(bool))

    def utc(epoch_s):
        micros = np.round(np.asarray(epoch_s, dtype=float) * 1e6).astype("int64")
        return pd.to_datetime(micros, unit="us", utc=True)

    def nonempty_or_null(col):
        col = col.astype("str")
        return col.where(col.str.len() > 0)

    parts = []
    for source, df, origin in (("client", clean(client), "worker"),
                               ("server", clean(server), "replica")):
        if df.empty:
            continue
        origins = df[origin].astype("str")
        if source == "server":
            origins = origins.map(replica_name, na_action="ignore")
        parts.append(pd.DataFrame({
            "run_id": run_id, "source": source, "ts": utc(df["ts"]),
            "latency_ms": df["latency_ms"].to_numpy(dtype=float, na_value=np.nan),
            "ok": df["ok"].to_numpy(dtype=bool),
            "status_code": df["status_code"].astype("Int32").to_numpy(),
            "signature": df["signature"].astype("str").to_numpy(),
            "origin": origins.to_numpy(),
            "error": nonempty_or_null(df["error"]).to_numpy(),
        }))
    if not parts:
        return sc.empty_frame("requests")
    return sc.conform("requests", pd.concat(parts, ignore_index=True))


# --- literal datasets ----------------------------------------------------------------------

def odd_client() -> pd.DataFrame:
    """Null start time, missing ok, empty and quoted errors, a null worker."""
    return pd.DataFrame({
        "ts": [10.25, None, 11.5, 12.000001, 12.75],
        "latency_ms": [3.5, 1.0, None, 2.25, 8.0],
        "ok": pd.array([True, True, None, False, True], dtype="boolean"),
        "status_code": pd.array([200, 200, None, 503, 200], dtype="Int64"),
        "signature": ["serving_default", "serving_default", "", "serving_preprocess",
                      "serving_default"],
        "worker": ["host-1", "host-1", None, "host-2", "host-2"],
        "bytes": [1, 1, 0, 0, 1],
        "error": ["", "", "ReadTimeout: read, timed out", 'HTTP 503: {"error": "busy"}', ""],
    })


def odd_server() -> pd.DataFrame:
    """Numeric replica ids and a label that is already a name."""
    return pd.DataFrame({
        "ts": [10.26, 11.0, 12.8], "latency_ms": [3.0, 4.0, 7.5], "ok": [True, False, True],
        "status_code": [200, 500, 200], "signature": ["serving_default"] * 3,
        "replica": ["0", "1", "gpu-a"], "instances": [1, 1, 1], "error": ["", "boom", ""],
    })


def assert_same_requests(new: pd.DataFrame, old: pd.DataFrame) -> None:
    sc.validate("requests", new)
    pd.testing.assert_frame_equal(new, old)


# --- tests ---------------------------------------------------------------------------------

def test_requests_equal_the_previous_code_on_the_hand_written_run(small_run, meta):
    raw = readers.read_run_inputs(small_run)
    new = build_tables(meta, raw.client, raw.server, raw.samples,
                       raw.locust_history)["requests"]
    assert_same_requests(new, old_requests_table("run-1", raw.client, raw.server))
    # the Arrow readers' records give the same rows as the pandas readers'
    arrow = readers.read_run_inputs(small_run, records="arrow")
    again = build_tables(meta, arrow.client, arrow.server, arrow.samples,
                         arrow.locust_history)
    assert_same_requests(again["requests"], new)
    pd.testing.assert_frame_equal(again["timeseries"],
                                  build_tables(meta, raw.client, raw.server, raw.samples,
                                               raw.locust_history)["timeseries"])


def test_requests_equal_the_previous_code_on_odd_records(meta):
    empty = pd.DataFrame({"ts": [], "latency_ms": [], "ok": []})
    # the load started before these records (harvest drops server records from before it)
    tables = build_tables({**meta, "started_at": 10.0}, odd_client(), odd_server(), empty,
                          pd.DataFrame())
    new = tables["requests"]
    assert_same_requests(new, old_requests_table("run-1", odd_client(), odd_server()))
    assert new["origin"].tolist()[-3:] == ["replica-0", "replica-1", "gpu-a"]
    assert new["error"].isna().tolist() == [True, False, False, True, True, False, True]


def test_streamed_requests_match_the_frame_in_parquet_and_duckdb(small_run, meta, tmp_path):
    raw = readers.read_run_inputs(small_run, records="arrow")
    tables = build_tables(meta, raw.client, raw.server, raw.samples, raw.locust_history,
                          batched_requests=True)
    batched = tables["requests"]
    assert isinstance(batched, sc.BatchedTable) and len(batched) == 12
    frame = build_tables(meta, raw.client, raw.server, raw.samples,
                         raw.locust_history)["requests"]
    path = tmp_path / "requests.parquet"
    path.write_bytes(parquet_bytes("requests", batched))
    table = pq.read_table(path)
    assert table.schema.equals(sc.arrow_schema("requests"))
    pd.testing.assert_frame_equal(sc.conform("requests", table.to_pandas()), frame)
    wh = DuckDBWarehouse(tmp_path / "w.duckdb")
    assert wh.replace_run(tables, "run-1")["requests"] == 12
    back = wh.read_run("run-1")["requests"]
    key = ["source", "ts", "origin"]
    pd.testing.assert_frame_equal(back.sort_values(key, ignore_index=True),
                                  frame.sort_values(key, ignore_index=True))


def test_batched_requests_convert_to_the_same_arrow_table_for_bigquery(small_run, meta):
    raw = readers.read_run_inputs(small_run, records="arrow")
    batched = build_tables(meta, raw.client, raw.server, raw.samples, raw.locust_history,
                           batched_requests=True)
    frames = build_tables(meta, raw.client, raw.server, raw.samples, raw.locust_history)
    arrow = run_frames_as_arrow(batched, "run-1")  # what BigQuery loads: whole tables
    assert arrow["requests"].equals(sc.to_arrow("requests", frames["requests"]))
    streamed = run_frames_as_arrow(batched, "run-1", stream=True)["requests"]
    assert streamed.read_all().equals(arrow["requests"])


def test_harvest_run_streams_the_same_rows_as_the_frames(small_run, meta, warehouse_uri):
    out = harvest_run(small_run, meta, warehouse_uri)
    stored = pq.read_table(storage.local_path(out["tables"]["requests"])).to_pandas()
    raw = readers.read_run_inputs(small_run)
    expected = old_requests_table("run-1", raw.client, raw.server)
    pd.testing.assert_frame_equal(sc.conform("requests", stored), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partial_sort_percentiles_equal_full_sort(seed):
    rng = np.random.default_rng(seed)
    values = np.round(rng.lognormal(3, 1, 5000), 1)  # rounded: many ties
    values[rng.random(5000) < 0.01] = np.nan
    qs = (1, 50, 90, 95, 99, 99.9, 100)
    assert stats.percentiles(values, qs) == old_percentiles(values, qs)
    assert stats.percentiles([7.0], qs) == old_percentiles([7.0], qs)
    bins = np.sort(rng.integers(0, 40, 5000))[rng.permutation(5000)] // 2
    good = ~np.isnan(values)
    for new, old in zip(stats._binned_percentiles(bins[good], values[good], (50, 95, 99), 25),
                        old_binned_percentiles(bins[good], values[good], (50, 95, 99), 25),
                        strict=True):
        np.testing.assert_array_equal(new, old)


def test_binned_percentiles_with_literal_numbers():
    bins = np.array([2, 0, 2, 0, 2, 0, 0])
    values = np.array([5.0, 4.0, 1.0, 3.0, 3.0, 2.0, 1.0])
    p50, p99 = stats._binned_percentiles(bins, values, (50, 99), 4)
    np.testing.assert_array_equal(p50, [2.0, np.nan, 3.0, np.nan])
    np.testing.assert_array_equal(p99, [4.0, np.nan, 5.0, np.nan])
