"""CreateLocustMetricsOperator: make sure every metric sink of the run exists."""

from __future__ import annotations

from typing import Any

from caio_operators.operators.base import SpecOperator


class CreateLocustMetricsOperator(SpecOperator):
    """Create what the run writes into, idempotently: the warehouse schema; for cloud
    targets also the Locust log-based metrics and the deployment's Monitoring dashboard
    (``deployment``: the deploy task's output)."""

    template_fields = ("spec", "deployment")

    def __init__(self, *, deployment: dict[str, Any] | Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deployment = deployment

    def execute(self, context) -> dict[str, Any]:
        from caio_operators import pipeline

        return pipeline.prepare_metrics(self.run_spec, self.deployment, log=self.log)
