"""
### caio_load_test: benchmark one model version served online

`validate` checks every param (nothing is created before it passes), `export` wraps the
base classifier into a SavedModel with `serving_default` and `serving_preprocess`, `deploy`
(setup) serves it, `prepare_metrics` creates the metric sinks, `load` drives it with
distributed Locust, `undeploy` (teardown, always runs) stops what deploy started,
`harvest` consolidates client and server metrics into the `runs` / `timeseries` /
`requests` tables (Parquet in the bucket + warehouse rows) even after a failed load, and
`analyse` reads the run back from the warehouse and writes the HTML report.

`analyse` first compares the run with its baseline (the previous successful run of the same
version and benchmark fingerprint, or `baseline_version`, or `baseline_run_id`; a run that
measured another benchmark is never one: the verdict then says `no comparable baseline` or
`not comparable` and names the fields), stores the verdict and the run's cost in the
`verdicts` / `comparisons` tables, shows both in the report, and fails on a regression only
with `fail_on_regression`.

One benchmark at a time on a machine: `export` and the `load` of a run whose Locust runs
here wait in the `caio_host` pool (1 slot, created by `make setup`); `choose_load` sends a
GKE load to `load_gke`, outside the pool. A run that still shared the machine during its
load is marked degraded with the figures.

Scheduled daily but created paused: unpause it for a daily benchmark, or backfill a date
range (`airflow backfill create --dag-id caio_load_test --from-date ... --to-date ...`).
Scheduled and backfill runs of one logical date share a run key, so a re-run replaces
that date's rows. The tables are Assets: `caio_reports` refreshes the history report.

Every knob is a Param: use the Trigger form, or `--conf '{"users": 4}'`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG

from caio_operators import assets
from caio_operators.dag_factory import benchmark_chain, dag_params, run_schema
from caio_operators.operators import AnalyseRunOperator, ValidateRunSpecOperator

SCHEMA = run_schema(Path(__file__).resolve().parents[1])

with DAG(
    dag_id="caio_load_test",
    description="Export, deploy, load-test, harvest and analyse one model version.",
    doc_md=__doc__,
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    is_paused_upon_creation=True,
    # runs of the cloud targets with GKE load may overlap; what loads this machine (export,
    # a load whose Locust runs here) waits in the host pool instead
    max_active_runs=4,
    tags=["caio", "benchmark", "ml-serving"],
    default_args={"owner": "caio", "retries": 0, "retry_delay": timedelta(seconds=30)},
    params=dag_params(SCHEMA),
) as dag:
    validate = ValidateRunSpecOperator(
        task_id="validate", schema=SCHEMA, execution_timeout=timedelta(minutes=1),
    )
    chain = benchmark_chain(validate.output)
    analyse = AnalyseRunOperator(
        task_id="analyse", spec=validate.output, execution_timeout=timedelta(minutes=30),
        outlets=assets.ANALYSED,
    )
    validate >> chain.export
    chain.harvest >> analyse
