"""MonitoringHook: the Cloud Monitoring clients a cloud run needs, built from a connection.

The provider's ``CloudMonitoringHook`` covers alert policies and notification channels;
a benchmark needs time series (``monitoring_v3.MetricServiceClient``) and dashboards (the
Dashboards API, ``monitoring`` v1, through googleapiclient's bundled discovery document,
so no extra package and no discovery fetch). Both can be injected for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.providers.google.common.hooks.base_google import GoogleBaseHook


class MonitoringHook(GoogleBaseHook):
    """Clients for Cloud Monitoring time series and dashboards.

    :param metric_client: a ``MetricServiceClient`` (or fake) to use instead of building one.
    :param dashboards_service: a Dashboards API discovery client (or fake) likewise.
    """

    def __init__(
        self,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: str | Sequence[str] | None = None,
        *,
        metric_client: Any = None,
        dashboards_service: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(gcp_conn_id=gcp_conn_id, impersonation_chain=impersonation_chain,
                         **kwargs)
        self._metric_client = metric_client
        self._dashboards_service = dashboards_service

    def get_metric_client(self) -> Any:
        """``monitoring_v3.MetricServiceClient`` with the hook's credentials (built once)."""
        if self._metric_client is None:
            from airflow.providers.google.common.consts import CLIENT_INFO
            from google.cloud import monitoring_v3

            self._metric_client = monitoring_v3.MetricServiceClient(
                credentials=self.get_credentials(),
                client_info=CLIENT_INFO,
                client_options=self.get_client_options(),
            )
        return self._metric_client

    def get_dashboards_service(self, http: Any = None) -> Any:
        """The Dashboards API (``monitoring`` v1) client, from the bundled discovery document.

        ``http`` overrides the authorized transport (tests pass a fake one).
        """
        if self._dashboards_service is None:
            from googleapiclient.discovery import build

            self._dashboards_service = build(
                "monitoring", "v1", http=http or self._authorize(), cache_discovery=False,
                static_discovery=True,
            )
        return self._dashboards_service
