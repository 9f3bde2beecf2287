"""DeployModelOperator (setup) and UndeployModelOperator (teardown)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from caio_operators.operators.base import SpecOperator


class DeployModelOperator(SpecOperator):
    """Deploy the exported model to ``spec.target``; return the Deployment dict.

    Run it as a setup task: the matching UndeployModelOperator is its teardown and runs
    whatever happens downstream. A failed deploy cleans up what it started itself.
    """

    ui_color = "#e3f4e1"

    def execute(self, context) -> dict[str, Any]:
        from caio_operators import pipeline

        return pipeline.deploy(self.run_spec, log=self.log)


class UndeployModelOperator(BaseOperator):
    """Undo a deployment (stop servers / delete versions). Gone already counts as success."""

    template_fields = ("deployment",)
    ui_color = "#f4e1e1"

    def __init__(self, *, deployment: dict[str, Any] | Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deployment = deployment

    def execute(self, context) -> None:
        from caio_operators import pipeline

        pipeline.undeploy(self.deployment, log=self.log)
