"""Instances codec and request handling with a numpy model (no TF, no HTTP): fast and exact."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caio_operators.targets.instances import (
    InstanceError,
    SignatureInfo,
    TensorInfo,
    decode_instances,
    encode_predictions,
    fast_float_instances,
)
from caio_operators.targets.openapi import openapi_document
from caio_operators.targets.serving_app import ServingApp, model_error_text

IMAGES = SignatureInfo("serving_default", (TensorInfo("images", "float32", (None, 2, 2, 3)),),
                       (TensorInfo("logits", "float32", (None, 4)),))
BYTES = SignatureInfo("serving_preprocess", (TensorInfo("bytes", "string", (None,)),),
                      (TensorInfo("labels", "string", (None, 2)),
                       TensorInfo("probabilities", "float32", (None, 2))))
TWO_INPUTS = SignatureInfo("pair", (TensorInfo("a", "int64", (None,)),
                                    TensorInfo("b", "float32", (None, 2))),
                           (TensorInfo("sum", "float32", (None, 2)),))


class ModelRejected(Exception):
    pass


def numpy_model(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if signature == "serving_default":
        return {"logits": np.repeat(inputs["images"].mean(axis=(1, 2, 3))[:, None], 4, axis=1)}
    if signature == "serving_preprocess":
        if any(not b.startswith(b"IMG") for b in inputs["bytes"]):
            raise ModelRejected("Graph execution error:\n\nDetected at node x\n"
                                "Unknown image file format.\n\t [[{{node x}}]] [Op:y]")
        n = len(inputs["bytes"])
        return {"labels": np.array([[b"cat", b"dog"]] * n, dtype=object),
                "probabilities": np.array([[0.75, 0.25]] * n, dtype=np.float32)}
    if signature == "pair":
        return {"sum": inputs["a"][:, None] + inputs["b"]}
    raise RuntimeError("boom")


@pytest.fixture
def app() -> ServingApp:
    signatures = {s.name: s for s in (IMAGES, BYTES, TWO_INPUTS)}
    signatures["broken"] = SignatureInfo("broken", (TensorInfo("x", "float32", (None,)),),
                                         (TensorInfo("y", "float32", (None,)),))
    return ServingApp(model_name="m", model_version="1", signatures=signatures,
                      predict=numpy_model, client_errors=(ModelRejected,), replica=3)


def post(app, body, path="/v1/models/m:predict"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = app.handle("POST", path, raw)
    return reply, json.loads(reply.body)


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


# codec ------------------------------------------------------------------------------------


def test_decode_bare_and_named_instances():
    image = np.arange(12, dtype=np.float32).reshape(2, 2, 3).tolist()
    arrays = decode_instances(IMAGES, [image, {"images": image}])
    assert arrays["images"].shape == (2, 2, 2, 3) and arrays["images"].dtype == np.float32
    strings = decode_instances(BYTES, [b64(b"\x00\x01"), "plain", {"bytes": b64(b"x")}])
    assert list(strings["bytes"]) == [b"\x00\x01", b"plain", b"x"]
    pair = decode_instances(TWO_INPUTS, [{"a": 1, "b": [0.5, 1.5]}])
    assert pair["a"].dtype == np.int64 and pair["b"].tolist() == [[0.5, 1.5]]


@pytest.mark.parametrize(("signature", "instances", "message"), [
    (IMAGES, [[[1, 2, 3]]], r"expects shape \[None, 2, 2, 3\].*\[1, 1, 3\]"),
    (IMAGES, [[[[1, 2, 3]] * 2] * 2, [[[1, 2, 3]] * 2]], "ragged"),
    (IMAGES, [[[["a", "b", "c"]] * 2] * 2], "non-numbers"),
    (IMAGES, [[[[None, 1, 2]] * 2] * 2], "non-numbers"),
    (IMAGES, [{"b64": "AAAA"}], "non-numbers"),
    (BYTES, [{"b64": "not base64!"}], "not valid base64"),
    (BYTES, [[1, 2]], "string tensor"),
    (BYTES, [{"b64": 5}], "string tensor"),
    (TWO_INPUTS, [[1, 2]], "must be an object with the inputs a, b"),
    (TWO_INPUTS, [{"a": 1}], "missing inputs b"),
    (TWO_INPUTS, [{"a": 1, "b": [1, 2], "c": 3}], "unknown inputs c"),
    (IMAGES, [], "no instances"),
])
def test_decode_rejects_with_a_named_reason(signature, instances, message):
    with pytest.raises(InstanceError, match=message):
        decode_instances(signature, instances)


def test_encode_rows():
    assert encode_predictions(IMAGES, {"logits": np.ones((2, 4), np.float32)}) == [
        [1.0] * 4, [1.0] * 4]
    rows = encode_predictions(BYTES, {
        "labels": np.array([[b"a", b"\xff"]], dtype=object),
        "probabilities": np.array([[0.5, 0.5]], np.float32)})
    assert rows == [{"labels": ["a", {"b64": "/w=="}], "probabilities": [0.5, 0.5]}]


def fast(raw: str | bytes, info: TensorInfo = IMAGES.inputs[0]):
    return fast_float_instances(raw.encode() if isinstance(raw, str) else raw, info)


FLOATS = st.floats(-1e30, 1e30, allow_nan=False) | st.integers(-10**6, 10**6)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3).flatmap(lambda n: st.lists(
    st.lists(st.lists(st.lists(FLOATS, min_size=3, max_size=3), min_size=2, max_size=2),
             min_size=2, max_size=2), min_size=n, max_size=n)), st.booleans())
def test_fast_float_path_equals_the_general_path(instances, spaced):
    text = json.dumps(instances, separators=(", ", ": ") if spaced else (",", ":"))
    array = fast(text)
    expected = decode_instances(IMAGES, instances)["images"]
    assert array is not None and array.dtype == expected.dtype
    assert array.shape == expected.shape and array.tobytes() == expected.tobytes()


def test_fast_float_path_on_flat_inputs():
    flat = TensorInfo("x", "float64", (None,))
    assert fast("[1, 2.5, -3e2]", flat).tolist() == [1.0, 2.5, -300.0]
    assert fast("[]", flat) is None


@pytest.mark.parametrize("raw", [
    '[[[[1,2,3],[4,5,6]],[[1,2,3],[4,5,6]]],', "[" + "[[1,2,3]]," * 2 + "]",  # broken
    '[[[[1,2,3],[4,5,6]],[[1,2,3],[4,5]]]]',  # ragged
    '[[[[1,2,3],[4,5,6]],[[1,2,3],[4,5,6]],[[1,2,3],[4,5,6]]]]',  # wrong shape
    '[[[[1 2,3],[4,5,6]],[[1,2,3],[4,5,6]]]]', '[[[[1,,3],[4,5,6]],[[1,2,3],[4,5,6]]]]',
    '[[[[NaN,2,3],[4,5,6]],[[1,2,3],[4,5,6]]]]', '[[[[true,2,3],[4,5,6]],[[1,2,3],[4,5,6]]]]',
    '[[[["1",2,3],[4,5,6]],[[1,2,3],[4,5,6]]]]', '[[[[+1,2,3],[4,5,6]],[[1,2,3],[4,5,6]]]]',
    '[[[[1e999,2,3],[4,5,6]],[[1,2,3],[4,5,6]]]]', '[{"images": [[[1,2,3],[4,5,6]]]}]',
    "[]", "[1]",
])
def test_fast_float_path_leaves_anything_unusual_to_the_general_path(raw):
    assert fast(raw) is None


def test_fast_float_path_only_for_fixed_float_inputs():
    image = "[[[[1,2,3],[4,5,6]],[[1,2,3],[4,5,6]]]]"
    assert fast(image, TensorInfo("x", "float32", (None, None, 2, 3))) is None
    assert fast(image, TensorInfo("x", "int64", (None, 2, 2, 3))) is None
    assert fast(image, TensorInfo("x", "float32", None)) is None
    assert fast('["a"]', BYTES.inputs[0]) is None


# request handling -------------------------------------------------------------------------


def test_predict_single_and_multiple_outputs(app):
    image = np.full((2, 2, 3), 2.0).tolist()
    reply, body = post(app, {"instances": [image, image]})
    assert reply.status == 200 and body == {"predictions": [[2.0] * 4, [2.0] * 4]}
    assert (reply.signature, reply.instances, reply.record) == ("serving_default", 2, True)
    assert reply.model_ms >= 0 and reply.queue_ms == 0
    # Named instances take the general path, with the same answer.
    named, _ = post(app, {"signature_name": "serving_default",
                          "instances": [{"images": image}, {"images": image}]})
    assert named.body == reply.body
    reply, body = post(app, {"signature_name": "serving_preprocess",
                             "instances": [b64(b"IMG1")]},
                       path="/v1/projects/p/locations/l/endpoints/9:rawPredict")
    assert body == {"predictions": [{"labels": ["cat", "dog"], "probabilities": [0.75, 0.25]}]}


@pytest.mark.parametrize(("body", "status", "fragment"), [
    (b"{nope", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b'"text"', 400, "JSON object"),
    ({"signature_name": "zzz", "instances": [1]}, 400,
     "this model has: broken, pair, serving_default, serving_preprocess"),
    ({"signature_name": "serving_preprocess", "instances": [b64(b"GIF")]}, 400,
     "rejected the input of 'serving_preprocess': Unknown image file format."),
    ({"signature_name": "broken", "instances": [1.0]}, 500, "prediction failed: RuntimeError"),
])
def test_predict_errors(app, body, status, fragment):
    reply, payload = post(app, body)
    assert reply.status == status and fragment in payload["error"]
    assert reply.error == payload["error"] and reply.record


def test_app_with_a_batcher(app):
    from caio_operators.targets.batching import Batcher

    batcher = Batcher(numpy_model, max_instances=8, timeout_s=0.0)
    batched = ServingApp(model_name="m", model_version="1", signatures=app.signatures,
                         predict=None, client_errors=(ModelRejected,), batcher=batcher)
    try:
        image = np.full((2, 2, 3), 2.0).tolist()
        for body in ({"instances": [image]},
                     {"signature_name": "serving_preprocess", "instances": [b64(b"GIF")]},
                     {"signature_name": "broken", "instances": [1.0]}):
            ours, theirs = post(batched, body), post(app, body)
            assert (ours[0].status, ours[1]) == (theirs[0].status, theirs[1])
    finally:
        batcher.stop()


def test_routes_without_prediction(app):
    health = app.handle("GET", "/healthz", b"")
    assert health.status == 200 and not health.record
    assert json.loads(health.body)["replica"] == 3
    assert app.handle("HEAD", "/healthz", b"").status == 200
    assert app.handle("GET", "/v1/models/m/versions/1", b"").status == 200
    assert app.handle("GET", "/v1/models/x", b"").status == 404
    reply = app.handle("DELETE", "/v1/models/m:predict", b"")
    assert reply.status == 405 and reply.allow == "POST" and reply.record
    assert app.handle("GET", "/nowhere", b"").status == 404
    wrong = app.handle("POST", "/v1/projects/p/models/m/versions/2:predict", b"{}")
    assert wrong.status == 404 and "version '2'" in json.loads(wrong.body)["error"]["message"]


# the protocols' contracts ----------------------------------------------------------------

CAIP = "/v1/projects/p/models/m/versions/1:predict"
VERTEX = "/v1/projects/p/locations/l/endpoints/9:predict"
VERTEX_RAW = "/v1/projects/p/locations/l/endpoints/9:rawPredict"
TFSERVING = "/v1/models/m:predict"
GIF = {"signature_name": "serving_preprocess", "instances": [b64(b"GIF")]}


def google_error(status: int, code: str, message: str) -> dict:
    return {"error": {"code": status, "message": message, "status": code}}


# One failure of each origin (the request's form; the model server: unknown signature,
# instances that do not fit, the model's rejection, the model's crash) on every protocol.
FAILURES = [
    ("malformed", b"{nope", 400, "request body is not valid JSON", False),
    ("unknown signature", {"signature_name": "zzz", "instances": [1]}, 400,
     "unknown signature_name 'zzz'", True),
    ("bad instance", {"instances": [{"b64": "@@"}]}, 400, "images", True),
    ("rejected", GIF, 400, "rejected the input of 'serving_preprocess'", True),
    ("crash", {"signature_name": "broken", "instances": [1.0]}, 500,
     "prediction failed: RuntimeError", True),
]


@pytest.mark.parametrize(("case", "body", "status", "fragment", "prediction"), FAILURES,
                         ids=[f[0] for f in FAILURES])
def test_each_protocol_answers_failures_in_its_documented_shape(
        app, case, body, status, fragment, prediction):
    # TF Serving: {"error": "<message>"} with the failure's HTTP status.
    reply, tfs = post(app, body, TFSERVING)
    assert reply.status == status and fragment in tfs["error"]
    message = tfs["error"]
    # Vertex AI (rawPredict passes TF Serving bodies): Google's shape; the model server's
    # own 400s are FAILED_PRECONDITION.
    reply, vertex = post(app, body, VERTEX_RAW)
    code = ("FAILED_PRECONDITION" if prediction else "INVALID_ARGUMENT") if status == 400 \
        else "INTERNAL"
    assert (reply.status, vertex) == (status, google_error(status, code, message))
    # AI Platform Prediction: a failed prediction is a 200 carrying the reason; a
    # malformed request an HTTP error in Google's shape.
    reply, caip = post(app, body, CAIP)
    if prediction:
        assert (reply.status, caip) == (200, {"error": "Prediction failed: " + message})
    else:
        assert (reply.status, caip) == (400, google_error(400, "INVALID_ARGUMENT", message))
    # Each one is a failure in the server's records, whatever its HTTP status.
    assert not reply.ok and reply.error == message and reply.record


def test_unknown_google_resources_and_methods_get_google_errors(app):
    for path in ("/v1/projects/p/locations/l/endpoints/9:explain", "/v1/projects/p/x"):
        reply = app.handle("POST", path, b"{}")
        error = json.loads(reply.body)["error"]
        assert reply.status == 404 and error["status"] == "NOT_FOUND"
        assert "no route" in error["message"]
    reply = app.handle("GET", VERTEX, b"")
    assert reply.status == 405 and json.loads(reply.body)["error"]["code"] == 405
    reply = app.handle("POST", "/v1/projects/p/locations/l/endpoints/9/x:predict", b"{}")
    assert json.loads(reply.body)["error"]["status"] == "NOT_FOUND"
    assert json.loads(app.handle("GET", "/nowhere", b"").body)["error"].startswith("no route")


def test_vertex_predict_takes_instances_and_parameters_and_names_the_ids(app):
    image = np.full((2, 2, 3), 2.0).tolist()
    reply, body = post(app, {"instances": [image], "parameters": {"k": 1}}, VERTEX)
    assert reply.status == 200 and body == {
        "predictions": [[2.0] * 4], "deployedModelId": "1",
        "model": "projects/p/locations/l/models/m", "modelDisplayName": "m"}
    for extra in ({"signature_name": "serving_default"}, {"inputs": {}}):
        reply, body = post(app, {"instances": [image], **extra}, VERTEX)
        assert reply.status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
        assert f"Unknown name {next(iter(extra))!r}" in body["error"]["message"]
        assert ":rawPredict" in body["error"]["message"]
    reply, body = post(app, {"instances": [image], "parameters": [1]}, VERTEX)
    assert reply.status == 400 and "'parameters' must be an object" in body["error"]["message"]


def test_raw_predict_takes_the_body_or_googles_json_of_it(app):
    tf_body = {"signature_name": "serving_preprocess", "instances": [b64(b"IMG1")]}
    raw, raw_body = post(app, tf_body, VERTEX_RAW)
    wrapped = {"httpBody": {"contentType": "application/json",
                            "data": base64.b64encode(json.dumps(tf_body).encode()).decode()}}
    reply, body = post(app, wrapped, VERTEX_RAW)
    assert raw.status == reply.status == 200 and body == raw_body
    assert body == {"predictions": [{"labels": ["cat", "dog"], "probabilities": [0.75, 0.25]}]}
    reply, body = post(app, {"httpBody": {"data": "%%"}}, VERTEX_RAW)
    assert reply.status == 400 and "httpBody.data is not base64" in body["error"]["message"]


def test_tfserving_metadata_describes_every_signature(app):
    for path in ("/v1/models/m/metadata", "/v1/models/m/versions/1/metadata"):
        reply = app.handle("GET", path, b"")
        assert reply.status == 200 and not reply.record
        metadata = json.loads(reply.body)
        assert metadata["model_spec"] == {"name": "m", "signature_name": "", "version": "1"}
        defs = metadata["metadata"]["signature_def"]["signature_def"]
        assert sorted(defs) == ["broken", "pair", "serving_default", "serving_preprocess"]
        assert defs["serving_default"] == {
            "inputs": {"images": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [
                {"size": "-1", "name": ""}, {"size": "2", "name": ""},
                {"size": "2", "name": ""}, {"size": "3", "name": ""}],
                "unknown_rank": False}}},
            "outputs": {"logits": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [
                {"size": "-1", "name": ""}, {"size": "4", "name": ""}],
                "unknown_rank": False}}},
            "method_name": "tensorflow/serving/predict"}
        assert defs["serving_preprocess"]["inputs"]["bytes"]["dtype"] == "DT_STRING"
        assert defs["pair"]["inputs"]["a"]["dtype"] == "DT_INT64"
    reply = app.handle("GET", "/v1/models/m/versions/2/metadata", b"")
    assert reply.status == 404 and "version '2'" in json.loads(reply.body)["error"]


def test_model_error_text_drops_tf_boilerplate():
    text = ("Graph execution error:\n\nDetected at node map/DecodeImage defined at (most "
            "recent call last):\n<stack traces unavailable>\nUnknown image file format. One "
            "of JPEG, PNG required.\n\t [[{{node map/DecodeImage}}]] [Op:__inference_sig_106]")
    assert model_error_text(text) == "Unknown image file format. One of JPEG, PNG required."
    assert model_error_text("{{function_node f}} Bad input\n\t [[{{node x}}]]") == "Bad input"


def test_openapi_document_describes_instances():
    doc = openapi_document("m", "1", {"serving_default": IMAGES, "serving_preprocess": BYTES})
    request = doc["components"]["schemas"]["PredictRequest"]
    variants = request["properties"]["instances"]["items"]["anyOf"]
    image_value = variants[0]["oneOf"][0]
    assert image_value["minItems"] == 2 and image_value["items"]["items"]["maxItems"] == 3
    assert variants[1]["oneOf"][0]["oneOf"][0]["required"] == ["b64"]
    json.dumps(doc)  # serialisable


def test_openapi_request_schema_accepts_what_the_app_accepts():
    import jsonschema

    doc = openapi_document("m", "1", {"serving_default": IMAGES, "serving_preprocess": BYTES})
    schema = doc["components"]["schemas"]["PredictRequest"]
    image = np.zeros((2, 2, 3)).tolist()
    for good in ({"instances": [image]}, {"instances": [{"images": image}]},
                 {"signature_name": "serving_preprocess", "instances": [b64(b"x"), "s"]}):
        jsonschema.validate(good, schema)
    for bad in ({}, {"instances": []}, {"instances": [[1, 2]]},
                {"signature_name": "nope", "instances": [image]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
