"""ValidateRunSpecOperator: the first task; nothing is created before it passes."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from caio_operators.spec import run_key, validate_params


class ValidateRunSpecOperator(BaseOperator):
    """Check the run's params and return the RunSpec as a dict (XCom) for the other tasks."""

    ui_color = "#fdf3e1"

    def __init__(self, *, schema: dict[str, dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.schema = schema

    def execute(self, context) -> dict[str, Any]:
        spec = validate_params(
            dict(context["params"]), self.schema,
            dag_id=self.dag_id, airflow_run_id=context["run_id"],
            # runs of one logical date (scheduled, backfill) share their rows' key
            key=run_key(context["run_id"], context.get("logical_date")),
        )
        from caio_operators.pipeline import check_baseline_run

        check_baseline_run(spec)
        self.log.info("run %s: target=%s model=%s/%s source=%s shape=%s users=%s duration=%ss",
                      spec.run_id, spec.target, spec.model_name, spec.model_version,
                      spec.model_source, spec.load_shape, spec.users, spec.duration_s)
        return spec.to_dict()
