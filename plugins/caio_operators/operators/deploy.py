"""DeployModelOperator (setup) and UndeployModelOperator (teardown)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from caio_operators.operators.base import SpecOperator
from caio_operators.spec import RunSpec


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
    """Undo a deployment (stop servers / delete versions). Gone already counts as success.

    ``deployment`` is the deploy task's output. When it is empty (the deploy task was
    killed or timed out before returning), ``spec`` lets a cloud target still find and
    delete what the run created, by the run id on its labels.
    """

    template_fields = ("deployment", "spec")
    ui_color = "#f4e1e1"

    def __init__(self, *, deployment: dict[str, Any] | Any,
                 spec: dict[str, Any] | Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deployment = deployment
        self.spec = spec

    def execute(self, context) -> None:
        from caio_operators import pipeline

        spec = RunSpec.from_dict(self.spec) if self.spec else None
        pipeline.undeploy(self.deployment, log=self.log, spec=spec)
