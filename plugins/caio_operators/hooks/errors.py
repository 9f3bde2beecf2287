"""Turn Google API errors into messages that say what failed and which IAM role fixes it.

Works on the three error families the cloud adapters meet, found anywhere in the
exception's cause chain (the provider hooks wrap LRO failures in AirflowException):

* ``google.api_core.exceptions.GoogleAPICallError`` (GAPIC clients, LRO results and
  our REST hooks, which raise them via ``from_http_response``);
* ``googleapiclient.errors.HttpError`` (discovery-based clients);
* ``requests.HTTPError`` (plain REST calls).

Usage::

    with explained("vertex"):
        hook.upload_model(...)

or ``raise_clear(exc, "bigquery")`` in an ``except`` block. Anything that is not an
HTTP-style Google error passes through unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn


@dataclass(frozen=True)
class Stage:
    """What a stage does, the Google API it calls and the IAM roles it needs."""

    action: str
    service: str
    roles: tuple[str, ...]


# Keys are the ``stage`` argument of explain_google_error / raise_clear / explained.
STAGES: dict[str, Stage] = {
    "vertex": Stage("deploy to Vertex AI", "aiplatform.googleapis.com",
                    ("roles/aiplatform.user",)),
    "caip": Stage("deploy to AI Platform Prediction", "ml.googleapis.com",
                  ("roles/ml.developer",)),
    "storage": Stage("read or write the bucket", "storage.googleapis.com",
                     ("roles/storage.objectAdmin",)),
    "logging_metrics": Stage("create log-based metrics", "logging.googleapis.com",
                             ("roles/logging.configWriter",)),
    "monitoring_read": Stage("read Cloud Monitoring time series", "monitoring.googleapis.com",
                             ("roles/monitoring.viewer",)),
    "dashboards": Stage("create the Monitoring dashboard", "monitoring.googleapis.com",
                        ("roles/monitoring.dashboardEditor",)),
    "bigquery": Stage("write results to BigQuery", "bigquery.googleapis.com",
                      ("roles/bigquery.dataEditor", "roles/bigquery.jobUser")),
    "gke": Stage("run load generators on GKE", "container.googleapis.com",
                 ("roles/container.developer",)),
}

# How a 403 says "the API is off" rather than "you lack a role".
_NOT_ENABLED_HINTS = ("SERVICE_DISABLED", "has not been used in project", "it is disabled")


class GoogleApiError(RuntimeError):
    """A Google API call failed; ``str()`` says why and what to do.

    ``status`` is the HTTP status (0 if unknown), ``role`` the IAM role(s) the stage
    needs, ``retryable`` whether trying again later can help (quota, 5xx).
    """

    def __init__(self, message: str, *, stage: str, status: int, roles: tuple[str, ...]):
        super().__init__(message)
        self.stage = stage
        self.status = status
        self.roles = roles
        self.retryable = status == 429 or status >= 500

    @property
    def role(self) -> str:
        return " + ".join(self.roles)


@dataclass(frozen=True)
class _ApiError:
    status: int
    text: str
    reason: str = ""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _json_error(content: bytes | str | None) -> tuple[str, str]:
    """(message, reason) from a Google JSON error body, or ("", "")."""
    if not content:
        return "", ""
    try:
        payload = json.loads(content)
    except (ValueError, TypeError):
        return "", ""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return "", ""
    reason = ""
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("reason"):
            reason = str(detail["reason"])
            break
    return str(error.get("message") or ""), reason or str(error.get("status") or "")


def _as_api_error(exc: BaseException) -> _ApiError | None:
    """The HTTP status and the API's own message of one exception, if it is an API error."""
    from google.api_core import exceptions as core

    if isinstance(exc, core.GoogleAPICallError):
        if exc.code is None:
            return None
        return _ApiError(int(exc.code), exc.message or str(exc), exc.reason or "")
    from googleapiclient.errors import HttpError

    if isinstance(exc, HttpError):
        text, reason = _json_error(exc.content)
        return _ApiError(int(exc.resp.status), text or str(exc.reason or exc), reason)
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        text, reason = _json_error(exc.response.content)
        return _ApiError(exc.response.status_code, text or exc.response.text or str(exc), reason)
    return None


