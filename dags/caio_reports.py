"""
### caio_reports: the history report, refreshed whenever a run is analysed

Scheduled on the `verdicts` Asset (an outlet of `caio_load_test`'s `analyse` and of
`caio_version_sweep`'s `compare`): each new verdict refreshes
`<bucket>/reports/history.html` (trend of p95/p99, throughput and cost per 1,000
predictions over every run in the warehouse, `caio_load_test`'s and the sweeps' variants,
per model and benchmark, regressions marked) for the warehouse and bucket named by the
triggering events: the same page the sweep's `compare` writes, so whichever wrote last, it
shows the same runs. Triggered by hand, it uses the params.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Param

from caio_operators import assets
from caio_operators.operators import HistoryReportOperator

ROOT = Path(os.environ.get("CAIO_HOME", str(Path(__file__).resolve().parents[1] / ".caio")))

with DAG(
    dag_id="caio_reports",
    description="History report of the benchmark runs, refreshed on every new verdict.",
    doc_md=__doc__,
    schedule=[assets.VERDICTS],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["caio", "benchmark", "reports"],
    default_args={"owner": "caio", "retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "warehouse": Param("duckdb://" + str(ROOT / "warehouse.duckdb"), type="string",
                           title="Warehouse", description="Used when run by hand."),
        "bucket": Param("file://" + str(ROOT / "bucket"), type="string", title="Bucket",
                        description="Where the report goes, when run by hand."),
        "dag_id": Param("*", type="string", title="DAG",
                        description="Whose runs the history shows ('*': every DAG's, as "
                                    "the sweep's history; a DAG id: only its runs)."),
    },
) as dag:
    HistoryReportOperator(
        task_id="history", warehouse="{{ params.warehouse }}", bucket="{{ params.bucket }}",
        history_dag_id="{{ params.dag_id }}", execution_timeout=timedelta(minutes=30))
