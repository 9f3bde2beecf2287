"""The two cloud-metrics stages as single calls for the operators/pipeline.

``prepare_cloud_metrics``: the Locust log-based metrics exist, and the deployment's
dashboard exists and is current. ``harvest_cloud_metrics``: the run window's Cloud
Monitoring series as ``timeseries`` rows, and how far they reach. Both take the
deployment's ``MonitoredTarget`` (the target builds it: ``Target.monitored_target``) and
the ``GcpConnection`` to build the hooks with, unless hooks are passed in; a RunSpec-like
merged with the deploy output still works in place of both (the older call style). They
return small results (dicts for XCom; the DataFrame goes to the bucket/warehouse, not XCom).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from caio_operators.metrics.families import MonitoredTarget, as_monitored, field
from caio_operators.results import schema as sc

if TYPE_CHECKING:
    from caio_operators.metrics.monitoring import MonitoringHarvest


@dataclass(frozen=True)
class GcpConnection:
    """The Airflow connection (and service accounts to impersonate) the hooks use."""

    gcp_conn_id: str = "google_cloud_default"
    impersonation_chain: str | tuple[str, ...] | None = None

    @classmethod
    def of(cls, spec_like: Any) -> GcpConnection:
        """The connection of a RunSpec (``gcp_conn_id``, ``impersonation``) or of a
        RunSpec-like dict (``gcp_conn_id``, ``impersonation_chain``)."""
        chain = (spec_like.impersonation if hasattr(spec_like, "impersonation")
                 else field(spec_like, "impersonation_chain"))
        if chain and not isinstance(chain, str):
            chain = tuple(chain)
        return cls(gcp_conn_id=field(spec_like, "gcp_conn_id") or "google_cloud_default",
                   impersonation_chain=chain or None)

    def hook_kwargs(self) -> dict[str, Any]:
        chain = self.impersonation_chain
        return {"gcp_conn_id": self.gcp_conn_id,
                "impersonation_chain": list(chain) if isinstance(chain, tuple) else chain}


def _scope(scope: MonitoredTarget | Any, connection: GcpConnection | None
           ) -> tuple[MonitoredTarget, GcpConnection]:
    if connection is None:
        connection = (GcpConnection() if isinstance(scope, MonitoredTarget)
                      else GcpConnection.of(scope))
    return as_monitored(scope), connection


def prepare_cloud_metrics(scope: MonitoredTarget | Any,
                          connection: GcpConnection | None = None, *, dashboard: bool = True,
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

    target, connection = _scope(scope, connection)
    if logging_hook is None:
        from caio_operators.hooks.logging_metrics import LoggingMetricsHook

        logging_hook = LoggingMetricsHook(**connection.hook_kwargs())
    result: dict[str, Any] = {"log_metrics": ensure_log_metrics(logging_hook, target.project)}
    if dashboard:
        body = render_dashboard(dashboard_values(scope), template)
        if monitoring_hook is None:
            from caio_operators.hooks.monitoring import MonitoringHook

            monitoring_hook = MonitoringHook(**connection.hook_kwargs())
        result["dashboard"] = ensure_dashboard(monitoring_hook.get_dashboards_service(),
                                               target.project, body)
    return result


def harvest_cloud_metrics(scope: MonitoredTarget | Any, start: Any, end: Any,
                          interval_s: float = sc.DEFAULT_INTERVAL_S,
                          connection: GcpConnection | None = None, *,
                          monitoring_hook: Any = None, include_log_metrics: bool = True,
                          wait_s: float = 0.0) -> MonitoringHarvest:
    """``timeseries`` rows of the run window ``[start, end]`` from Cloud Monitoring, read
    again until they cover it, for at most ``wait_s`` after its end."""
    from caio_operators.metrics.monitoring import harvest_monitoring

    target, connection = _scope(scope, connection)
    if monitoring_hook is None:
        from caio_operators.hooks.monitoring import MonitoringHook

        monitoring_hook = MonitoringHook(**connection.hook_kwargs())
    return harvest_monitoring(monitoring_hook.get_metric_client(), target, start, end,
                              interval_s, include_log_metrics=include_log_metrics,
                              wait_s=wait_s)
