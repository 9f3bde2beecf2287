"""CreateLocustMetricsOperator: make sure every metric sink of the run exists."""

from __future__ import annotations

from typing import Any

from caio_operators.operators.base import SpecOperator


class CreateLocustMetricsOperator(SpecOperator):
    """Create what the run writes into, idempotently (locally: the warehouse schema)."""

    def execute(self, context) -> dict[str, Any]:
        from caio_operators import pipeline

        return pipeline.prepare_metrics(self.run_spec, log=self.log)
