"""Run the DAG's `load` task as Airflow's task runner does, in its own process.

    python load_task.py SPEC_JSON DEPLOYMENT_JSON TRY_NUMBER [TIMEOUT_S]

Like `airflow.sdk.execution_time.task_runner`: SIGTERM calls the operator's `on_kill`, and
an `execution_timeout` is Airflow's own `timeout` context (SIGALRM raises
AirflowTaskTimeout in `execute`), after which `on_kill` runs. Exit status: 0 success,
3 timed out, 1 failed.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from types import SimpleNamespace


def main() -> int:
    from airflow.sdk.exceptions import AirflowTaskTimeout
    from airflow.sdk.execution_time.timeout import timeout

    from caio_operators.operators import RunLoadTestOperator

    spec = json.loads(Path(sys.argv[1]).read_text())
    deployment = json.loads(Path(sys.argv[2]).read_text())
    context = {"ti": SimpleNamespace(try_number=int(sys.argv[3]))}
    task = RunLoadTestOperator(task_id="load", spec=spec, deployment=deployment)
    signal.signal(signal.SIGTERM, lambda signum, frame: task.on_kill())
    print("ready", flush=True)
    try:
        if len(sys.argv) > 4:
            try:
                with timeout(float(sys.argv[4])):
                    task.execute(context)
            except AirflowTaskTimeout:
                task.on_kill()
                print("timed out", flush=True)
                return 3
        else:
            task.execute(context)
    except Exception as exc:
        print(f"failed: {type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
