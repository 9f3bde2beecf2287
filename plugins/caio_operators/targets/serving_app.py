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
    InstanceError,
    SignatureInfo,
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
    error: str = ""
    record: bool = True  # probes (health, status, openapi) are not workload records
    allow: str = ""  # Allow header for 405
    model_ms: float = 0.0  # in the model call that served it
    queue_ms: float = 0.0  # waiting for that call (dynamic batching)


def json_bytes(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


def error_reply(status: int, message: str, **fields) -> Reply:
    return Reply(status=status, body=json_bytes(protocols.error_body(message)),
                 error=message, **fields)


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

    # routing -------------------------------------------------------------------------------

    def handle(self, method: str, path: str, body: bytes) -> Reply:
        route = protocols.match_route(path)
        if route is None:
            return error_reply(404, f"no route {path.split('?', 1)[0][:200]!r}; predict at "
                               "/v1/models/{model}:predict (see /openapi.json)")
        head = method == "HEAD" and route.method == "GET"
        if method != route.method and not head:
            return error_reply(405, f"{method} is not allowed on {route.kind} routes; use "
                               f"{route.method}", allow=route.method,
                               record=route.kind == "predict")
        if route.kind == "health":
            return Reply(200, self._health, record=False)
        if route.kind == "openapi":
            return Reply(200, self._openapi, record=False)
        if route.kind == "model_status":
            return self._model_status(route)
        return self._predict(route, body)

    def _not_served(self, route: protocols.Route) -> Reply | None:
        model = route.params.get("model")
        version = route.params.get("version")
        if (model is not None and model != self.model_name) or (
                version is not None and version != self.model_version):
            asked = f"model {model!r}" + (f" version {version!r}" if version else "")
            return error_reply(404, f"{asked} is not served here; this server serves model "
                               f"{self.model_name!r} version {self.model_version!r}",
                               record=route.kind == "predict")
        return None

    def _model_status(self, route: protocols.Route) -> Reply:
        missing = self._not_served(route)
        if missing:
            return missing
        return Reply(200, json_bytes({"model_version_status": [{
            "version": self.model_version, "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""}}]}), record=False)

    # predict -------------------------------------------------------------------------------

    def _predict(self, route: protocols.Route, body: bytes) -> Reply:
        missing = self._not_served(route)
        if missing:
            return missing
        decoded = self._fast_inputs(body) or self._decode(body)
        if isinstance(decoded, Reply):
            return decoded
        name, signature, inputs = decoded
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
            return error_reply(400, f"the model rejected the input of {name!r}: {message}",
                               signature=name, instances=count)
        except Exception as exc:
            log.exception("prediction failed for signature %s", name)
            return error_reply(500, f"prediction failed: {type(exc).__name__}: "
                               f"{_first_line(str(exc))}", signature=name, instances=count)
        predictions = encode_predictions(signature, outputs)
        try:
            payload = json_bytes(protocols.predictions_body(predictions))
        except ValueError as exc:  # NaN or inf in the outputs: not JSON
            return error_reply(500, f"predictions are not JSON-serialisable: {exc}",
                               signature=name, instances=count)
        return Reply(200, payload, signature=name, instances=count, model_ms=model_ms,
                     queue_ms=queue_ms)

    def _decode(self, body: bytes) -> Reply | tuple[str, SignatureInfo, dict[str, np.ndarray]]:
        """(signature name, signature, input arrays) of a predict body, or the 400 reply."""
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            return error_reply(400, f"request body is not valid JSON: {exc}")
        try:
            request = protocols.parse_predict_body(document)
        except protocols.ProtocolError as exc:
            return error_reply(400, str(exc))
        name = request.signature_name
        count = len(request.instances)
        signature = self.signatures.get(name)
        if signature is None:
            return error_reply(400, f"unknown signature_name {name[:100]!r}; this model has: "
                               f"{', '.join(sorted(self.signatures))}",
                               signature=name[:64], instances=count)
        try:
            return name, signature, decode_instances(signature, request.instances)
        except InstanceError as exc:
            return error_reply(400, str(exc), signature=name, instances=count)

    def _fast_inputs(self, body: bytes
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
