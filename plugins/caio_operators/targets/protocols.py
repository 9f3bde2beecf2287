"""Routes, bodies and error shapes of the three REST protocols we speak (pure, no TF).

| protocol    | routes                                                                  |
|-------------|-------------------------------------------------------------------------|
| `caip`      | `POST /v1/projects/{p}/models/{m}/versions/{v}:predict`                 |
| `vertex`    | `POST /v1/projects/{p}/locations/{l}/endpoints/{e}:predict`, `:rawPredict` |
| `tfserving` | `POST /v1/models/{m}[/versions/{v}]:predict`, `GET` the same without |
|             | `:predict` (status) or with `/metadata` instead (metadata)              |

Requests take the TF Serving "row" body `{"signature_name"?: str, "instances": [...]}`, with
string tensors sent as `{"b64": "<base64>"}`, except Vertex AI's `:predict`, whose body is
`{"instances": [...], "parameters"?: {...}}` only (it serves the default signature; its
`:rawPredict` passes a TF Serving body through). Answers are `{"predictions": [...]}` (one
dict of outputs per instance when the signature has several outputs, the bare value when
it has one); Vertex's `:predict` adds the deployed model's ids.

Errors follow each service's documentation:

- TF Serving: `{"error": "<message>"}` with the HTTP status of the failure.
- Vertex AI: Google's error shape `{"error": {"code", "message", "status"}}` (what
  `google.api_core` turns into its exception classes); an error from the model server
  behind the endpoint is 400 `FAILED_PRECONDITION`, as Vertex reports its container's
  errors.
- AI Platform Prediction: a malformed request is an HTTP error in Google's shape, but a
  prediction that fails (bad instances, unknown signature, the model's own error) is
  HTTP 200 with `{"error": "Prediction failed: <message>"}` instead of predictions.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from caio_operators.spec.declare import PROTOCOLS

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_LOCATION = "us-central1"

HEALTH_PATH = "/healthz"
OPENAPI_PATH = "/openapi.json"


class ProtocolError(ValueError):
    """A protocol name, URL or body that does not follow the conventions above."""


@dataclass(frozen=True)
class Route:
    """A matched request path: what it is, which protocol, and its path parameters."""

    kind: str  # "predict" | "health" | "model_status" | "model_metadata" | "openapi"
    method: str  # the one HTTP method the route accepts
    protocol: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    # Request and answer convention of a predict route: "tfserving" (signature_name,
    # instances -> predictions), "vertex" (instances, parameters -> predictions + ids) or
    # "vertex_raw" (a TF Serving body, raw or as the JSON of Vertex's RawPredictRequest).
    body: str = "tfserving"


_SEGMENT = r"[^/]+"
_MODEL = r"/v1/models/(?P<model>[^/:]+)"
_VERSION = r"/versions/(?P<version>[^/:]+)"
_ENDPOINT = (rf"/v1/projects/(?P<project>{_SEGMENT})/locations/(?P<location>{_SEGMENT})"
             rf"/endpoints/(?P<endpoint>[^/:]+)")
_ROUTES: tuple[tuple[re.Pattern[str], str, str, str | None, str], ...] = tuple(
    (re.compile(pattern), kind, method, protocol, body)
    for pattern, kind, method, protocol, body in (
        (rf"/v1/projects/(?P<project>{_SEGMENT})/models/(?P<model>{_SEGMENT})"
         rf"/versions/(?P<version>[^/:]+):predict", "predict", "POST", "caip", "tfserving"),
        (rf"{_ENDPOINT}:predict", "predict", "POST", "vertex", "vertex"),
        (rf"{_ENDPOINT}:rawPredict", "predict", "POST", "vertex", "vertex_raw"),
        (rf"{_MODEL}{_VERSION}:predict", "predict", "POST", "tfserving", "tfserving"),
        (rf"{_MODEL}:predict", "predict", "POST", "tfserving", "tfserving"),
        (rf"{_MODEL}{_VERSION}/metadata", "model_metadata", "GET", "tfserving", "tfserving"),
        (rf"{_MODEL}/metadata", "model_metadata", "GET", "tfserving", "tfserving"),
        (rf"{_MODEL}{_VERSION}", "model_status", "GET", "tfserving", "tfserving"),
        (_MODEL, "model_status", "GET", "tfserving", "tfserving"),
        (re.escape(HEALTH_PATH), "health", "GET", None, "tfserving"),
        (re.escape(OPENAPI_PATH), "openapi", "GET", None, "tfserving"),
    )
)
# Paths under this prefix are Google API resources: an unknown one is answered in
# Google's error shape, so that Google's clients raise their own exceptions for it.
GOOGLE_API_PREFIX = "/v1/projects/"
# Google's canonical status per HTTP code (google.rpc.Code, as its HTTP mapping documents).
GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 405: "UNIMPLEMENTED", 408: "DEADLINE_EXCEEDED", 409: "ABORTED",
    411: "INVALID_ARGUMENT", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
CAIP_PREDICTION_FAILED = "Prediction failed: "


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
    for pattern, kind, method, protocol, body in _ROUTES:
        found = pattern.fullmatch(path)
        if found:
            params = {key: unquote(value) for key, value in found.groupdict().items()}
            return Route(kind=kind, method=method, protocol=protocol, params=params, body=body)
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
    """TF Serving's error body (also the local server's for requests it cannot route)."""
    return {"error": message}


def google_error_body(status: int, message: str, code_name: str | None = None) -> dict:
    """Google's JSON error: what ``google.api_core.exceptions.from_http_response`` reads."""
    return {"error": {"code": status, "message": message,
                      "status": code_name or GOOGLE_STATUS.get(status, "UNKNOWN")}}


