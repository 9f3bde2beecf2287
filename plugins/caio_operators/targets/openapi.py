"""The OpenAPI 3.0 description of the local model server, built from the served signatures."""

from __future__ import annotations

from caio_operators.targets.instances import STRING, SignatureInfo, TensorInfo

_ERRORS = {  # the error shape each protocol answers in (protocols.error_answer)
    "tfserving": {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}},
    "caip": {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/GoogleError"}}}},
    "vertex": {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/GoogleError"}}}},
}
_JSON_ERROR = _ERRORS["tfserving"]
_PREDICT_RESPONSES = {  # the 200 answer per protocol
    "tfserving": "PredictResponse", "caip": "CaipPredictResponse",
    "vertex": "VertexPredictResponse",
}


def _value_schema(info: TensorInfo) -> dict:
    """One instance's value of ``info`` (the batch dimension removed)."""
    if info.dtype == STRING:
        return {"oneOf": [
            {"type": "object", "required": ["b64"], "additionalProperties": False,
             "properties": {"b64": {"type": "string", "format": "byte"}}},
            {"type": "string"}]}
    leaf: dict = {"type": "integer" if info.dtype.startswith(("int", "uint")) else "number"}
    if info.dtype == "bool":
        leaf = {"type": "boolean"}
    if info.shape is None:
        return {}
    schema = leaf
    for dim in reversed(info.shape[1:]):
        schema = {"type": "array", "items": schema}
        if dim is not None:
            schema.update(minItems=dim, maxItems=dim)
    return schema


def _instance_schema(signature: SignatureInfo) -> dict:
    inputs = signature.inputs
    named = {"type": "object", "additionalProperties": False,
             "required": [t.name for t in inputs],
             "properties": {t.name: _value_schema(t) for t in inputs}}
    if len(inputs) == 1:
        return {"oneOf": [_value_schema(inputs[0]), named]}
    return named


def _predict_operation(protocol: str, parameters: list[str], operation_id: str,
                       request: str = "PredictRequest", response: str | None = None) -> dict:
    errors = _ERRORS[protocol]
    return {
        "operationId": operation_id,
        "summary": f"Predict ({protocol} route)",
        "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                       for p in parameters],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{request}"}}}},
        "responses": {
            "200": {"description": "predictions, one per instance" + (
                "; or the reason the prediction failed" if protocol == "caip" else ""),
                "content": {"application/json": {"schema": {
                    "$ref": f"#/components/schemas/{response or _PREDICT_RESPONSES[protocol]}"}}}},
            "400": {"description": "malformed body or instances", **errors},
            "404": {"description": "model or version not served here", **errors},
            "411": {"description": "Content-Length missing", **_JSON_ERROR},
            "413": {"description": "body over the size limit", **_JSON_ERROR},
            "500": {"description": "the model failed", **errors},
            "default": {"description": "any other error", **errors},
        },
    }


def _get_operation(operation_id: str, summary: str, parameters: list[str],
                   response: dict) -> dict:
    return {"get": {
        "operationId": operation_id, "summary": summary,
        "parameters": [{"name": p, "in": "path", "required": True,
                        "schema": {"type": "string"}} for p in parameters],
        "responses": {"200": {"description": summary, "content": {"application/json": {
            "schema": response}}}, "404": {"description": "not served", **_JSON_ERROR},
            "default": {"description": "any other error", **_JSON_ERROR}}}}


def openapi_document(model_name: str, model_version: str,
                     signatures: dict[str, SignatureInfo]) -> dict:
    instance_schemas = [_instance_schema(signatures[name]) for name in sorted(signatures)]
    instances = {"type": "array", "minItems": 1, "items": {"anyOf": instance_schemas}}
    predictions = {"type": "array", "items": {}}
    m, mv = ["model"], ["model", "version"]
    caip, vertex = ["project", "model", "version"], ["project", "location", "endpoint"]
    endpoint = "/v1/projects/{project}/locations/{location}/endpoints/{endpoint}"
    return {
        "openapi": "3.0.3",
        "info": {"title": "caio-bench local model server",
                 "version": "1",
                 "description": f"Serves model {model_name!r} version {model_version!r}; "
                                f"signatures: {', '.join(sorted(signatures))}."},
        "paths": {
            "/v1/projects/{project}/models/{model}/versions/{version}:predict": {
                "post": _predict_operation("caip", caip, "predict_caip")},
            endpoint + ":predict": {"post": _predict_operation(
                "vertex", vertex, "predict_vertex", request="VertexPredictRequest")},
            endpoint + ":rawPredict": {"post": _predict_operation(
                "vertex", vertex, "raw_predict_vertex", response="PredictResponse")},
            "/v1/models/{model}:predict": {
                "post": _predict_operation("tfserving", m, "predict_tfserving")},
            "/v1/models/{model}/versions/{version}:predict": {
                "post": _predict_operation("tfserving", mv, "predict_tfserving_version")},
            "/v1/models/{model}": _get_operation(
                "model_status", "TF Serving model status", m, {"type": "object"}),
            "/v1/models/{model}/versions/{version}": _get_operation(
                "model_version_status", "TF Serving version status", mv, {"type": "object"}),
            "/v1/models/{model}/metadata": _get_operation(
                "model_metadata", "TF Serving model metadata (signatures)", m,
                {"type": "object"}),
            "/v1/models/{model}/versions/{version}/metadata": _get_operation(
                "model_version_metadata", "TF Serving version metadata (signatures)", mv,
                {"type": "object"}),
            "/healthz": {"get": {
                "operationId": "health", "summary": "replica health",
                "responses": {"200": {"description": "serving", "content": {
                    "application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {"schemas": {
            "PredictRequest": {
                "type": "object", "required": ["instances"],
                "properties": {
                    "signature_name": {"type": "string", "enum": sorted(signatures),
                                       "default": "serving_default"},
                    "instances": instances,
                }},
            "VertexPredictRequest": {
                "type": "object", "required": ["instances"], "additionalProperties": False,
                "properties": {"instances": instances, "parameters": {"type": "object"}}},
            "PredictResponse": {
                "type": "object", "required": ["predictions"],
                "properties": {"predictions": predictions}},
            "VertexPredictResponse": {
                "type": "object", "required": ["predictions"],
                "properties": {"predictions": predictions,
                               "deployedModelId": {"type": "string"},
                               "model": {"type": "string"},
                               "modelDisplayName": {"type": "string"}}},
            "CaipPredictResponse": {"oneOf": [
                {"$ref": "#/components/schemas/PredictResponse"},
                {"type": "object", "required": ["error"],
                 "properties": {"error": {"type": "string",
                                          "description": "Prediction failed: <reason>"}}}]},
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}}},
            "GoogleError": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "object", "required": ["code", "message", "status"],
                          "properties": {"code": {"type": "integer"},
                                         "message": {"type": "string"},
                                         "status": {"type": "string"}}}}},
        }},
    }
