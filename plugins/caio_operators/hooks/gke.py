"""Talking to a GKE cluster's Kubernetes API from Airflow: an authenticated client built
the way the Google provider's GKE operators build theirs, and Kubernetes API errors turned
into messages that say what to do.

The provider already has the hooks (``GKEHook``, ``GKEKubernetesHook``): nothing to subclass,
only the two calls to chain. ``kubernetes`` and the provider are imported inside
:func:`connect` (they take seconds to import); errors are read duck-typed from
``kubernetes.client.exceptions.ApiException`` (``status``, ``reason``, ``body``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from caio_operators.hooks.errors import STAGES, explained


def connect(*, project_id: str, location: str, cluster: str,
            gcp_conn_id: str = "google_cloud_default",
            impersonation_chain: str | Sequence[str] | None = None,
            use_internal_ip: bool = False, use_dns_endpoint: bool = False,
            cluster_hook: Any = None) -> Any:
    """A ``kubernetes.client.ApiClient`` for a GKE cluster with the Airflow connection's
    credentials, the way the provider's GKE operators build it: ``GKEHook.get_cluster`` for
    the endpoint and CA certificate, ``GKEKubernetesHook.get_conn`` for the client (bearer
    tokens from the connection, refreshed as they expire)."""
    from airflow.providers.google.cloud.hooks.kubernetes_engine import (
        GKEHook,
        GKEKubernetesHook,
    )

    cluster_hook = cluster_hook or GKEHook(gcp_conn_id=gcp_conn_id, location=location,
                                           impersonation_chain=impersonation_chain)
    url, ca_cert = cluster_endpoint(cluster_hook, project_id=project_id, cluster=cluster,
                                    use_internal_ip=use_internal_ip,
                                    use_dns_endpoint=use_dns_endpoint)
    hook = GKEKubernetesHook(gcp_conn_id=gcp_conn_id, impersonation_chain=impersonation_chain,
                             cluster_url=url, ssl_ca_cert=ca_cert,
                             use_dns_endpoint=use_dns_endpoint)
    return hook.get_conn()


def cluster_endpoint(cluster_hook: Any, *, project_id: str, cluster: str,
                     use_internal_ip: bool = False,
                     use_dns_endpoint: bool = False) -> tuple[str, str]:
    """(API server URL, CA certificate) of a cluster, as the provider's
    ``GKEClusterAuthDetails`` picks them; a Google API error comes out explained (the
    ``gke`` stage: which IAM role is missing)."""
    with explained("gke"):
        found = cluster_hook.get_cluster(name=cluster, project_id=project_id)
    if use_dns_endpoint:
        host = found.control_plane_endpoints_config.dns_endpoint_config.endpoint
    elif use_internal_ip:
        host = found.private_cluster_config.private_endpoint
    else:
        host = found.endpoint
    return f"https://{host}", found.master_auth.cluster_ca_certificate


def explain_api_error(exc: BaseException, action: str, namespace: str = "") -> str:
    """A message for a Kubernetes API error: its status and message plus what to do."""
    status = getattr(exc, "status", None)
    message = api_message(exc)
    head = f"{action} failed with HTTP {status}: {message}"
    if status == 403:
        roles = " and ".join(STAGES["gke"].roles)
        return (f"{head}. Permission denied: the Airflow service account (the connection's, "
                f"or the last one of the impersonation chain) needs {roles} on the cluster's "
                f"project (create Jobs and Services, read pods and their logs in namespace "
                f"{namespace or 'the namespace'}).")
    if status == 401:
        return f"{head}. The cluster rejected the credentials: check the Airflow connection."
    if status == 404 and namespace and "namespace" in message.lower():
        return f"{head}. Create namespace {namespace} or set gke_namespace to an existing one."
    if status == 422:
        return f"{head}. The object was rejected as invalid (see the message)."
    if status == 429 or (status or 0) >= 500:
        return f"{head}. The API server is busy or failing; retry the task."
    return head + "."


def api_message(exc: BaseException) -> str:
    """The API server's own message (the Status body's ``message``), else the reason."""
    body = getattr(exc, "body", None)
    if body:
        try:
            doc = json.loads(body)
            if isinstance(doc, dict) and doc.get("message"):
                return str(doc["message"])
        except (TypeError, ValueError):
            pass
    reason = getattr(exc, "reason", None)
    return str(reason or exc).strip()


def api_status(exc: BaseException) -> int | None:
    """The HTTP status of a kubernetes ``ApiException`` (duck-typed: its import is slow)."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


__all__ = ["api_message", "api_status", "cluster_endpoint", "connect", "explain_api_error"]