def error_answer(protocol: str | None, status: int, message: str, *, path: str = "",
                 prediction: bool = False) -> tuple[int, dict]:
    """(HTTP status, JSON body) of a failure on a route of ``protocol`` (None: no route
    matched ``path``), in the shape that protocol's clients expect.

    ``prediction``: the model server failed the request (its instances, signature or the
    model itself), as opposed to the request's own form (JSON, route, method, size).
    """
    if protocol is None and path.split("?", 1)[0].startswith(GOOGLE_API_PREFIX):
        protocol = "vertex"  # an unknown Google resource: Google's shape
    if protocol == "caip" and prediction:
        return 200, {"error": CAIP_PREDICTION_FAILED + message}
    if protocol in ("caip", "vertex"):
        name = "FAILED_PRECONDITION" if prediction and status == 400 else None
        return status, google_error_body(status, message, name)
    return status, error_body(message)


def predictions_body(predictions: list, ids: dict[str, str] | None = None) -> dict:
    """``{"predictions": [...]}``, plus ``ids`` (Vertex's deployed model ids) when given."""
    return {"predictions": predictions, **(ids or {})}


def unwrap_raw_predict(document: object) -> object:
    """The TF Serving body inside Vertex's RawPredictRequest as JSON,
    ``{"httpBody": {"contentType", "data": <base64>}}`` (what Google's REST client sends to
    ``:rawPredict``; curl and gcloud send the body itself, returned unchanged)."""
    if not (isinstance(document, dict) and set(document) == {"httpBody"}):
        return document
    http_body = document["httpBody"]
    data = http_body.get("data", "") if isinstance(http_body, dict) else None
    if not isinstance(data, str):
        raise ProtocolError("httpBody must be an object with a base64 'data' string")
    try:
        return json.loads(base64.b64decode(data, validate=True))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"httpBody.data is not base64 of a JSON body: {exc}") from None


@dataclass(frozen=True)
class PredictRequest:
    signature_name: str
    instances: list


VERTEX_PREDICT_FIELDS = ("instances", "parameters")


def parse_predict_body(body: object, convention: str = "tfserving") -> PredictRequest:
    """Check a decoded JSON predict body of ``convention`` (`Route.body`); a ProtocolError
    says what is wrong with it."""
    if not isinstance(body, dict):
        raise ProtocolError(
            f"request body must be a JSON object like {{\"instances\": [...]}}, "
            f"got {type(body).__name__}")
    if convention == "vertex":
        unknown = sorted(set(body) - set(VERTEX_PREDICT_FIELDS))
        if unknown:
            # Vertex AI's own words for a field its PredictRequest does not have.
            raise ProtocolError(
                f"Invalid JSON payload received. Unknown name {unknown[0]!r}: Cannot find "
                "field. (:predict takes only 'instances' and 'parameters' and serves the "
                "default signature; send a TF Serving body with signature_name to "
                ":rawPredict)")
        parameters = body.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise ProtocolError(
                f"'parameters' must be an object, got {type(parameters).__name__}")
        signature = DEFAULT_SIGNATURE
    else:
        signature = body.get("signature_name", DEFAULT_SIGNATURE)
        if signature is None:
            signature = DEFAULT_SIGNATURE
        if not isinstance(signature, str):
            raise ProtocolError(
                f"signature_name must be a string, got {type(signature).__name__}")
    if "instances" not in body:
        hint = " (the columnar 'inputs' format is not supported)" if "inputs" in body else ""
        raise ProtocolError(f"request body has no 'instances' list{hint}")
    instances = body["instances"]
    if not isinstance(instances, list):
        raise ProtocolError(f"'instances' must be a list, got {type(instances).__name__}")
    if not instances:
        raise ProtocolError("'instances' is empty; send at least one instance")
    return PredictRequest(signature_name=signature, instances=instances)
