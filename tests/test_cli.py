"""The demo's log filter keeps task boundaries, our own lines (with continuations) and errors."""

# ruff: noqa: E501  (real log lines are long)

from __future__ import annotations

from caio_operators.cli import filter_progress

LOG = """\
2026-11-24T12:22:17.206788Z [info     ] [DAG TEST] starting task_id=load map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1501
2026-11-24T12:22:17.219078Z [info     ] Task instance state updated    [airflow.api_fastapi.execution_api.routes.task_instances] rows_affected=1
2026-11-24T12:22:22.000000Z [info     ] load 5s: users=2 rps=10.5 failures=0 [airflow.task.operators.caio_operators.operators.load.RunLoadTestOperator] loc=local.py:10
2026-11-24T12:22:40.000000Z [info     ] summary of run r1
run_id  r1
p99     12.0 ms [airflow.task.operators.caio_operators.operators.analyse.AnalyseRunOperator] loc=pipeline.py:1
2026-11-24T12:22:41.000000Z [error    ] Task failed with exception [task] loc=task_runner.py:1
Traceback (most recent call last):
  File "x.py", line 1, in <module>
ValueError: boom
2026-11-24T12:22:42.000000Z [info     ] [DAG TEST] end task task_id=load map_index=-1 [airflow.sdk.definitions.dag] loc=dag.py:1563
2026-11-24T12:22:43.000000Z [info     ] DagRun Finished: dag_id=caio_load_test, state=failed, run_type=manual [airflow.models.dagrun.DagRun] loc=dagrun.py:1315
"""


def test_filter_keeps_what_a_person_needs():
    out = list(filter_progress(LOG.splitlines()))
    assert out[0] == "12:22:17  task load started"
    assert "12:22:22  load 5s: users=2 rps=10.5 failures=0" in out
    assert "Task instance state updated" not in "\n".join(out)
    joined = "\n".join(out)
    assert "run_id  r1" in joined and "12:22:41  ERROR Task failed with exception" in joined
    assert "ValueError: boom" in joined
    assert "12:22:42  task load finished" in out
    assert out[-1].startswith("12:22:43  DagRun Finished") and "state=failed" in out[-1]
