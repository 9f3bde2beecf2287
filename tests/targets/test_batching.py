"""Dynamic batching: the Batcher with a numpy model (no TF), then a real batching server.

The unit tests make batches deterministic with a model whose first call blocks until the
other requests are queued; no assertion depends on timing.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from targets_helpers import MAX_BODY_BYTES, server_processes, solid_image
from tiny_model import expected_logits

from caio_operators.targets import protocols
from caio_operators.targets.batching import Batcher, batch_key, split_rows

RED, GREEN, BLUE = (250, 5, 5), (5, 250, 5), (5, 5, 250)


class Rejected(Exception):
    pass


class GatedModel:
    """Doubles its input; the first call waits for ``gate``, so that others queue up
    behind it. Any value < 0 in a call makes the whole call fail, like one bad image."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def __call__(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            first = not self.calls
            self.calls.append((signature, len(inputs["x"])))
        if first:
            assert self.gate.wait(10), "the test never opened the gate"
        if (inputs["x"] < 0).any():
            raise Rejected("negative input")
        return {"y": inputs["x"] * 2, "n": np.full(len(inputs["x"]), len(inputs["x"]))}


def submit_all(batcher: Batcher, model: GatedModel, requests_: list[tuple[str, np.ndarray]]):
    """Submit the first request, wait until it is in the model, queue the others, then
    open the gate; the futures' results (or exceptions) in request order."""
    pool = ThreadPoolExecutor(len(requests_))
    futures = [pool.submit(batcher.predict, requests_[0][0], {"x": requests_[0][1]})]
    while not model.calls:
        threading.Event().wait(0.005)
    futures += [pool.submit(batcher.predict, sig, {"x": x}) for sig, x in requests_[1:]]
    while len(batcher._queue) < len(requests_) - 1:  # all queued behind the first call
        threading.Event().wait(0.005)
    model.gate.set()
    outcomes = []
    for future in futures:
        try:
            outcomes.append(future.result(timeout=10))
        except Exception as exc:
            outcomes.append(exc)
    pool.shutdown()
    return outcomes


@pytest.fixture
def model():
    return GatedModel()


@pytest.fixture
def batcher(model):
    b = Batcher(model, max_instances=4, timeout_s=0.0)
    yield b
    model.gate.set()
    b.stop()


def column(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)[:, None]


def test_queued_requests_share_one_call_and_get_their_own_rows(model, batcher):
    reqs = [("s", column(1)), ("s", column(2, 3)), ("s", column(4)), ("s", column(5))]
    outcomes = submit_all(batcher, model, reqs)
    # 1 alone (it was in the model while the others queued), then 2+1+1 = 4 instances.
    assert model.calls == [("s", 1), ("s", 4)]
    for (_, x), (outputs, timing) in zip(reqs, outcomes, strict=True):
        assert outputs["y"].tolist() == (x * 2).tolist()
        assert timing.model_s >= 0 and timing.queue_s >= 0
    assert [t.batch_instances for _, t in outcomes] == [1, 4, 4, 4]
    assert [o["n"].tolist() for o, _ in outcomes[1:]] == [[4, 4], [4], [4]]


def test_batches_stop_at_max_instances_and_keep_order(model, batcher):
    reqs = [("s", column(0))] + [("s", column(i, i)) for i in range(1, 5)]
    outcomes = submit_all(batcher, model, reqs)
    assert model.calls == [("s", 1), ("s", 4), ("s", 4)]
    assert [o["y"][:, 0].tolist() for o, _ in outcomes] == [
        [0], [2, 2], [4, 4], [6, 6], [8, 8]]


def test_a_bad_input_fails_its_own_request_only(model, batcher):
    reqs = [("s", column(1)), ("s", column(2)), ("s", column(-1)), ("s", column(3))]
    outcomes = submit_all(batcher, model, reqs)
    assert isinstance(outcomes[2], Rejected)
    assert [outcomes[i][0]["y"].tolist() for i in (0, 1, 3)] == [[[2]], [[4]], [[6]]]
    # the batch of three failed, then each of its requests ran alone
    assert model.calls == [("s", 1), ("s", 3), ("s", 1), ("s", 1), ("s", 1)]


def test_other_signatures_and_shapes_are_not_mixed(model, batcher):
    wide = np.ones((1, 2), dtype=np.float32)
    reqs = [("s", column(1)), ("s", column(2)), ("t", column(3)), ("s", wide), ("s", column(4))]
    outcomes = submit_all(batcher, model, reqs)
    assert model.calls == [("s", 1), ("s", 2), ("t", 1), ("s", 1)]
    assert outcomes[3][0]["y"].tolist() == [[2, 2]]
    assert outcomes[4][0]["y"].tolist() == [[8]]


