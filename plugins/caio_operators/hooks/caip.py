"""AIPlatformPredictionHook: AI Platform Prediction (ml.googleapis.com v1) over REST.

The Google provider no longer ships an ML Engine hook, so this is a small one in the
provider's style: a GoogleBaseHook subclass, one method per remote call, keyword
arguments, ``project_id`` falling back to the connection's project. Requests go through
``google.auth.transport.requests.AuthorizedSession`` with the hook's credentials (pass
``session=`` to use another transport, e.g. a fake in tests). HTTP errors are raised as
``google.api_core.exceptions`` (NotFound, Conflict, PermissionDenied, ...), the same
family the Vertex AI clients raise, so callers and ``hooks.errors`` treat both alike.

REST reference: https://cloud.google.com/ai-platform/prediction/docs/reference/rest
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from airflow.providers.google.common.hooks.base_google import GoogleBaseHook

GLOBAL_HOST = "https://ml.googleapis.com"


def api_host(region: str | None) -> str:
    """The regional endpoint (``https://{region}-ml.googleapis.com``), or the global one."""
    if region and region != "global":
        return f"https://{region}-ml.googleapis.com"
    return GLOBAL_HOST


def _seg(value: str) -> str:
    return quote(str(value), safe="")


class AIPlatformPredictionHook(GoogleBaseHook):
    """Hook for AI Platform Prediction models, versions and operations.

    :param region: regional endpoint to use (``""``/``"global"``: the global endpoint).
    :param session: a ``requests.Session``-like object (``request(method, url, **kw)``);
        default: an ``AuthorizedSession`` over the connection's credentials.
    :param request_timeout_s: per-HTTP-request timeout.
    """

    conn_name_attr = "gcp_conn_id"
    default_conn_name = "google_cloud_default"
    hook_name = "AI Platform Prediction"

    def __init__(
        self,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: str | Sequence[str] | None = None,
        *,
        region: str = "",
        session: Any = None,
        request_timeout_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        **kwargs: Any,
    ) -> None:
        super().__init__(gcp_conn_id=gcp_conn_id, impersonation_chain=impersonation_chain,
                         **kwargs)
        self.region = region
        self._session = session
        self.request_timeout_s = request_timeout_s
        self._sleep = sleep

    @property
    def base_url(self) -> str:
        return api_host(self.region) + "/v1"

    def get_session(self) -> Any:
        """The HTTP session: the injected one, or an AuthorizedSession (created once)."""
        if self._session is None:
            from google.auth.transport.requests import AuthorizedSession

            self._session = AuthorizedSession(self.get_credentials())
        return self._session

    def _call(self, method: str, path: str, *, body: dict | None = None,
              params: dict | None = None) -> dict:
        from google.api_core import exceptions

        response = self.get_session().request(
            method, f"{self.base_url}/{path}", json=body, params=params,
            timeout=self.request_timeout_s)
        if response.status_code >= 400:
            raise exceptions.from_http_response(response)
        return response.json() if response.content else {}

    # -- models ---------------------------------------------------------------------

    @GoogleBaseHook.fallback_to_default_project_id
    def get_model(self, *, model: str, project_id: str) -> dict:
        """Get a model; raises NotFound if it does not exist."""
        return self._call("GET", f"projects/{_seg(project_id)}/models/{_seg(model)}")

    @GoogleBaseHook.fallback_to_default_project_id
    def create_model(self, *, model: dict, project_id: str) -> dict:
        """Create a model (``model["name"]`` required); raises Conflict if it exists."""
        return self._call("POST", f"projects/{_seg(project_id)}/models", body=model)

    @GoogleBaseHook.fallback_to_default_project_id
    def delete_model(self, *, model: str, project_id: str) -> dict | None:
        """Start deleting a model (it must have no versions); the operation, None if gone."""
        from google.api_core import exceptions

        try:
            return self._call("DELETE", f"projects/{_seg(project_id)}/models/{_seg(model)}")
        except exceptions.NotFound:
            return None

    # -- versions -------------------------------------------------------------------

    def _version_path(self, project_id: str, model: str, version: str | None = None) -> str:
        path = f"projects/{_seg(project_id)}/models/{_seg(model)}/versions"
        return f"{path}/{_seg(version)}" if version else path

    @GoogleBaseHook.fallback_to_default_project_id
    def get_version(self, *, model: str, version: str, project_id: str) -> dict:
        """Get a version (``state``: CREATING, READY, FAILED, ...); raises NotFound."""
        return self._call("GET", self._version_path(project_id, model, version))

    @GoogleBaseHook.fallback_to_default_project_id
    def create_version(self, *, model: str, version: dict, project_id: str) -> dict:
        """Start creating a version; returns the long-running operation."""
        return self._call("POST", self._version_path(project_id, model), body=version)

    @GoogleBaseHook.fallback_to_default_project_id
    def delete_version(self, *, model: str, version: str, project_id: str) -> dict | None:
        """Start deleting a version; the operation, or None if it is already gone."""
        from google.api_core import exceptions

        try:
            return self._call("DELETE", self._version_path(project_id, model, version))
        except exceptions.NotFound:
            return None

    @GoogleBaseHook.fallback_to_default_project_id
    def list_versions(self, *, model: str, project_id: str, page_size: int = 100) -> list[dict]:
        """All versions of a model (follows ``nextPageToken``)."""
        versions: list[dict] = []
        params: dict[str, Any] = {"pageSize": page_size}
        while True:
            page = self._call("GET", self._version_path(project_id, model), params=params)
            versions.extend(page.get("versions", []))
            token = page.get("nextPageToken")
            if not token:
                return versions
            params = {"pageSize": page_size, "pageToken": token}

    # -- operations -----------------------------------------------------------------

    def get_operation(self, *, name: str) -> dict:
        """Get an operation by its full name (``projects/{p}/operations/{id}``)."""
        return self._call("GET", quote(name, safe="/"))

    def wait_for_operation(
        self,
        operation: dict,
        *,
        timeout_s: float = 1800.0,
        initial_delay_s: float = 2.0,
        max_delay_s: float = 30.0,
        multiplier: float = 1.5,
    ) -> dict:
        """Poll ``operation`` until done, with exponential backoff, for at most ``timeout_s``.

        Returns the finished operation; raises the matching ``google.api_core`` exception
        if it finished with an error, TimeoutError if it did not finish in time.
        Transient polling errors (429, 5xx) are retried within the same deadline.
        """
        from google.api_core import exceptions

        deadline = time.monotonic() + timeout_s
        delay = initial_delay_s
        while not operation.get("done"):
            if time.monotonic() + delay > deadline:
                raise TimeoutError(
                    f"AI Platform operation {operation.get('name')} did not finish within "
                    f"{timeout_s:.0f}s; it may still complete: check it with "
                    f"`gcloud ai-platform operations describe {operation.get('name')}`")
            self._sleep(delay)
            delay = min(delay * multiplier, max_delay_s)
            try:
                operation = self.get_operation(name=operation["name"])
            except (exceptions.TooManyRequests, exceptions.ServerError):
                continue
        error = operation.get("error")
        if error:
            raise exceptions.from_grpc_status(
                int(error.get("code", 2)),
                f"operation {operation.get('name')} failed: {error.get('message', '')}",
                response=operation,
            )
        return operation
