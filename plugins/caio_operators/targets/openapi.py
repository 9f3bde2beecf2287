"""The OpenAPI 3.0 description of the local model server, built from the served signatures."""

from __future__ import annotations

from caio_operators.targets.instances import STRING, SignatureInfo, TensorInfo

_ERROR = {"$ref": "#/components/schemas/Error"}
_JSON_ERROR = {"content": {"application/json": {"schema": _ERROR}}}


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


def _predict_operation(protocol: str, parameters: list[str]) -> dict:
    return {
        "operationId": f"predict_{protocol}",
        "summary": f"Predict ({protocol} route)",
        "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                       for p in parameters],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
        "responses": {
            "200": {"description": "predictions, one per instance", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}}},
            "400": {"description": "malformed body or instances", **_JSON_ERROR},
            "404": {"description": "model or version not served here", **_JSON_ERROR},
            "411": {"description": "Content-Length missing", **_JSON_ERROR},
            "413": {"description": "body over the size limit", **_JSON_ERROR},
            "500": {"description": "the model failed", **_JSON_ERROR},
            "default": {"description": "any other error", **_JSON_ERROR},
        },
    }


def openapi_document(model_name: str, model_version: str,
                     signatures: dict[str, SignatureInfo]) -> dict:
    instance_schemas = [_instance_schema(signatures[name]) for name in sorted(signatures)]
    status_ok = {"200": {"description": "model status", "content": {"application/json": {
        "schema": {"type": "object"}}}}, "404": {"description": "not served", **_JSON_ERROR},
        "default": {"description": "any other error", **_JSON_ERROR}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "caio-bench local model server",
                 "version": "1",
                 "description": f"Serves model {model_name!r} version {model_version!r}; "
                                f"signatures: {', '.join(sorted(signatures))}."},
        "paths": {
            "/v1/projects/{project}/models/{model}/versions/{version}:predict": {
                "post": _predict_operation("caip", ["project", "model", "version"])},
            "/v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict": {
                "post": _predict_operation("vertex", ["project", "location", "endpoint"])},
            "/v1/models/{model}:predict": {
                "post": _predict_operation("tfserving", ["model"])},
            "/v1/models/{model}/versions/{version}:predict": {
                "post": {**_predict_operation("tfserving", ["model", "version"]),
                         "operationId": "predict_tfserving_version"}},
            "/v1/models/{model}": {"get": {
                "operationId": "model_status", "summary": "TF Serving model status",
                "parameters": [{"name": "model", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": status_ok}},
            "/v1/models/{model}/versions/{version}": {"get": {
                "operationId": "model_version_status", "summary": "TF Serving version status",
                "parameters": [{"name": p, "in": "path", "required": True,
                                "schema": {"type": "string"}} for p in ("model", "version")],
                "responses": status_ok}},
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
                    "instances": {"type": "array", "minItems": 1,
                                  "items": {"anyOf": instance_schemas}},
                }},
            "PredictResponse": {
                "type": "object", "required": ["predictions"],
                "properties": {"predictions": {"type": "array", "items": {}}}},
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}}},
        }},
    }
