"""The one schema: columns, types, casting and its markdown documentation."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from caio_operators.results import schema as sc

RUNS_COLUMNS = [
    "run_id", "dag_id", "status", "reason", "target", "protocol", "model_name",
    "model_version", "model_source", "weights", "signature", "load_shape", "users", "workers",
    "replicas", "started_at", "ended_at", "duration_s", "requests", "failures", "error_rate",
    "throughput_rps", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms", "mean_ms",
    "server_p50_ms", "server_p99_ms", "peak_cpu_pct", "peak_memory_mb", "provenance",
    "params", "harvested_at", "max_worker_cpu_pct", "generator_saturated",
    "max_sustainable_rps", "slo_ms", "slo_percentile", "peak_search", "fingerprint",
    "benchmark", "host_cpu_pct", "host_other_cpu_pct", "overlapping_runs", "monitoring_coverage",
    "peak_gpu_pct",
    "goodput_rps",
]


def test_tables_and_columns():
    assert list(sc.TABLES) == ["runs", "timeseries", "requests"]
    assert sc.columns("runs") == RUNS_COLUMNS
    assert sc.columns("timeseries") == ["run_id", "ts", "metric", "dimension", "value"]
    assert sc.columns("requests") == ["run_id", "source", "ts", "latency_ms", "ok",
                                      "status_code", "signature", "origin", "error"]
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        sc.columns("nope")


def test_arrow_types_and_descriptions():
    runs = sc.arrow_schema("runs")
    assert runs.field("started_at").type == pa.timestamp("us", tz="UTC")
    assert runs.field("requests").type == pa.int64()
    assert runs.field("p95_ms").type == pa.float64()
    assert runs.field("provenance").type == pa.string()
    assert sc.arrow_schema("requests").field("ok").type == pa.bool_()
    assert all(f.metadata[b"description"] for f in runs)


def test_sql_types_for_both_dialects():
    assert sc.sql_types("timeseries", "duckdb") == {
        "run_id": "VARCHAR", "ts": "TIMESTAMPTZ", "metric": "VARCHAR", "dimension": "VARCHAR",
        "value": "DOUBLE"}
    assert sc.sql_types("requests", "bigquery")["status_code"] == "INT64"
    assert sc.sql_types("runs", "bigquery")["started_at"] == "TIMESTAMP"
    with pytest.raises(ValueError, match="dialect"):
        sc.sql_types("runs", "mysql")


def test_conform_casts_orders_and_drops_extras():
    df = pd.DataFrame({"value": [1, 2], "extra": ["x", "y"], "dimension": ["all", "all"],
                       "metric": ["users", "users"], "ts": [1.5e9, 1.5e9 + 1],
                       "run_id": ["r", "r"]})
    df["ts"] = pd.to_datetime(df["ts"], unit="s")  # naive: read as UTC
    out = sc.conform("timeseries", df)
    sc.validate("timeseries", out)
    assert out["value"].tolist() == [1.0, 2.0]
    assert str(out["ts"].iloc[0]) == "2017-07-14 02:40:00+00:00"


def test_conform_names_missing_columns():
    with pytest.raises(ValueError, match=r"missing columns \['value'\]"):
        sc.conform("timeseries", pd.DataFrame(columns=["run_id", "ts", "metric", "dimension"]))


def test_conform_refuses_numbers_as_timestamps():
    frame = pd.DataFrame({"run_id": ["r"], "ts": [1.5e9], "metric": ["users"],
                          "dimension": ["all"], "value": [1.0]})
    with pytest.raises(TypeError, match="unit='s'"):
        sc.conform("timeseries", frame)


def test_empty_frames_validate_and_convert_to_arrow():
    for table in sc.TABLES:
        frame = sc.empty_frame(table)
        sc.validate(table, frame)
        assert sc.to_arrow(table, frame).schema.equals(sc.arrow_schema(table))


def test_validate_reports_wrong_dtypes():
    frame = sc.empty_frame("timeseries").astype({"value": "int64"})
    with pytest.raises(ValueError, match="wrong dtypes"):
        sc.validate("timeseries", frame)


def test_schema_markdown_documents_every_column_and_metric():
    text = sc.schema_markdown()
    for table in sc.TABLES:
        assert f"### `{table}`" in text
        for column in sc.columns(table):
            assert f"| `{column}` |" in text
    for metric in (sc.CLIENT_LATENCY_P95_MS, sc.CPU_UTILIZATION_PCT, sc.GPU_UTILIZATION_PCT,
                   sc.USERS, sc.REPLICAS, sc.MEMORY_MB):
        assert f"| `{metric}` |" in text
    assert "TIMESTAMPTZ / TIMESTAMP" in text
    # every table row has exactly its three cells: pipes in descriptions are escaped
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert all(line.replace("\\|", "").count("|") in (3, 4) for line in rows)
    assert "'success' \\| 'failed' \\| 'degraded'" in text
