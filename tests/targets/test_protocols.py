"""Predict routes and body conventions (pure)."""

from __future__ import annotations

import base64

import pytest

from caio_operators.targets import protocols
from caio_operators.targets.protocols import ProtocolError


@pytest.mark.parametrize(("protocol", "kwargs", "path"), [
    ("caip", {"project": "p1", "model": "m", "version": "v2"},
     "/v1/projects/p1/models/m/versions/v2:predict"),
    ("vertex", {"project": "p1", "location": "europe-west4", "endpoint": "123"},
     "/v1/projects/p1/locations/europe-west4/endpoints/123:predict"),
    ("tfserving", {"model": "resnet"}, "/v1/models/resnet:predict"),
    ("tfserving", {"model": "resnet", "version": "7"}, "/v1/models/resnet/versions/7:predict"),
])
def test_predict_url_and_route_round_trip(protocol, kwargs, path):
    url = protocols.predict_url(protocol, "http://127.0.0.1:8501/", **kwargs)
    assert url == "http://127.0.0.1:8501" + path
    route = protocols.match_route(path)
    assert route.kind == "predict" and route.method == "POST" and route.protocol == protocol
    assert route.params == kwargs


def test_path_segments_are_quoted_and_unquoted():
    url = protocols.predict_url("caip", "https://h", project="a b", model="m/x", version="1")
    assert url == "https://h/v1/projects/a%20b/models/m%2Fx/versions/1:predict"
    route = protocols.match_route(url.removeprefix("https://h"))
    assert route.params == {"project": "a b", "model": "m/x", "version": "1"}


def test_base_url_with_prefix():
    assert protocols.predict_url("tfserving", "http://h:1/proxy/", model="m") == (
        "http://h:1/proxy/v1/models/m:predict")


@pytest.mark.parametrize(("path", "kind", "protocol"), [
    ("/healthz", "health", None),
    ("/openapi.json", "openapi", None),
    ("/v1/models/m", "model_status", "tfserving"),
    ("/v1/models/m/versions/2", "model_status", "tfserving"),
    ("/v1/models/m:predict?x=1", "predict", "tfserving"),
    ("/v1/models/m/metadata", "model_metadata", "tfserving"),
    ("/v1/models/m/versions/2/metadata", "model_metadata", "tfserving"),
    ("/v1/projects/p/locations/l/endpoints/9:rawPredict", "predict", "vertex"),
])
def test_other_routes(path, kind, protocol):
    route = protocols.match_route(path)
    assert (route.kind, route.protocol) == (kind, protocol)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/projects/p/models/m/versions/1:predict", "tfserving"),
    ("/v1/projects/p/locations/l/endpoints/9:predict", "vertex"),
    ("/v1/projects/p/locations/l/endpoints/9:rawPredict", "vertex_raw"),
    ("/v1/models/m:predict", "tfserving"),
])
def test_each_predict_route_names_its_body_convention(path, body):
    assert protocols.match_route(path).body == body


@pytest.mark.parametrize(("args", "kwargs", "answer"), [
    (("tfserving", 400, "m"), {}, (400, {"error": "m"})),
    ((None, 404, "m"), {"path": "/v2/x"}, (404, {"error": "m"})),
    ((None, 404, "m"), {"path": "/v1/projects/p/x?a=1"},
     (404, {"error": {"code": 404, "message": "m", "status": "NOT_FOUND"}})),
    (("vertex", 400, "m"), {},
     (400, {"error": {"code": 400, "message": "m", "status": "INVALID_ARGUMENT"}})),
    (("vertex", 400, "m"), {"prediction": True},
     (400, {"error": {"code": 400, "message": "m", "status": "FAILED_PRECONDITION"}})),
    (("vertex", 500, "m"), {"prediction": True},
     (500, {"error": {"code": 500, "message": "m", "status": "INTERNAL"}})),
    (("caip", 413, "m"), {},
     (413, {"error": {"code": 413, "message": "m", "status": "INVALID_ARGUMENT"}})),
    (("caip", 400, "m"), {"prediction": True}, (200, {"error": "Prediction failed: m"})),
    (("caip", 500, "m"), {"prediction": True}, (200, {"error": "Prediction failed: m"})),
])
def test_error_answers(args, kwargs, answer):
    assert protocols.error_answer(*args, **kwargs) == answer


@pytest.mark.parametrize("path", ["/", "/v1/models", "/v1/models/m:classify",
                                  "/v1/projects/p/models/m:predict", "/healthz/x",
                                  "/v2/models/m:predict"])
def test_unknown_paths_match_nothing(path):
    assert protocols.match_route(path) is None


@pytest.mark.parametrize(("call", "message"), [
    (lambda: protocols.predict_url("grpc", "http://h"), "known protocols: caip, vertex"),
    (lambda: protocols.predict_url("caip", "ftp://h", model="m", version="1"), "http"),
    (lambda: protocols.predict_url("caip", "http://", model="m", version="1"), "host"),
    (lambda: protocols.predict_url("caip", "http://h", model="m"), "version is required"),
    (lambda: protocols.predict_url("vertex", "http://h"), "endpoint is required"),
    (lambda: protocols.predict_url("tfserving", "http://h"), "model is required"),
])
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ProtocolError, match=message):
        call()


def test_cloud_base_urls():
    assert protocols.cloud_base_url("vertex", "europe-west4") == (
        "https://europe-west4-aiplatform.googleapis.com")
    assert protocols.cloud_base_url("caip", "us-central1") == (
        "https://us-central1-ml.googleapis.com")
    with pytest.raises(ProtocolError):
        protocols.cloud_base_url("tfserving")


def test_bodies():
    assert protocols.b64(b"\x00\xffimg") == {"b64": base64.b64encode(b"\x00\xffimg").decode()}
    assert protocols.predict_body([1], "serving_preprocess") == {
        "instances": [1], "signature_name": "serving_preprocess"}
    assert protocols.predict_body([1]) == {"instances": [1]}
    assert protocols.error_body("x") == {"error": "x"}
    assert protocols.predictions_body([[1.0]]) == {"predictions": [[1.0]]}


def test_parse_predict_body():
    parsed = protocols.parse_predict_body({"instances": [1, 2]})
    assert parsed.signature_name == "serving_default" and parsed.instances == [1, 2]
    parsed = protocols.parse_predict_body({"signature_name": "s", "instances": [{}]})
    assert parsed.signature_name == "s"


@pytest.mark.parametrize(("body", "message"), [
    ([], "JSON object"),
    ({}, "no 'instances'"),
    ({"inputs": {"x": [1]}}, "columnar 'inputs' format is not supported"),
    ({"instances": {"a": 1}}, "must be a list"),
    ({"instances": []}, "empty"),
    ({"instances": [1], "signature_name": ["s"]}, "signature_name must be a string"),
])
def test_parse_predict_body_rejects(body, message):
    with pytest.raises(ProtocolError, match=message):
        protocols.parse_predict_body(body)
