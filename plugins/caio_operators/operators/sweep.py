"""Operators of the sweep and reporting DAGs: plan the variants, compare them, report."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, BaseSensorOperator

from caio_operators.spec import run_key

#: a variant's chain ends with this task (its trigger rule is all_done: it always ends)
VARIANT_LAST_TASK = "variant.harvest"
#: states after which a task instance does not run again in this DAG run
_ENDED = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


class PlanSweepOperator(BaseOperator):
    """Validate every variant of a sweep; return one RunSpec dict per variant (the list the
    variant task group is mapped over). Nothing is created before every variant passes."""

    ui_color = "#fdf3e1"

    def __init__(self, *, schema: dict[str, dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.schema = schema

    def execute(self, context) -> list[dict[str, Any]]:
        from caio_operators.sweep import plan_sweep

        specs = plan_sweep(dict(context["params"]), self.schema, dag_id=self.dag_id,
                           airflow_run_id=context["run_id"],
                           key=run_key(context["run_id"], context.get("logical_date")))
        for spec in specs:
            self.log.info("variant %s: run %s model %s/%s source %s target %s replicas %s "
                          "machine %s", spec["extra"]["variant"], spec["run_id"],
                          spec["model_name"], spec["model_version"], spec["model_source"],
                          spec["target"], spec["replicas"], spec["machine_type"])
        return specs


class WaitForPreviousVariantSensor(BaseSensorOperator):
    """First task of a sweep variant: wait until the previous variant's chain has ended.

    The scheduler's priorities only ask for a variant's chain to finish before the next one
    starts (and ``airflow dags test`` runs stage by stage: every export, then every deploy),
    so a variant's deployed server could sit beside the other's load. This gate makes the
    order a rule: variant *i* starts once variant *i-1*'s last task has ended, in whatever
    state. It reschedules between pokes, so it holds no task slot while it waits.
    With ``sequential=False`` (``CAIO_SWEEP_PARALLEL`` > 1) it passes at once.
    """

    template_fields = ("spec",)
    ui_color = "#fdf3e1"

    def __init__(self, *, spec: dict[str, Any] | Any, sequential: bool = True,
                 **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        super().__init__(**kwargs)
        self.spec = spec
        self.sequential = sequential

    def poke(self, context) -> bool:
        index = context["ti"].map_index
        if not self.sequential or index is None or index <= 0:
            return True
        states = context["ti"].get_task_states(
            dag_id=self.dag_id, task_ids=[VARIANT_LAST_TASK], run_ids=[context["run_id"]],
            map_index=index - 1)
        state = states.get(context["run_id"], {}).get(f"{VARIANT_LAST_TASK}_{index - 1}")
        self.log.info("variant %s waits for variant %s (%s: %s)", index, index - 1,
                      VARIANT_LAST_TASK, state)
        return state in _ENDED


class CompareSweepOperator(BaseOperator):
    """Judge and rank the sweep's variants; write the comparison and history reports."""

    template_fields = ("specs",)
    ui_color = "#efe1f4"

    def __init__(self, *, specs: list[dict[str, Any]] | Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.specs = specs

    def execute(self, context) -> dict[str, Any]:
        from caio_operators import assets, pipeline
        from caio_operators.spec import RunSpec

        if not self.specs:
            raise pipeline.RunFailed("nothing to compare: the plan task failed (see its log)")
        out = pipeline.compare_sweep(list(self.specs), log=self.log)
        first = RunSpec.from_dict(self.specs[0])
        assets.mark_events(context, self.outlets, {**assets.event_extra(first),
                                                   "report": out["report_uri"]})
        return out


class HistoryReportOperator(BaseOperator):
    """Refresh the history report of every warehouse named by the triggering asset events
    (or by the ``warehouse`` / ``bucket`` params when run by hand)."""

    template_fields = ("warehouse", "bucket", "history_dag_id")
    ui_color = "#efe1f4"

    def __init__(self, *, warehouse: str, bucket: str,
                 history_dag_id: str = "*", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.warehouse = warehouse
        self.bucket = bucket
        self.history_dag_id = history_dag_id

    def execute(self, context) -> list[dict[str, Any]]:
        from caio_operators import pipeline

        targets = set()
        events = context.get("triggering_asset_events") or {}
        for asset_events in events.values():
            for event in asset_events:
                extra = event.extra or {}
                if extra.get("warehouse") and extra.get("bucket"):
                    targets.add((extra["warehouse"], extra["bucket"]))
        if not targets:  # run by hand (or events without a location): the params
            targets.add((self.warehouse, self.bucket))
        return [pipeline.history(warehouse, bucket, dag_id=self.history_dag_id, log=self.log)
                for warehouse, bucket in sorted(targets)]
