"""RunLoadTestOperator: drive the deployment with distributed Locust."""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.branch import BaseBranchOperator

from caio_operators.operators.base import SpecOperator
from caio_operators.spec import RunSpec

#: the Airflow pool of the tasks that load the Airflow worker's machine, one at a time
#: (created by `make setup`; docs/scheduling.md: "One benchmark at a time on a machine")
HOST_POOL = "caio_host"
#: the load task of a run whose Locust runs on this machine (in HOST_POOL) and of one
#: whose Locust runs on GKE (free to run beside others)
LOAD_HERE, LOAD_GKE = "load", "load_gke"


class RunLoadTestOperator(SpecOperator):
    """Run Locust (master + workers) against the deployment and wait for the end.

    ``spec.load_runner`` says where: processes on this machine, or pods on GKE (labelled
    with the try number, so a retry re-attaches to what the try before started).
    Progress (users, req/s, failures) goes to the task log every few seconds. Raw records,
    Locust's CSV and HTML land in the run's folder of the bucket. Every process or pod it
    started is stopped when the task ends, fails, times out or is killed.
    """

    template_fields = ("spec", "deployment")
    ui_color = "#e1ecf4"

    def __init__(self, *, deployment: dict[str, Any] | Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deployment = deployment
        self._launcher = None

    def execute(self, context) -> dict[str, Any]:
        from caio_operators import pipeline

        return pipeline.run_load(self.run_spec, self.deployment, log=self.log,
                                 on_launcher=self._remember,
                                 try_number=int(context["ti"].try_number or 1))

    def _remember(self, launcher) -> None:
        self._launcher = launcher

    def on_kill(self) -> None:
        # LocalLauncher and GkeLauncher both stop everything they started on stop()
        if self._launcher is not None:
            self._launcher.stop()


class ChooseLoadTaskOperator(SpecOperator, BaseBranchOperator):
    """Pick the load task of the run: ``load`` (in the host pool, so loads of this machine
    never overlap) when Locust runs here, ``load_gke`` (no pool) when it runs on GKE.

    Airflow reads a task's pool when it parses the DAG, so the run's ``load_runner``
    chooses between two tasks rather than setting one task's pool.
    """

    ui_color = "#f4e1ec"

    def choose_branch(self, context) -> str:
        name = LOAD_GKE if RunSpec.from_dict(self.spec).load_runner == "gke" else LOAD_HERE
        group = self.task_id.rpartition(".")[0]  # inside the sweep's variant task group
        return f"{group}.{name}" if group else name