def find_api_error(exc: BaseException) -> tuple[int, str] | None:
    """(HTTP status, API message) of the first API error in ``exc``'s cause chain."""
    for cause in _causes(exc):
        found = _as_api_error(cause)
        if found is not None:
            return found.status, found.text
    return None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of the API error behind ``exc``, or None if there is none."""
    found = find_api_error(exc)
    return found[0] if found else None


def is_not_found(exc: BaseException) -> bool:
    """True if ``exc`` (or its cause) is an HTTP 404 / NOT_FOUND: gone counts as deleted."""
    return http_status(exc) == 404


def is_conflict(exc: BaseException) -> bool:
    """True if ``exc`` (or its cause) is an HTTP 409 / ALREADY_EXISTS."""
    return http_status(exc) == 409


def _stage(stage: str) -> Stage:
    return STAGES.get(stage, Stage(stage, "the Google API", ()))


def _grant_hint(info: Stage) -> str:
    if not info.roles:
        return "grant the Airflow service account the role this call needs."
    roles = " and ".join(info.roles)
    repeat = f" (repeat with --role={info.roles[1]})" if len(info.roles) > 1 else ""
    return (f"the Airflow service account (the connection's, or the last one of the "
            f"impersonation chain) needs {roles} on the project: gcloud projects "
            f"add-iam-policy-binding PROJECT --member=serviceAccount:SA_EMAIL "
            f"--role={info.roles[0]}{repeat}.")


def explain_google_error(exc: BaseException, stage: str) -> str:
    """A one-paragraph message for ``exc``: the API's own text plus what to do about it.

    ``stage`` is a key of STAGES (unknown names are used verbatim as the action).
    Non-API exceptions get ``"<action> failed: <exc>"``.
    """
    info = _stage(stage)
    found = None
    for cause in _causes(exc):
        found = _as_api_error(cause)
        if found is not None:
            break
    if found is None:
        return f"{info.action} failed: {type(exc).__name__}: {exc}"
    status, text = found.status, found.text.strip()
    head = f"{info.action} failed with HTTP {status}: {text}"
    if status == 403:
        if any(hint in f"{found.reason} {text}" for hint in _NOT_ENABLED_HINTS):
            return (f"{head}. The API is not enabled: gcloud services enable {info.service} "
                    f"--project PROJECT (needs roles/serviceusage.serviceUsageAdmin).")
        return f"{head}. Permission denied: {_grant_hint(info)}"
    if status == 401:
        return (f"{head}. The credentials were rejected: check the Airflow connection "
                f"(key file / ADC) and the impersonation chain.")
    if status == 429:
        return (f"{head}. A quota or rate limit of {info.service} is exhausted: lower replicas, "
                f"users or accelerators, or ask for more quota (IAM & Admin > Quotas) and "
                f"retry later.")
    if status == 404:
        return (f"{head}. Not found: check the project, region and resource names, and that "
                f"{info.service} is enabled in that project.")
    if status == 409:
        return f"{head}. The resource already exists or is busy with another operation."
    if status == 400:
        return (f"{head}. The request was rejected as invalid: check the parameters named in "
                f"the message (machine type, accelerator, runtime version, region, URIs).")
    return head + "."


def raise_clear(exc: BaseException, stage: str) -> NoReturn:
    """Raise GoogleApiError (explained, chained to ``exc``) if ``exc`` is an API error,
    else re-raise ``exc`` unchanged."""
    status = http_status(exc)
    if status is None:
        raise exc
    info = _stage(stage)
    raise GoogleApiError(explain_google_error(exc, stage), stage=stage, status=status,
                         roles=info.roles) from exc


@contextmanager
def explained(stage: str) -> Iterator[None]:
    """Context manager: API errors raised inside leave it as GoogleApiError (see raise_clear)."""
    try:
        yield
    except GoogleApiError:
        raise
    except Exception as exc:
        raise_clear(exc, stage)
