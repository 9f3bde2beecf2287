"""BigQueryWarehouse against a fake ``bigquery.Client`` (conftest.FakeBigQuery).

The fake records every call (asserted below: DDL shape, SQL text, query parameters, load
configs) and applies them to real in-memory tables, so idempotency and read-back are
checked on rows, not assumed. The analysis's named reads send their own GoogleSQL.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from bq_fakes import DATASET, PROJECT, FakeBigQuery
from google.api_core import exceptions as gexc
from google.cloud import bigquery
from raw_run import META, a_verdict, named_reads_runs, write_small_run

from caio_operators import storage
from caio_operators.analysis.report import analyse_run
from caio_operators.analysis.summary import latest_run_summary
from caio_operators.layout import RunLayout
from caio_operators.results import readers
from caio_operators.results import schema as sc
from caio_operators.results.consolidate import build_tables
from caio_operators.results.harvest import harvest_run
from caio_operators.results.warehouse import WarehouseError, open_warehouse
from caio_operators.results.warehouse.bigquery import (
    BigQueryWarehouse,
    BigQueryWarehouseError,
    parse_uri,
)

URI = f"bigquery://{PROJECT}/{DATASET}"
TABLE_ID = {t: f"{PROJECT}.{DATASET}.{t}" for t in sc.ALL_TABLES}


@pytest.fixture
def tables(bucket):
    raw = readers.read_run_inputs(write_small_run(bucket))
    return build_tables(dict(META), raw.client, raw.server, raw.samples, raw.locust_history)


@pytest.fixture
def wh(fake_bq) -> BigQueryWarehouse:
    return open_warehouse(URI + "?location=EU", client=fake_bq)


def relabel(tables, run_id):
    return {name: frame.assign(run_id=run_id) for name, frame in tables.items()}


def counts(fake: FakeBigQuery, run_id=None):
    return {t: fake.rows(t, run_id) for t in sc.TABLES}


# --- URIs ------------------------------------------------------------------------------------

def test_open_by_uri(fake_bq):
    wh = open_warehouse(URI + "?location=EU", client=fake_bq)
    assert isinstance(wh, BigQueryWarehouse)
    assert (wh.project, wh.dataset, wh.location, wh.uri) == (PROJECT, DATASET, "EU",
                                                             URI + "?location=EU")
    assert parse_uri("bigquery://p-123456/d_1").location is None
    assert fake_bq.calls == []  # opening costs nothing; the client is used lazily


@pytest.mark.parametrize("uri, message", [
    ("bigquery://my-project", "bigquery://project/dataset"),
    ("bigquery:///bench", "bigquery://project/dataset"),
    ("bigquery://My_Project/bench", "not a project id"),
    ("bigquery://my-project/bench`; DROP TABLE x; --", "not a dataset name"),
    ("bigquery://my-project/be-nch", "not a dataset name"),
    ("bigquery://my-project/bench?region=EU", "unknown options"),
    ("bigquery://my-project/bench?location=EU';", "not a BigQuery location"),
])
def test_bad_uris_are_refused(uri, message):
    with pytest.raises(WarehouseError, match=message):
        open_warehouse(uri)


# --- schema ----------------------------------------------------------------------------------

def test_ensure_schema_creates_partitioned_clustered_tables(wh, fake_bq):
    wh.ensure_schema()
    [dataset_call] = fake_bq.named("create_dataset")
    dataset = dataset_call.args["dataset"]
    assert (dataset.project, dataset.dataset_id, dataset.location) == (PROJECT, DATASET, "EU")
    created = {c.args["table"].table_id: c.args["table"] for c in fake_bq.named("create_table")}
    assert set(created) == set(sc.ALL_TABLES)
    for name, table in created.items():
        assert [(f.name, f.field_type, f.mode) for f in table.schema] == [
            (col, type_, "NULLABLE") for col, type_ in sc.sql_types(name, "bigquery").items()]
        assert table.schema[0].description == sc.ALL_TABLES[name][0].description
        assert table.time_partitioning.type_ == bigquery.TimePartitioningType.DAY
        assert table.time_partitioning.field == {"runs": "started_at", "verdicts": "analysed_at",
                                                 "comparisons": "analysed_at"}.get(name, "ts")
        assert table.clustering_fields == ["run_id"]
    types = {f.name: f.field_type for f in created["requests"].schema}
    assert types["ts"] == "TIMESTAMP" and types["ok"] == "BOOL" and types["status_code"] == "INT64"

    # idempotent: a second call (new instance, as another task would) only looks things up
    fake_bq.calls.clear()
    open_warehouse(URI, client=fake_bq).ensure_schema()
    assert {c.method for c in fake_bq.calls} == {"get_dataset", "get_table"}


def test_ensure_schema_refuses_an_outdated_table(fake_bq):
    old = bigquery.Table(TABLE_ID["runs"], schema=[bigquery.SchemaField("run_id", "STRING"),
                                                   bigquery.SchemaField("users", "STRING")])
    fake_bq.create_dataset(bigquery.Dataset(f"{PROJECT}.{DATASET}"))
    fake_bq.create_table(old)
    with pytest.raises(WarehouseError, match=r"predates this schema.*'users': 'STRING'"
                                             r".*ALTER TABLE `my-project.bench.runs` "
                                             r"ADD COLUMN dag_id STRING"):
        open_warehouse(URI, client=fake_bq).ensure_schema()


# --- replace_run -------------------------------------------------------------------------------

def test_replace_run_deletes_with_a_parameter_then_loads_parquet(wh, fake_bq, tables):
    hostile = "run-1' OR '1'='1"
    got = wh.replace_run(relabel(tables, hostile), hostile)
    assert got == {"runs": 1, "timeseries": len(tables["timeseries"]), "requests": 12}

    deletes = fake_bq.named("query")
    assert [c.args["sql"] for c in deletes] == [
        f"DELETE FROM `{TABLE_ID[t]}` WHERE run_id = @run_id"
        for t in ("runs", "timeseries", "requests", "verdicts",
                  "comparisons")]  # runs first: the run disappears first
    for call in deletes:
        assert call.args["job_config"].query_parameters == [
            bigquery.ScalarQueryParameter("run_id", "STRING", hostile)]
        assert call.args["location"] == "EU" and call.args["job_id_prefix"] == "caio_"

    loads = fake_bq.named("load_table_from_file")
    assert [c.args["destination"] for c in loads] == [
        TABLE_ID[t] for t in ("requests", "timeseries", "runs")]  # runs last: listed when whole
    for call in loads:
        config = call.args["job_config"]
        name = call.args["destination"].rsplit(".", 1)[1]
        assert config.write_disposition == bigquery.WriteDisposition.WRITE_APPEND
        assert config.create_disposition == bigquery.CreateDisposition.CREATE_NEVER
        assert config.source_format == bigquery.SourceFormat.PARQUET
        assert [(f.name, f.field_type) for f in config.schema] == list(
            sc.sql_types(name, "bigquery").items())
        assert call.args["location"] == "EU"
        assert call.args["data"][:4] == b"PAR1"
    assert counts(fake_bq, hostile) == got
    assert fake_bq.rows("runs", "run-1") == 0  # the quote did not widen the DELETE/SELECT


def test_replace_run_twice_holds_one_copy(wh, fake_bq, tables):
    first = wh.replace_run(tables, "run-1")
    second = wh.replace_run(tables, "run-1")
    assert first == second
    assert counts(fake_bq) == first  # really one set in the table, not two


def test_runs_side_by_side_and_a_smaller_replace(wh, fake_bq, tables):
    wh.replace_run(tables, "run-1")
    wh.replace_run(relabel(tables, "run-2"), "run-2")
    assert counts(fake_bq, "run-1") == counts(fake_bq, "run-2")
    # replacing run-2 with only its runs row drops its other rows and leaves run-1 alone
    wh.replace_run({"runs": relabel(tables, "run-2")["runs"]}, "run-2")
    assert counts(fake_bq, "run-2") == {"runs": 1, "timeseries": 0, "requests": 0}
    assert counts(fake_bq, "run-1")["requests"] == 12


def test_replace_run_checks_before_touching_anything(wh, fake_bq, tables):
    with pytest.raises(WarehouseError, match="not only 'run-9'"):
        wh.replace_run(tables, "run-9")
    with pytest.raises(WarehouseError, match="unknown table"):
        wh.replace_run({"users": tables["runs"]}, "run-1")
    with pytest.raises(WarehouseError, match="needs a run_id"):
        wh.replace_run(tables, "")
    assert fake_bq.calls == []


def test_read_run_round_trips_values_and_dtypes(wh, fake_bq, tables):
    wh.replace_run(tables, "run-1")
    wh.replace_run(relabel(tables, "run-2"), "run-2")
    fake_bq.calls.clear()
    back = wh.read_run("run-1")
    for call in fake_bq.named("query"):
        assert "@run_id" in call.args["sql"] and "run-1" not in call.args["sql"]
    for name in sc.TABLES:
        sc.validate(name, back[name])
    pd.testing.assert_frame_equal(back["runs"], tables["runs"])
    key = ["metric", "dimension", "ts"]
    pd.testing.assert_frame_equal(back["timeseries"],
                                  tables["timeseries"].sort_values(key, ignore_index=True))
    pd.testing.assert_frame_equal(
        back["requests"], tables["requests"].sort_values(["source", "ts"], ignore_index=True))
    assert all(frame.empty for frame in wh.read_run("unknown").values())


# --- named reads: GoogleSQL written for BigQuery, values as parameters --------------------------

RUNS, REQUESTS, VERDICTS = (f"`{TABLE_ID[t]}`" for t in ("runs", "requests", "verdicts"))
NAMED_READS = {
    "run_row": (("run-2",), f"SELECT * FROM {RUNS} WHERE run_id = @run", {"run": "run-2"}),
    "latest_run_id": ((), f"SELECT run_id FROM {RUNS} ORDER BY COALESCE(started_at, "
                      "harvested_at) DESC, harvested_at DESC LIMIT 1", {}),
    "baseline_candidates": (
        ("mobilenet", "run-1"),
        "SELECT run_id, model_version, model_source, started_at, params, provenance, "
        f"benchmark FROM {RUNS} WHERE model_name = @model AND status = 'success' "
        "AND run_id != @run AND started_at IS NOT NULL", {"model": "mobilenet", "run": "run-1"}),
    "client_latencies": (("run-2",), f"SELECT ts, latency_ms, ok FROM {REQUESTS} "
                         "WHERE run_id = @run AND source = 'client'", {"run": "run-2"}),
    "history": (
        ("caio_load_test",),
        "SELECT r.run_id, r.model_name, r.model_version, r.status, r.started_at, "
        "r.throughput_rps, r.p95_ms, r.p99_ms, r.target, r.load_shape, r.fingerprint, "
        "r.params, r.provenance, v.verdict, v.cost_per_1k "
        f"FROM {RUNS} AS r LEFT JOIN {VERDICTS} AS v ON r.run_id = v.run_id "
        "WHERE r.started_at IS NOT NULL AND (r.dag_id = @dag OR @dag = '*') "
        "ORDER BY r.started_at", {"dag": "caio_load_test"}),
}


@pytest.mark.parametrize("method", NAMED_READS)
def test_named_reads_send_their_sql_with_string_parameters(wh, fake_bq, tables, method):
    wh.replace_run(tables, "run-1")
    fake_bq.calls.clear()
    args, sql, params = NAMED_READS[method]
    getattr(wh, method)(*args)
    [call] = fake_bq.named("query")
    assert call.args["sql"] == sql and call.args["location"] == "EU"
    assert call.args["job_config"].query_parameters == [
        bigquery.ScalarQueryParameter(name, "STRING", value) for name, value in params.items()]


def test_named_reads_answer_the_analysis_questions(wh, fake_bq, tables):
    """The same runs and answers as the DuckDB warehouse's test (tests/results)."""
    for frames, run_id in named_reads_runs(tables):
        wh.replace_run(frames, run_id)
    wh.replace_tables({"verdicts": a_verdict("run-3", "regression", 0.5)}, "run-3")
    assert wh.run_row("run-2")[["run_id", "model_version"]].values.tolist() == [["run-2", "v2"]]
    hostile = "run-1' OR '1'='1"
    assert wh.run_row(hostile).empty
    assert hostile not in fake_bq.named("query")[-1].args["sql"]  # a parameter, never text
    assert wh.latest_run_id() == "run-5"
    assert wh.baseline_candidates("mobilenet", "run-1")["run_id"].tolist() == ["run-2"]
    client = tables["requests"][tables["requests"]["source"] == "client"]
    assert sorted(wh.client_latencies("run-2")["latency_ms"]) == sorted(client["latency_ms"])
    history = wh.history("caio_load_test")
    assert history["run_id"].tolist() == ["run-1", "run-3", "run-4"]
    assert history["verdict"].fillna("-").tolist() == ["-", "regression", "-"]
    assert wh.history("*")["run_id"].tolist() == ["run-1", "run-2", "run-3", "run-4"]


