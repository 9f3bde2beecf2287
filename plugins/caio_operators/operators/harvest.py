"""HarvestMetricsOperator: raw records + server metrics -> the tidy tables."""

from __future__ import annotations

import json
from typing import Any

from caio_operators.operators.base import SpecOperator


class HarvestMetricsOperator(SpecOperator):
    """Consolidate the run into ``runs``/``timeseries``/``requests``: Parquet + warehouse.

    Runs even when the load failed (trigger rule ``all_done`` in the DAG): whatever was
    collected is kept and the run is marked failed. Re-running replaces the run's rows.
    For cloud targets it also reads the run window from Cloud Monitoring (``deployment``:
    the deploy task's output as a dict or JSON text, e.g. the template
    ``{{ ti.xcom_pull(task_ids='deploy') | tojson }}``; None / ``null`` when deploy failed).
    """

    template_fields = ("spec", "export_info", "deployment")

    def __init__(self, *, export_info: dict[str, Any] | Any = None,
                 deployment: dict[str, Any] | Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.export_info = export_info
        self.deployment = deployment

    def execute(self, context) -> dict[str, Any]:
        from caio_operators import pipeline

        if not self.spec:
            # Fail rather than skip: a skipped leaf would let the DAG run count as a success.
            raise pipeline.RunFailed("nothing to harvest: the validate task failed (see its log)")

        deployment = self.deployment
        if isinstance(deployment, str):
            deployment = json.loads(deployment) if deployment.strip() else None
        from caio_operators import assets

        out = pipeline.harvest(self.run_spec, export_info=self.export_info, log=self.log,
                               deployment=deployment)
        assets.mark_events(context, self.outlets, assets.event_extra(self.run_spec))
        return out
