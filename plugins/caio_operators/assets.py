"""The results tables as Airflow Assets: harvest and analyse tasks list them as outlets,
and the reporting DAG is scheduled on them, so a new run refreshes the reports.

The assets name the tables, not a warehouse (the warehouse is a run param): each
asset event carries the run's ``warehouse`` and ``bucket`` in its extra, and the reporting
DAG reads them from its triggering events.
"""

from __future__ import annotations

from airflow.sdk import Asset

GROUP = "caio-bench"


def _table(name: str) -> Asset:
    # a URI without a scheme: a scheme would make Airflow load every provider's URI
    # handlers at parse time (over a second)
    return Asset(name=f"caio_{name}", uri=f"caio_{name}", group=GROUP)


RUNS = _table("runs")
TIMESERIES = _table("timeseries")
REQUESTS = _table("requests")
VERDICTS = _table("verdicts")
COMPARISONS = _table("comparisons")

#: what harvest writes, what the analysis (verdict) writes
HARVESTED = [RUNS, TIMESERIES, REQUESTS]
ANALYSED = [VERDICTS, COMPARISONS]


def event_extra(spec) -> dict[str, str]:
    """Where a run's rows and reports are: the extra of its asset events."""
    return {"run_id": spec.run_id, "warehouse": spec.warehouse, "bucket": spec.bucket,
            "dag_id": spec.dag_id}


def mark_events(context, assets, extra) -> None:
    """Attach ``extra`` to this task's events for ``assets`` (no-op outside a task run)."""
    events = context.get("outlet_events") if hasattr(context, "get") else None
    if events is None:
        return
    for asset in assets:
        events[asset].extra = dict(extra)
