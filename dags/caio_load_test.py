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

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Param

from caio_operators import assets, resources
from caio_operators.operators import (
    HOST_POOL,
    LOAD_GKE,
    LOAD_HERE,
    AnalyseRunOperator,
    ChooseLoadTaskOperator,
    CreateLocustMetricsOperator,
    DeployModelOperator,
    ExportServingModelOperator,
    HarvestMetricsOperator,
    RunLoadTestOperator,
    UndeployModelOperator,
    ValidateRunSpecOperator,
)
from caio_operators.spec import param_schema

REPO = Path(__file__).resolve().parents[1]
SCHEMA = param_schema(
    local_root=os.environ.get("CAIO_HOME", str(REPO / ".caio")),
    images_dir=os.environ.get("CAIO_IMAGES") or str(resources.find("test_images")),
)
_FORM_ONLY = ("default", "examples")

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
    params={
        name: Param(prop["default"], **{k: v for k, v in prop.items() if k not in _FORM_ONLY})
        for name, prop in SCHEMA.items()
    },
) as dag:
    validate = ValidateRunSpecOperator(
        task_id="validate", schema=SCHEMA, execution_timeout=timedelta(minutes=1),
    )
    spec = validate.output
    export = ExportServingModelOperator(  # TensorFlow on this machine, whatever the target
        task_id="export", spec=spec, pool=HOST_POOL, execution_timeout=timedelta(minutes=30),
    )
    deploy = DeployModelOperator(
        task_id="deploy", spec=spec, execution_timeout=timedelta(minutes=30),
    )
    prepare = CreateLocustMetricsOperator(
        task_id="prepare_metrics", spec=spec, deployment=deploy.output,
        execution_timeout=timedelta(minutes=10),
    )
    choose_load = ChooseLoadTaskOperator(
        task_id="choose_load", spec=spec, execution_timeout=timedelta(minutes=1),
    )
    # Locust here: one load of this machine at a time (the host pool); on GKE: no pool
    load = RunLoadTestOperator(
        task_id=LOAD_HERE, spec=spec, deployment=deploy.output, pool=HOST_POOL,
        execution_timeout=timedelta(hours=25),
    )
    load_gke = RunLoadTestOperator(
        task_id=LOAD_GKE, spec=spec, deployment=deploy.output,
        execution_timeout=timedelta(hours=25),
    )
    undeploy = UndeployModelOperator(
        task_id="undeploy", deployment=deploy.output, spec=spec,
        execution_timeout=timedelta(minutes=30),
    )
    harvest = HarvestMetricsOperator(
        task_id="harvest", spec=spec, export_info=export.output,
        # Pulled by template, not as deploy.output: a setup's direct downstream tasks must
        # use all_success, and harvest runs all_done (also when deploy failed: then null).
        deployment="{{ ti.xcom_pull(task_ids='deploy') | tojson }}",
        trigger_rule="all_done", execution_timeout=timedelta(hours=1),
        outlets=assets.HARVESTED,
    )
    analyse = AnalyseRunOperator(
        task_id="analyse", spec=spec, execution_timeout=timedelta(minutes=30),
        outlets=assets.ANALYSED,
    )

    validate >> export >> deploy >> prepare >> choose_load >> [load, load_gke]
    load >> undeploy.as_teardown(setups=deploy)
    load_gke >> undeploy
    # Harvest after the teardown: stopping the server flushes its last records.
    undeploy >> harvest >> analyse
