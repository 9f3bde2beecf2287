"""Google's own client libraries, unchanged, against the local server (anonymous
credentials, the API endpoint pointed at the server): what works against AI Platform
Prediction, Vertex AI and TF Serving works against it, errors included, as the client
library's own exception types.

- AI Platform Prediction v1: ``googleapiclient.discovery.build("ml", "v1")``, the client
  of Google's samples (static discovery document, no network).
- Vertex AI: ``google.cloud.aiplatform_v1.PredictionServiceClient`` with the REST
  transport.
- TF Serving: its REST API as its documentation gives it (it has no Python REST client).
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests
from targets_helpers import solid_image
from tiny_model import expected_logits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """The tiny model on a 1-replica server with the default body limit (10 MiB): the
    REST transport sends a 224x224x3 instance as indented protobuf JSON, 3.3 MB."""
    from caio_operators.targets.local import LocalTarget

    target = LocalTarget()
    deployment = target.deploy(
        model_uri=str(tiny_model_dir), model_name="tiny", model_version="3", replicas=1,
        server_dir=str(tmp_path_factory.mktemp("server")), max_lifetime_s=600,
        startup_timeout_s=240)
    yield deployment
    target.undeploy(deployment)

RED = (250, 5, 5)
CAIP_NAME = "projects/local/models/tiny/versions/3"
ENDPOINT = "projects/local/locations/us-central1/endpoints/42"


def b64_image(color=RED) -> dict:
    return {"b64": base64.b64encode(solid_image(color)).decode()}


def float_image(value: float) -> list:
    return np.full((224, 224, 3), value, dtype=np.float32).tolist()


# AI Platform Prediction v1 ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ml(served):
    from google.auth.credentials import AnonymousCredentials
    from googleapiclient import discovery

    return discovery.build("ml", "v1", credentials=AnonymousCredentials(),
                           client_options={"api_endpoint": served["base_url"]},
                           static_discovery=True, cache_discovery=False)


def test_ai_platform_client_predicts(ml):
    response = ml.projects().predict(name=CAIP_NAME, body={
        "signature_name": "serving_preprocess", "instances": [b64_image()]}).execute()
    assert response["predictions"][0]["labels"][0] == "red"


def test_ai_platform_failed_prediction_is_a_200_with_the_reason(ml):
    # The service's documented answer, and what Google's samples test for:
    # `if "error" in response: raise RuntimeError(response["error"])`.
    response = ml.projects().predict(name=CAIP_NAME, body={
        "signature_name": "serving_preprocess",
        "instances": [{"b64": base64.b64encode(b"not an image").decode()}]}).execute()
    assert set(response) == {"error"}
    assert response["error"].startswith("Prediction failed: the model rejected the input")


def test_ai_platform_bad_requests_raise_http_error(ml):
    from googleapiclient.errors import HttpError

    with pytest.raises(HttpError) as empty:
        ml.projects().predict(name=CAIP_NAME, body={"instances": []}).execute()
    assert empty.value.status_code == 400
    assert empty.value.reason == "'instances' is empty; send at least one instance"
    with pytest.raises(HttpError) as missing:
        ml.projects().predict(name="projects/local/models/other/versions/3",
                              body={"instances": [1]}).execute()
    assert missing.value.status_code == 404 and "model 'other'" in missing.value.reason


# Vertex AI -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vertex(served):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.aiplatform_v1 import PredictionServiceClient

    return PredictionServiceClient(
        credentials=AnonymousCredentials(), transport="rest",
        client_options=ClientOptions(api_endpoint=served["base_url"]))


def test_vertex_client_predicts_with_the_default_signature(vertex):
    from google.protobuf import json_format, struct_pb2

    image = float_image(0.5)
    response = vertex.predict(endpoint=ENDPOINT, instances=[
        json_format.ParseDict(image, struct_pb2.Value())])
    logits = np.array([list(p) for p in response.predictions])
    np.testing.assert_allclose(logits, expected_logits(np.array([image], np.float32)),
                               rtol=1e-4, atol=1e-5)
    assert response.deployed_model_id == "3"
    assert response.model == "projects/local/locations/us-central1/models/tiny"


def test_vertex_client_raises_bad_request_for_a_bad_instance(vertex):
    from google.api_core.exceptions import BadRequest
    from google.protobuf import json_format, struct_pb2

    with pytest.raises(BadRequest) as bad:
        vertex.predict(endpoint=ENDPOINT, instances=[
            json_format.ParseDict(["not", "an", "image"], struct_pb2.Value())])
    assert "input 'images'" in bad.value.message
    assert bad.value.response.json()["error"]["status"] == "FAILED_PRECONDITION"


def test_vertex_client_raises_not_found_for_a_method_the_server_lacks(vertex):
    from google.api_core.exceptions import NotFound
    from google.protobuf import json_format, struct_pb2

    with pytest.raises(NotFound) as missing:
        vertex.explain(endpoint=ENDPOINT, instances=[
            json_format.ParseDict(float_image(0.5), struct_pb2.Value())])
    assert "no route" in missing.value.message


def test_vertex_client_gets_a_google_error_for_a_body_over_the_limit(vertex):
    from google.api_core.exceptions import GoogleAPICallError
    from google.protobuf import json_format, struct_pb2

    image = json_format.ParseDict(float_image(0.5), struct_pb2.Value())
    with pytest.raises(GoogleAPICallError) as big:
        vertex.predict(endpoint=ENDPOINT, instances=[image] * 4)
    assert big.value.code == 413 and "--max-body-bytes" in big.value.message


def test_vertex_raw_predict_serves_any_signature(vertex, served):
    from google.api.httpbody_pb2 import HttpBody
    from google.api_core.exceptions import BadRequest

    body = {"signature_name": "serving_preprocess", "instances": [b64_image()]}
    data = json.dumps(body).encode()
    answer = vertex.raw_predict(endpoint=ENDPOINT, http_body=HttpBody(
        content_type="application/json", data=data))
    # The service answers :rawPredict with the model server's own body, which the REST
    # transport parses as HttpBody JSON (so its fields stay empty, as against Vertex AI);
    # that body is what an HTTP client gets, as the Vertex AI documentation shows:
    assert isinstance(answer, HttpBody)
    raw = requests.post(f"{served['base_url']}/v1/{ENDPOINT}:rawPredict", data=data,
                        headers={"Content-Type": "application/json"}, timeout=30)
    assert raw.status_code == 200 and raw.json()["predictions"][0]["labels"][0] == "red"
    with pytest.raises(BadRequest) as bad:
        vertex.raw_predict(endpoint=ENDPOINT, http_body=HttpBody(
            content_type="application/json",
            data=json.dumps({"signature_name": "nope", "instances": [1]}).encode()))
    assert "unknown signature_name 'nope'" in bad.value.message


# TF Serving REST -------------------------------------------------------------------------


def test_tfserving_status_and_metadata(served):
    base = served["base_url"] + "/v1/models/tiny"
    status = requests.get(base, timeout=10).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    for url in (base + "/metadata", base + "/versions/3/metadata"):
        metadata = requests.get(url, timeout=10).json()
        assert metadata["model_spec"]["name"] == "tiny"
        assert metadata["model_spec"]["version"] == "3"
        defs = metadata["metadata"]["signature_def"]["signature_def"]
        default = defs["serving_default"]
        assert default["inputs"]["images"]["dtype"] == "DT_FLOAT"
        assert [d["size"] for d in default["inputs"]["images"]["tensor_shape"]["dim"]] == [
            "-1", "224", "224", "3"]
        assert default["outputs"]["logits"]["dtype"] == "DT_FLOAT"
        preprocess = defs["serving_preprocess"]
        assert preprocess["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
        assert set(preprocess["outputs"]) == {"labels", "probabilities"}
    missing = requests.get(base + "/versions/9/metadata", timeout=10)
    assert missing.status_code == 404 and "version '9'" in missing.json()["error"]


def test_tfserving_predict_error_is_a_string(served):
    response = requests.post(served["base_url"] + "/v1/models/tiny:predict",
                             json={"instances": [["not", "an", "image"]]}, timeout=10)
    assert response.status_code == 400 and "input 'images'" in response.json()["error"]
