"""What the local model server answers, independent of HTTP plumbing and of TensorFlow.

`ServingApp.handle(method, path, body)` maps one request to one `Reply`. The model is
reached through ``predict``: a callable ``(signature_name, inputs) -> outputs`` over numpy
arrays, so the app is tested with a numpy stand-in and served with a TF SavedModel. With a
`Batcher`, concurrent requests share model calls. Each reply says how long its request spent
in the model (and queued for it), so that the server's records split model time from the
server's own overhead (parsing, decoding, encoding).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

import numpy as np

from caio_operators.targets import protocols
from caio_operators.targets.batching import Batcher
from caio_operators.targets.instances import (
    STRING,
    InstanceError,
    SignatureInfo,
    TensorInfo,
    decode_instances,
    encode_predictions,
    fast_float_instances,
    msgspec,
)
from caio_operators.targets.openapi import openapi_document

log = logging.getLogger(__name__)

Predict = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]

def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    signature: str = ""
    instances: int = 0
    error: str = ""  # set for every failure, also AI Platform's 200 "Prediction failed"
    record: bool = True  # probes (health, status, openapi) are not workload records
    allow: str = ""  # Allow header for 405
    model_ms: float = 0.0  # in the model call that served it
    queue_ms: float = 0.0  # waiting for that call (dynamic batching)

    @property
    def ok(self) -> bool:
        return self.status < 400 and not self.error


def json_bytes(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


def error_reply(status: int, message: str, path: str = "", **fields) -> Reply:
    """A failure of the HTTP exchange (framing, size, deadline) of a request for ``path``
    (empty: not read), in the error shape of the protocol whose route it names."""
    route = protocols.match_route(path) if path else None
    return route_error(route.protocol if route else None, status, message, path=path,
                       **fields)


def route_error(protocol: str | None, status: int, message: str, *, path: str = "",
                prediction: bool = False, **fields) -> Reply:
    """A failure on a route, in the error shape of its protocol (see protocols.py)."""
    code, body = protocols.error_answer(protocol, status, message, path=path,
                                        prediction=prediction)
    return Reply(status=code, body=json_bytes(body), error=message, **fields)


class _Failed(Exception):
    """A predict request that fails; `ServingApp._predict` renders it for the route."""

    def __init__(self, status: int, message: str, *, prediction: bool, signature: str = "",
                 instances: int = 0) -> None:
        super().__init__(message)
        self.status, self.message, self.prediction = status, message, prediction
        self.signature, self.instances = signature, instances


# TensorFlow's DataType enum names (tensorflow/core/framework/types.proto) per dtype name.
_TF_DTYPES = {
    "float16": "DT_HALF", "bfloat16": "DT_BFLOAT16", "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE", "int8": "DT_INT8", "int16": "DT_INT16", "int32": "DT_INT32",
    "int64": "DT_INT64", "uint8": "DT_UINT8", "uint16": "DT_UINT16", "uint32": "DT_UINT32",
    "uint64": "DT_UINT64", "bool": "DT_BOOL", "complex64": "DT_COMPLEX64",
    "complex128": "DT_COMPLEX128", STRING: "DT_STRING",
}


def _tensor_metadata(info: TensorInfo) -> dict:
    # TensorInfo as protobuf JSON with field names kept (as TF Serving prints it): int64
    # sizes are strings, -1 an unknown dimension. The graph tensor names are not known here.
    if info.shape is None:
        shape: dict = {"dim": [], "unknown_rank": True}
    else:
        shape = {"dim": [{"size": str(-1 if d is None else d), "name": ""}
                         for d in info.shape], "unknown_rank": False}
    return {"dtype": _TF_DTYPES.get(info.dtype, "DT_INVALID"), "tensor_shape": shape}


def tfserving_metadata(model_name: str, model_version: str,
                       signatures: dict[str, SignatureInfo]) -> dict:
    """TF Serving's GetModelMetadataResponse for this model, as its REST API answers
    ``GET /v1/models/{model}[/versions/{version}]/metadata``."""
    return {
        "model_spec": {"name": model_name, "signature_name": "", "version": model_version},
        "metadata": {"signature_def": {"signature_def": {
            name: {"inputs": {t.name: _tensor_metadata(t) for t in sig.inputs},
                   "outputs": {t.name: _tensor_metadata(t) for t in sig.outputs},
                   "method_name": "tensorflow/serving/predict"}
            for name, sig in sorted(signatures.items())}}},
    }


class ServingApp:
    def __init__(
        self,
        *,
        model_name: str,
        model_version: str,
        signatures: dict[str, SignatureInfo],
        predict: Predict,
        client_errors: tuple[type[BaseException], ...] = (),
        replica: int = 0,
        batcher: Batcher | None = None,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.signatures = signatures
        self.predict = predict
        self.batcher = batcher  # when set, model calls go through it (and not `predict`)
        self.client_errors = client_errors  # model errors caused by the input (TF InvalidArgument)
        self.replica = replica
        self._openapi = json_bytes(openapi_document(model_name, model_version, signatures))
        self._health = json_bytes({
            "status": "ok", "replica": replica, "model": model_name,
            "version": model_version, "signatures": sorted(signatures)})
        self._status = json_bytes({"model_version_status": [{
            "version": model_version, "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]})
        self._metadata = json_bytes(tfserving_metadata(model_name, model_version, signatures))

    # routing -------------------------------------------------------------------------------

    def handle(self, method: str, path: str, body: bytes) -> Reply:
        route = protocols.match_route(path)
        if route is None:
            return route_error(None, 404, f"no route {path.split('?', 1)[0][:200]!r}; predict "
                               "at /v1/models/{model}:predict (see /openapi.json)", path=path)
        head = method == "HEAD" and route.method == "GET"
        if method != route.method and not head:
            return route_error(route.protocol, 405, f"{method} is not allowed on {route.kind} "
                               f"routes; use {route.method}", allow=route.method,
                               record=route.kind == "predict")
        if route.kind == "health":
            return Reply(200, self._health, record=False)
        if route.kind == "openapi":
            return Reply(200, self._openapi, record=False)
        missing = self._not_served(route)
        if missing:
            return missing
        if route.kind == "model_status":
            return Reply(200, self._status, record=False)
        if route.kind == "model_metadata":
            return Reply(200, self._metadata, record=False)
        try:
            return self._predict(route, body)
        except _Failed as failed:
            return route_error(route.protocol, failed.status, failed.message,
                               prediction=failed.prediction, signature=failed.signature,
                               instances=failed.instances)

    def _not_served(self, route: protocols.Route) -> Reply | None:
        model = route.params.get("model")
        version = route.params.get("version")
        if (model is not None and model != self.model_name) or (
                version is not None and version != self.model_version):
            asked = f"model {model!r}" + (f" version {version!r}" if version else "")
            return route_error(route.protocol, 404, f"{asked} is not served here; this server "
                               f"serves model {self.model_name!r} version "
                               f"{self.model_version!r}", record=route.kind == "predict")
        return None

    # predict -------------------------------------------------------------------------------

    def _predict(self, route: protocols.Route, body: bytes) -> Reply:
        name, signature, inputs = self._fast_inputs(body, route) or self._decode(body, route)
        count = len(next(iter(inputs.values())))
        started = time.perf_counter()
        try:
            if self.batcher is not None:
                outputs, timing = self.batcher.predict(name, inputs)
                model_ms, queue_ms = timing.model_s * 1000, timing.queue_s * 1000
            else:
                outputs = self.predict(name, inputs)
                model_ms, queue_ms = (time.perf_counter() - started) * 1000, 0.0
        except self.client_errors as exc:
            message = model_error_text(getattr(exc, "message", None) or str(exc))
            raise _Failed(400, f"the model rejected the input of {name!r}: {message}",
                          prediction=True, signature=name, instances=count) from None
        except Exception as exc:
            log.exception("prediction failed for signature %s", name)
            raise _Failed(500, f"prediction failed: {type(exc).__name__}: "
                          f"{_first_line(str(exc))}", prediction=True, signature=name,
                          instances=count) from None
        predictions = encode_predictions(signature, outputs)
        ids = self._vertex_ids(route) if route.body == "vertex" else None
        try:
            payload = json_bytes(protocols.predictions_body(predictions, ids))
        except ValueError as exc:  # NaN or inf in the outputs: not JSON
            raise _Failed(500, f"predictions are not JSON-serialisable: {exc}",
                          prediction=True, signature=name, instances=count) from None
        return Reply(200, payload, signature=name, instances=count, model_ms=model_ms,
                     queue_ms=queue_ms)

    def _vertex_ids(self, route: protocols.Route) -> dict[str, str]:
        """The ids Vertex AI adds to a :predict answer, for this server's one model."""
        params = route.params
        return {"deployedModelId": self.model_version,
                "model": f"projects/{params['project']}/locations/{params['location']}"
                         f"/models/{self.model_name}",
                "modelDisplayName": self.model_name}

    def _decode(self, body: bytes, route: protocols.Route
                ) -> tuple[str, SignatureInfo, dict[str, np.ndarray]]:
        """(signature name, signature, input arrays) of a predict body, or `_Failed`."""
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Failed(400, f"request body is not valid JSON: {exc}",
                          prediction=False) from None
        try:
            if route.body == "vertex_raw":
                document = protocols.unwrap_raw_predict(document)
            request = protocols.parse_predict_body(document, route.body)
        except protocols.ProtocolError as exc:
            raise _Failed(400, str(exc), prediction=False) from None
        name = request.signature_name
        count = len(request.instances)
        signature = self.signatures.get(name)
        if signature is None:
            raise _Failed(400, f"unknown signature_name {name[:100]!r}; this model has: "
                          f"{', '.join(sorted(self.signatures))}", prediction=True,
                          signature=name[:64], instances=count)
        try:
            return name, signature, decode_instances(signature, request.instances)
        except InstanceError as exc:
            raise _Failed(400, str(exc), prediction=True, signature=name,
                          instances=count) from None

    def _fast_inputs(self, body: bytes, route: protocols.Route
                     ) -> tuple[str, SignatureInfo, dict[str, np.ndarray]] | None:
        """What `_decode` gives, faster, when the body is plain float instances of a
        one-input signature (see `fast_float_instances`); None: take the general path."""
        if msgspec is None:
            return None
        try:
            top = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
            raw = top.get("instances")
            name = msgspec.json.decode(top["signature_name"]) if "signature_name" in top \
                else protocols.DEFAULT_SIGNATURE
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
        if route.body == "vertex" and set(top) != {"instances"}:
            return None  # `_decode` checks the other fields of Vertex's :predict
        if "httpBody" in top:
            return None  # `_decode` unwraps a RawPredictRequest
        signature = self.signatures.get(name) if isinstance(name, str) else None
        if raw is None or signature is None or len(signature.inputs) != 1:
            return None
        info = signature.inputs[0]
        array = fast_float_instances(bytes(raw), info)
        return None if array is None else (name, signature, {info.name: array})


_TF_NOISE = re.compile(
    r"^(Graph execution error:|Detected at node|<stack traces unavailable>|File |\[\[)")


def model_error_text(text: str, limit: int = 300) -> str:
    """The useful line(s) of a TensorFlow error, without graph/node/stack boilerplate."""
    text = re.sub(r"\{\{function_node [^}]*\}\}", "", text)
    text = re.sub(r"\s*\[\[\{\{node .*$|\s*\[Op:[^\]]*\]", "", text, flags=re.M)
    lines = [line.strip() for line in text.splitlines()]
    useful = [line for line in lines if line and not _TF_NOISE.match(line)]
    return " ".join(useful)[:limit] or _first_line(text, limit)


def _first_line(text: str, limit: int = 300) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line[:limit]
