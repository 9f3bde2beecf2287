"""RunLoadTestOperator: drive the deployment with distributed Locust."""

from __future__ import annotations

from typing import Any

from caio_operators.operators.base import SpecOperator


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