# --- errors ------------------------------------------------------------------------------------

def test_permission_quota_and_missing_errors_say_what_to_do(wh, fake_bq, tables):
    fake_bq.fail["get_dataset"] = gexc.Forbidden(
        "Access Denied: Dataset my-project:bench: Permission bigquery.datasets.get denied")
    with pytest.raises(BigQueryWarehouseError) as denied:
        wh.ensure_schema()
    text = str(denied.value)
    assert denied.value.status == 403 and not denied.value.retryable
    assert "Permission bigquery.datasets.get denied" in text
    assert "roles/bigquery.dataEditor" in text and "roles/bigquery.jobUser" in text

    wh.ensure_schema()
    fake_bq.fail["load_table_from_file"] = gexc.TooManyRequests("Quota exceeded: load jobs")
    with pytest.raises(BigQueryWarehouseError, match=r"Quota exceeded.*quota") as quota:
        wh.replace_run(tables, "run-1")
    assert quota.value.status == 429 and quota.value.retryable

    fake_bq.fail["query"] = gexc.NotFound("Not found: Table my-project:bench.runs")
    with pytest.raises(WarehouseError, match=r"Not found: Table.*harvest a run into it first"):
        wh.read_run("run-1")
    # a bug that is not an API error passes through unchanged
    fake_bq.fail["query"] = ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        wh.read_run("run-1")


