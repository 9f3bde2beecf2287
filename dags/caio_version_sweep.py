"""
### caio_version_sweep: the same benchmark over several variants, compared

`variants` is a list of objects, each overriding any `caio_load_test` param (model version
and source, machine type, accelerator, replicas...) plus an optional `name`; the other
params are every variant's defaults. `plan` validates every variant first (nothing is
created before all pass). Each variant then runs the whole export -> deploy -> load ->
undeploy (teardown) -> harvest chain as one instance of the mapped `variant` task group,
with its own run id, folders and ports. `compare` judges every variant against the first,
ranks them by max req/s under the SLO, prices them and writes the comparison report
(`<bucket>/sweeps/<sweep>/comparison.html`) and the history report.

Variants run one after another (runs sharing a machine distort each other): each
variant's `wait_turn` waits until the previous variant's chain has ended, and the DAG runs
one task at a time. Set `CAIO_SWEEP_PARALLEL` in the Airflow environment to allow more:
then `wait_turn` passes at once, the variants' exports and loads of this machine still wait
in the `caio_host` pool (one at a time, also across DAGs), while GKE loads and cloud
deploys run side by side.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Param, task_group

from caio_operators import assets
from caio_operators.dag_factory import benchmark_chain, dag_params, run_schema
from caio_operators.operators import (
    CompareSweepOperator,
    PlanSweepOperator,
    WaitForPreviousVariantSensor,
)

SCHEMA = run_schema(Path(__file__).resolve().parents[1])
#: tasks running at once in one sweep run (Airflow reads concurrency limits at parse time)
PARALLEL = max(1, int(os.environ.get("CAIO_SWEEP_PARALLEL", "1")))

with DAG(
    dag_id="caio_version_sweep",
    description="Benchmark several variants (versions, machines, replicas) and compare them.",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    max_active_tasks=PARALLEL,
    tags=["caio", "benchmark", "ml-serving", "sweep"],
    # "upstream": a variant's next stage outranks the other variants' waiting gates
    default_args={"owner": "caio", "retries": 0, "retry_delay": timedelta(seconds=30),
                  "weight_rule": "upstream"},
    params={
        "variants": Param(
            [{"name": "small", "model_version": "v1",
              "model_source": "builtin:mobilenet_v3_small"},
             {"name": "large", "model_version": "v2",
              "model_source": "builtin:resnet_v2_101"}],
            type="array", items={"type": "object"}, title="Variants",
            description="One object per variant: caio_load_test params to override (e.g. "
                        "model_version, model_source, machine_type, accelerator_type, "
                        "replicas) and an optional name (lowercase, digits, dashes).",
            section="Sweep"),
        **dag_params(SCHEMA),
    },
) as dag:
    plan = PlanSweepOperator(task_id="plan", schema=SCHEMA,
                             execution_timeout=timedelta(minutes=1))

    @task_group(group_id="variant")
    def variant(spec):
        # pokes every 10 s between the previous variant's tasks, holding no slot meanwhile
        turn = WaitForPreviousVariantSensor(
            task_id="wait_turn", spec=spec, sequential=PARALLEL == 1, poke_interval=10,
            timeout=timedelta(days=3).total_seconds())
        chain = benchmark_chain(spec, group="variant")
        turn >> chain.export
        return chain.harvest

    variants = variant.expand(spec=plan.output)
    compare = CompareSweepOperator(
        task_id="compare", specs=plan.output, trigger_rule="all_done",
        execution_timeout=timedelta(minutes=30), outlets=assets.ANALYSED)
    variants >> compare