def test_a_request_larger_than_the_maximum_runs_alone(model, batcher):
    model.gate.set()
    outputs, timing = batcher.predict("s", {"x": column(*range(6))})
    assert outputs["y"][:, 0].tolist() == [0, 2, 4, 6, 8, 10] and timing.batch_instances == 6


def test_batch_helpers():
    a = {"x": np.zeros((2, 3), np.float32)}
    assert batch_key("s", a) == batch_key("s", {"x": np.ones((5, 3), np.float32)})
    assert batch_key("s", a) != batch_key("s", {"x": np.zeros((2, 4), np.float32)})
    assert batch_key("s", a) != batch_key("s", {"x": np.zeros((2, 3), np.float64)})
    rows = split_rows({"y": np.arange(6).reshape(3, 2)}, [1, 2])
    assert [r["y"].tolist() for r in rows] == [[[0, 1]], [[2, 3], [4, 5]]]
    assert split_rows({"y": np.arange(4)}, [1, 2]) is None  # not one row per instance
    assert split_rows({"y": np.float32(1.0)}, [1, 2]) is None
    with pytest.raises(ValueError, match="max_instances"):
        Batcher(lambda s, i: i, max_instances=0, timeout_s=0)


def test_stopped_batcher_refuses_new_requests(model):
    b = Batcher(model, max_instances=2, timeout_s=0.0)
    b.stop()
    with pytest.raises(RuntimeError, match="stopping"):
        b.predict("s", {"x": column(1)})


# A real batching server (one replica, so concurrent requests meet in it) ----------------


@pytest.fixture(scope="module")
def batching_server(tiny_model_dir, tmp_path_factory):
    from caio_operators.targets.local import LocalTarget

    target = LocalTarget()
    deployment = target.deploy(
        model_uri=str(tiny_model_dir), model_name="tiny", model_version="3", replicas=1,
        server_dir=str(tmp_path_factory.mktemp("batching")), max_body_bytes=MAX_BODY_BYTES,
        max_lifetime_s=600, startup_timeout_s=240, batch_max=4, batch_timeout_ms=100)
    yield deployment
    target.undeploy(deployment)
    assert not server_processes(deployment["pid"])


def post_all(url: str, bodies: list[dict]) -> list[requests.Response]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: requests.post(url, json=body, timeout=60), bodies))


def test_concurrent_requests_get_their_own_predictions(batching_server):
    colors = [RED, GREEN, BLUE, GREEN, RED, BLUE, BLUE, RED]
    names = {RED: "red", GREEN: "green", BLUE: "blue"}
    bodies = [{"signature_name": "serving_preprocess",
               "instances": [protocols.b64(solid_image(c))]} for c in colors]
    for _ in range(3):
        replies = post_all(batching_server["predict_url"], bodies)
        assert [r.status_code for r in replies] == [200] * len(colors)
        assert [r.json()["predictions"][0]["labels"][0] for r in replies] == [
            names[c] for c in colors]


def test_concurrent_float_requests_of_different_sizes(batching_server):
    rng = np.random.default_rng(7)
    # two decimals: short JSON numbers keep 3 instances under the body limit
    batches = [rng.random((n, 224, 224, 3)).round(2) for n in (1, 2, 1, 3, 1)]
    replies = post_all(batching_server["predict_url"],
                       [{"instances": b.tolist()} for b in batches])
    for reply, batch in zip(replies, batches, strict=True):
        assert reply.status_code == 200, reply.text
        np.testing.assert_allclose(np.array(reply.json()["predictions"]),
                                   expected_logits(batch.astype(np.float32)),
                                   rtol=1e-4, atol=1e-5)


def test_a_bad_image_fails_only_its_own_request(batching_server):
    good = [protocols.b64(solid_image(c)) for c in (RED, GREEN, BLUE)]
    bad = protocols.b64(b"this is not an image")
    bodies = [{"signature_name": "serving_preprocess", "instances": [i]}
              for i in (good[0], bad, good[1], good[2])]
    replies = post_all(batching_server["predict_url"], bodies)
    # The AI Platform route answers a failed prediction with 200 and the reason.
    assert [r.status_code for r in replies] == [200] * 4
    assert replies[1].json()["error"].startswith("Prediction failed: the model rejected")
    assert [replies[i].json()["predictions"][0]["labels"][0] for i in (0, 2, 3)] == [
        "red", "green", "blue"]
