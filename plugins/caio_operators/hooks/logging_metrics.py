"""LoggingMetricsHook: Cloud Logging log-based metrics (v2 ``MetricsServiceV2``).

The Google provider's ``CloudLoggingHook`` covers sinks only; this hook adds the metrics
API in the same style: one method per remote call, keyword ``project_id`` falling back to
the connection's project, ``NotFound`` on delete counting as success. API errors leave as
``GoogleApiError`` naming the missing role (``caio_operators.hooks.errors``, stage
``logging_metrics``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.providers.google.common.hooks.base_google import PROVIDE_PROJECT_ID, GoogleBaseHook
from google.api_core.exceptions import NotFound
from google.cloud.logging_v2.types import (
    CreateLogMetricRequest,
    DeleteLogMetricRequest,
    GetLogMetricRequest,
    LogMetric,
    UpdateLogMetricRequest,
)

from caio_operators.hooks.errors import explained

STAGE = "logging_metrics"


class LoggingMetricsHook(GoogleBaseHook):
    """Get, create, update and delete log-based metrics.

    :param gcp_conn_id: Airflow connection to take credentials (and default project) from.
    :param impersonation_chain: service account(s) to impersonate.
    :param client: a ``MetricsServiceV2Client`` (or a fake with the same methods) to use
        instead of building one from the connection.
    """

    def __init__(
        self,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: str | Sequence[str] | None = None,
        *,
        client: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(gcp_conn_id=gcp_conn_id, impersonation_chain=impersonation_chain,
                         **kwargs)
        self._client = client

    def get_conn(self) -> Any:
        """The ``MetricsServiceV2Client``, built once with the hook's credentials."""
        if self._client is None:
            from airflow.providers.google.common.consts import CLIENT_INFO
            from google.cloud.logging_v2.services.metrics_service_v2 import (
                MetricsServiceV2Client,
            )

            self._client = MetricsServiceV2Client(
                credentials=self.get_credentials(),
                client_info=CLIENT_INFO,
                client_options=self.get_client_options(),
            )
        return self._client

    @staticmethod
    def metric_path(project_id: str, name: str) -> str:
        return f"projects/{project_id}/metrics/{name}"

    @staticmethod
    def _as_metric(metric: LogMetric | Mapping[str, Any]) -> LogMetric:
        return metric if isinstance(metric, LogMetric) else LogMetric(metric)

    @GoogleBaseHook.fallback_to_default_project_id
    def get_metric(self, name: str, project_id: str = PROVIDE_PROJECT_ID) -> LogMetric | None:
        """The metric ``name``, or None when the project has no such metric."""
        request = GetLogMetricRequest(metric_name=self.metric_path(project_id, name))
        with explained(STAGE):
            try:
                return self.get_conn().get_log_metric(request=request)
            except NotFound:
                return None

    @GoogleBaseHook.fallback_to_default_project_id
    def create_metric(self, metric: LogMetric | Mapping[str, Any],
                      project_id: str = PROVIDE_PROJECT_ID) -> LogMetric:
        """Create ``metric``; a taken name raises ``GoogleApiError`` with status 409."""
        metric = self._as_metric(metric)
        request = CreateLogMetricRequest(parent=f"projects/{project_id}", metric=metric)
        with explained(STAGE):
            return self.get_conn().create_log_metric(request=request)

    @GoogleBaseHook.fallback_to_default_project_id
    def update_metric(self, metric: LogMetric | Mapping[str, Any],
                      project_id: str = PROVIDE_PROJECT_ID) -> LogMetric:
        """Replace the metric named ``metric.name`` with ``metric``."""
        metric = self._as_metric(metric)
        request = UpdateLogMetricRequest(metric_name=self.metric_path(project_id, metric.name),
                                         metric=metric)
        with explained(STAGE):
            return self.get_conn().update_log_metric(request=request)

    @GoogleBaseHook.fallback_to_default_project_id
    def delete_metric(self, name: str, project_id: str = PROVIDE_PROJECT_ID) -> bool:
        """Delete the metric ``name``: True if deleted, False if it did not exist."""
        request = DeleteLogMetricRequest(metric_name=self.metric_path(project_id, name))
        with explained(STAGE):
            try:
                self.get_conn().delete_log_metric(request=request)
            except NotFound:
                return False
        return True
