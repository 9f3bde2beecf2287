"""hooks.errors: Google API errors from every client family become clear, role-naming messages."""

from __future__ import annotations

import json

import pytest
import requests
from google.api_core import exceptions

from caio_operators.hooks.errors import (
    STAGES,
    GoogleApiError,
    explain_google_error,
    explained,
    http_status,
    is_not_found,
    raise_clear,
)


def _http_error(status: int, message: str, status_name: str, reason: str = ""):
    body = {"error": {"code": status, "message": message, "status": status_name}}
    if reason:
        body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                     "reason": reason}]
    return body


def _requests_error(status: int, payload: dict) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(payload).encode()
    response.url = "https://monitoring.googleapis.com/v3/projects/p/timeSeries"
    response.request = requests.Request("GET", response.url).prepare()
    return requests.HTTPError(f"{status} error", response=response)


def _discovery_error(status: int, payload: dict):
    import httplib2
    from googleapiclient.errors import HttpError

    resp = httplib2.Response({"status": str(status), "content-type": "application/json"})
    resp.reason = "Forbidden"
    return HttpError(resp, json.dumps(payload).encode(),
                     uri="https://logging.googleapis.com/v2/projects/p/metrics")


def test_every_stage_names_its_roles():
    expected = {
        "vertex": ("roles/aiplatform.user",), "caip": ("roles/ml.developer",),
        "storage": ("roles/storage.objectAdmin",),
        "logging_metrics": ("roles/logging.configWriter",),
        "monitoring_read": ("roles/monitoring.viewer",),
        "dashboards": ("roles/monitoring.dashboardEditor",),
        "bigquery": ("roles/bigquery.dataEditor", "roles/bigquery.jobUser"),
        "gke": ("roles/container.developer",),
    }
    assert {name: stage.roles for name, stage in STAGES.items()} == expected
    for name, roles in expected.items():
        message = explain_google_error(exceptions.PermissionDenied("denied"), name)
        assert all(role in message for role in roles), message


def test_api_core_permission_denied_keeps_the_api_text_and_names_the_role():
    exc = exceptions.PermissionDenied(
        "Permission 'aiplatform.endpoints.create' denied on resource "
        "'//aiplatform.googleapis.com/projects/p/locations/us-central1'")
    message = explain_google_error(exc, "vertex")
    assert "aiplatform.endpoints.create" in message
    assert "HTTP 403" in message and "roles/aiplatform.user" in message


def test_requests_http_error_403_for_bigquery_names_both_roles():
    exc = _requests_error(403, _http_error(
        403, "Access Denied: Table p:caio.runs: Permission bigquery.tables.updateData denied",
        "PERMISSION_DENIED"))
    message = explain_google_error(exc, "bigquery")
    assert "bigquery.tables.updateData" in message
    assert "roles/bigquery.dataEditor" in message and "roles/bigquery.jobUser" in message


def test_googleapiclient_http_error_403_is_understood():
    exc = _discovery_error(403, _http_error(
        403, "Permission 'logging.logMetrics.create' denied", "PERMISSION_DENIED"))
    assert http_status(exc) == 403
    message = explain_google_error(exc, "logging_metrics")
    assert "logging.logMetrics.create" in message and "roles/logging.configWriter" in message


def test_disabled_api_says_enable_it_rather_than_grant_a_role():
    exc = _requests_error(403, _http_error(
        403, "Cloud Monitoring API has not been used in project 123 before or it is disabled.",
        "PERMISSION_DENIED", reason="SERVICE_DISABLED"))
    message = explain_google_error(exc, "monitoring_read")
    assert "gcloud services enable monitoring.googleapis.com" in message


def test_quota_not_found_and_invalid_get_their_own_advice():
    quota = explain_google_error(exceptions.ResourceExhausted(
        "Quota exceeded for aiplatform.googleapis.com/custom_model_serving_cpus"), "vertex")
    assert "HTTP 429" in quota and "quota" in quota and "custom_model_serving_cpus" in quota
    missing = explain_google_error(exceptions.NotFound("Endpoint 12 not found"), "vertex")
    assert "HTTP 404" in missing and "Endpoint 12 not found" in missing and "region" in missing
    invalid = explain_google_error(
        exceptions.BadRequest("Machine type n9-huge is not supported"), "caip")
    assert "HTTP 400" in invalid and "n9-huge" in invalid and "invalid" in invalid


def test_errors_wrapped_by_the_provider_are_found_in_the_cause_chain():
    from airflow.exceptions import AirflowException

    try:
        try:
            raise exceptions.PermissionDenied("Permission 'aiplatform.models.upload' denied")
        except exceptions.GoogleAPICallError as inner:
            raise AirflowException("Google API error on operation result call") from inner
    except AirflowException as outer:
        wrapped = outer
    assert http_status(wrapped) == 403
    assert "aiplatform.models.upload" in explain_google_error(wrapped, "vertex")
    assert not is_not_found(wrapped)
    assert is_not_found(exceptions.NotFound("gone"))


def test_raise_clear_chains_api_errors_and_passes_others_through():
    original = exceptions.TooManyRequests("Rate exceeded")
    with pytest.raises(GoogleApiError) as caught:
        raise_clear(original, "storage")
    assert caught.value.__cause__ is original
    assert caught.value.status == 429 and caught.value.retryable
    assert caught.value.role == "roles/storage.objectAdmin"

    with pytest.raises(KeyError):
        raise_clear(KeyError("not an API error"), "storage")


def test_explained_context_manager():
    with pytest.raises(GoogleApiError, match=r"roles/container\.developer"), explained("gke"):
        raise exceptions.Forbidden("pods is forbidden: cannot create resource pods")
    with pytest.raises(ValueError, match="plain"), explained("gke"):
        raise ValueError("plain")


def test_non_api_errors_still_get_a_stage_prefix():
    message = explain_google_error(TimeoutError("operation took too long"), "caip")
    assert message.startswith("deploy to AI Platform Prediction failed: TimeoutError")
