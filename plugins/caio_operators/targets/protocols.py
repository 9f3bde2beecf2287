"""Predict routes and JSON conventions of the three REST protocols we speak (pure, no TF).

| protocol    | predict route                                                                  |
|-------------|--------------------------------------------------------------------------------|
| `caip`      | `POST /v1/projects/{project}/models/{model}/versions/{version}:predict`         |
| `vertex`    | `POST /v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict` |
| `tfserving` | `POST /v1/models/{model}:predict`, `/v1/models/{model}/versions/{version}:predict` |

All three take the TF Serving "row" body `{"signature_name"?: str, "instances": [...]}`,
with string tensors sent as `{"b64": "<base64>"}`, and answer `{"predictions": [...]}`
(one dict of outputs per instance when the signature has several outputs, the bare value
when it has one) or `{"error": "..."}`.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

PROTOCOLS = ("caip", "vertex", "tfserving")
DEFAULT_SIGNATURE = "serving_default"
DEFAULT_LOCATION = "us-central1"

HEALTH_PATH = "/healthz"
OPENAPI_PATH = "/openapi.json"


class ProtocolError(ValueError):
    """A protocol name, URL or body that does not follow the conventions above."""


@dataclass(frozen=True)
class Route:
    """A matched request path: what it is, which protocol, and its path parameters."""

    kind: str  # "predict" | "health" | "model_status" | "openapi"
    method: str  # the one HTTP method the route accepts
    protocol: str | None = None
    params: dict[str, str] = field(default_factory=dict)


_SEGMENT = r"[^/]+"
_ROUTES: tuple[tuple[re.Pattern[str], str, str, str | None], ...] = tuple(
    (re.compile(pattern), kind, method, protocol)
    for pattern, kind, method, protocol in (
        (rf"/v1/projects/(?P<project>{_SEGMENT})/models/(?P<model>{_SEGMENT})"
         rf"/versions/(?P<version>[^/:]+):predict", "predict", "POST", "caip"),
        (rf"/v1/projects/(?P<project>{_SEGMENT})/locations/(?P<location>{_SEGMENT})"
         rf"/endpoints/(?P<endpoint>[^/:]+):predict", "predict", "POST", "vertex"),
        (r"/v1/models/(?P<model>[^/:]+)/versions/(?P<version>[^/:]+):predict",
         "predict", "POST", "tfserving"),
        (r"/v1/models/(?P<model>[^/:]+):predict", "predict", "POST", "tfserving"),
        (r"/v1/models/(?P<model>[^/:]+)/versions/(?P<version>[^/:]+)",
         "model_status", "GET", "tfserving"),
        (r"/v1/models/(?P<model>[^/:]+)", "model_status", "GET", "tfserving"),
        (re.escape(HEALTH_PATH), "health", "GET", None),
        (re.escape(OPENAPI_PATH), "openapi", "GET", None),
    )
)


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ProtocolError(
            f"unknown protocol {protocol!r}; known protocols: {', '.join(PROTOCOLS)}")
    return protocol


def _segment(name: str, value: str | None) -> str:
    if value is None or str(value) == "":
        raise ProtocolError(f"{name} is required to build this predict URL")
    return quote(str(value), safe="")


def predict_path(
    protocol: str,
    *,
    project: str = "local",
    model: str | None = None,
    version: str | None = None,
    location: str = DEFAULT_LOCATION,
    endpoint: str | None = None,
) -> str:
    """The predict route of ``protocol`` (path parameters are URL-quoted).

    ``tfserving`` without a ``version`` targets the latest version of ``model``.
    """
    check_protocol(protocol)
    if protocol == "caip":
        return (f"/v1/projects/{_segment('project', project)}/models/{_segment('model', model)}"
                f"/versions/{_segment('version', version)}:predict")
    if protocol == "vertex":
        return (f"/v1/projects/{_segment('project', project)}"
                f"/locations/{_segment('location', location)}"
                f"/endpoints/{_segment('endpoint', endpoint)}:predict")
    if version in (None, ""):
        return f"/v1/models/{_segment('model', model)}:predict"
    return f"/v1/models/{_segment('model', model)}/versions/{_segment('version', version)}:predict"


def predict_url(
    protocol: str,
    base_url: str,
    project: str = "local",
    model: str | None = None,
    version: str | None = None,
    location: str = DEFAULT_LOCATION,
    endpoint: str | None = None,
) -> str:
    """``base_url`` (scheme://host[:port][/prefix]) joined with the predict route."""
    check_base_url(base_url)
    path = predict_path(protocol, project=project, model=model, version=version,
                        location=location, endpoint=endpoint)
    return base_url.rstrip("/") + path


def check_base_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host, else a ProtocolError."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ProtocolError(
            f"{url!r} is not an http:// or https:// URL with a host; "
            "give e.g. http://127.0.0.1:8501 or https://host/prefix")
    return url


def cloud_base_url(protocol: str, region: str = DEFAULT_LOCATION) -> str:
    """The Google API host serving ``protocol`` in ``region`` (not used for tfserving)."""
    check_protocol(protocol)
    if protocol == "vertex":
        return f"https://{region}-aiplatform.googleapis.com"
    if protocol == "caip":
        return f"https://{region}-ml.googleapis.com" if region else "https://ml.googleapis.com"
    raise ProtocolError("tfserving has no cloud host; give the endpoint URL")


def match_route(path: str) -> Route | None:
    """The route that ``path`` (no query string needed) names, or None if it names none."""
    path = path.split("?", 1)[0]
    for pattern, kind, method, protocol in _ROUTES:
        found = pattern.fullmatch(path)
        if found:
            params = {key: unquote(value) for key, value in found.groupdict().items()}
            return Route(kind=kind, method=method, protocol=protocol, params=params)
    return None


# Bodies -----------------------------------------------------------------------------------


def b64(data: bytes) -> dict[str, str]:
    """A string-tensor value in JSON: ``{"b64": "<base64>"}``."""
    return {"b64": base64.b64encode(data).decode("ascii")}


def predict_body(instances: list, signature_name: str | None = None) -> dict:
    """A predict request body; ``signature_name`` None leaves the server default."""
    body: dict = {"instances": list(instances)}
    if signature_name:
        body["signature_name"] = signature_name
    return body


def error_body(message: str) -> dict[str, str]:
    return {"error": message}


def predictions_body(predictions: list) -> dict[str, list]:
    return {"predictions": predictions}


@dataclass(frozen=True)
class PredictRequest:
    signature_name: str
    instances: list


def parse_predict_body(body: object) -> PredictRequest:
    """Check a decoded JSON predict body; a ProtocolError says what is wrong with it."""
    if not isinstance(body, dict):
        raise ProtocolError(
            f"request body must be a JSON object like {{\"instances\": [...]}}, "
            f"got {type(body).__name__}")
    signature = body.get("signature_name", DEFAULT_SIGNATURE)
    if signature is None:
        signature = DEFAULT_SIGNATURE
    if not isinstance(signature, str):
        raise ProtocolError(f"signature_name must be a string, got {type(signature).__name__}")
    if "instances" not in body:
        hint = " (the columnar 'inputs' format is not supported)" if "inputs" in body else ""
        raise ProtocolError(f"request body has no 'instances' list{hint}")
    instances = body["instances"]
    if not isinstance(instances, list):
        raise ProtocolError(f"'instances' must be a list, got {type(instances).__name__}")
    if not instances:
        raise ProtocolError("'instances' is empty; send at least one instance")
    return PredictRequest(signature_name=signature, instances=instances)
