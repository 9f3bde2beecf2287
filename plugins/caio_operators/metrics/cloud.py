"""The two cloud-metrics stages as single calls for the operators/pipeline.

``prepare_cloud_metrics``: the Locust log-based metrics exist, and the deployment's
dashboard exists and is current. ``harvest_cloud_metrics``: the run window's Cloud
Monitoring series as ``timeseries`` rows, and how far they reach. Both take a RunSpec-like
merged with the deploy task's output (``endpoint_id``/``deployed_model_id`` for Vertex),
build the hooks from its ``gcp_conn_id`` and ``impersonation_chain`` unless hooks are passed
in, and return small results (dicts for XCom; the DataFrame goes to the bucket/warehouse, not XCom).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from caio_operators.metrics.families import field
from caio_operators.results import schema as sc

if TYPE_CHECKING:
    from caio_operators.metrics.monitoring import MonitoringHarvest


def _connection(spec_like: Any) -> dict[str, Any]:
    return {"gcp_conn_id": field(spec_like, "gcp_conn_id") or "google_cloud_default",
            "impersonation_chain": field(spec_like, "impersonation_chain") or None}


def prepare_cloud_metrics(spec_like: Any, *, dashboard: bool = True,
                          logging_hook: Any = None, monitoring_hook: Any = None,
                          template: Any = None) -> dict[str, Any]:
    """Ensure the log-based metrics and (with ``dashboard``) the Monitoring dashboard.

    Returns ``{"log_metrics": {name: action}, "dashboard": {action, name, display_name}}``.
    """
    from caio_operators.metrics.dashboard import (
        dashboard_values,
        ensure_dashboard,
        render_dashboard,
    )
    from caio_operators.metrics.log_metrics import ensure_log_metrics

    project = str(field(spec_like, "project"))
    if logging_hook is None:
        from caio_operators.hooks.logging_metrics import LoggingMetricsHook

        logging_hook = LoggingMetricsHook(**_connection(spec_like))
    result: dict[str, Any] = {"log_metrics": ensure_log_metrics(logging_hook, project)}
    if dashboard:
        body = render_dashboard(dashboard_values(spec_like), template)
        if monitoring_hook is None:
            from caio_operators.hooks.monitoring import MonitoringHook

            monitoring_hook = MonitoringHook(**_connection(spec_like))
        result["dashboard"] = ensure_dashboard(monitoring_hook.get_dashboards_service(),
                                               project, body)
    return result


def harvest_cloud_metrics(spec_like: Any, start: Any, end: Any,
                          interval_s: float = sc.DEFAULT_INTERVAL_S, *,
                          monitoring_hook: Any = None, include_log_metrics: bool = True,
                          wait_s: float = 0.0) -> MonitoringHarvest:
    """``timeseries`` rows of the run window ``[start, end]`` from Cloud Monitoring, read
    again until they cover it, for at most ``wait_s`` after its end."""
    from caio_operators.metrics.monitoring import harvest_monitoring

    if monitoring_hook is None:
        from caio_operators.hooks.monitoring import MonitoringHook

        monitoring_hook = MonitoringHook(**_connection(spec_like))
    return harvest_monitoring(monitoring_hook.get_metric_client(), spec_like, start, end,
                              interval_s, include_log_metrics=include_log_metrics,
                              wait_s=wait_s)