# --- the client comes from the Airflow Google provider's BigQueryHook ----------------------------

def test_client_is_built_by_the_bigquery_hook(hook_clients, fake_bq):
    chain = ["sa@my-project.iam.gserviceaccount.com"]
    wh = open_warehouse(URI + "?location=EU", impersonation_chain=chain)
    wh.ensure_schema()
    assert hook_clients == [{"gcp_conn_id": "google_cloud_default",
                             "impersonation_chain": chain, "project_id": PROJECT,
                             "location": "EU"}]
    assert fake_bq.named("create_dataset")


def test_cloud_harvest_and_analysis(hook_clients, fake_bq, gs_bucket):
    """The real harvest, summary and report code on gs:// (emulator) + BigQuery (fake)."""
    layout = write_small_run(gs_bucket)
    result = harvest_run(layout, dict(META), URI)
    assert result["counts"] == counts(fake_bq, "run-1")
    assert result["counts"]["requests"] == 12
    harvest_run(layout, dict(META), URI)  # retried task: still one copy
    assert counts(fake_bq) == result["counts"]

    text = latest_run_summary(URI)  # the analysis' own "latest run" read, in GoogleSQL
    assert "run-1" in text
    latest = [c for c in fake_bq.named("query") if "LIMIT 1" in c.args["sql"]]
    assert latest and "FROM `my-project.bench.runs`" in latest[-1].args["sql"]

    assert all(storage.exists(uri) for uri in result["tables"].values())

    out = analyse_run(URI, "run-1", RunLayout(gs_bucket, "run-1"))
    assert out["report_uri"].startswith("gs://")
    summary = json.loads(storage.read_text(out["summary_uri"]))
    assert summary["run_id"] == "run-1"
    assert storage.read_text(out["report_uri"]).lstrip().lower().startswith("<!doctype html")
