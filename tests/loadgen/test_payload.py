"""Payloads from real image files (caio_operators.loadgen.payload)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from caio_operators.loadgen.payload import PayloadError, build_payload, write_payload


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(folder / "a_red.jpg", quality=95)
    Image.new("RGB", (30, 30), (0, 0, 255)).save(folder / "b_blue.png")
    Image.new("L", (100, 80), 128).save(folder / "c_gray.jpeg")
    (folder / "README.md").write_text("not an image, and ignored")
    return folder


def test_serving_preprocess_sends_the_encoded_files(images):
    payload = build_payload(images, "serving_preprocess", 1)
    assert [item["signature"] for item in payload] == ["serving_preprocess"] * 3
    first = payload[0]["instances"][0]
    assert set(first) == {"b64"}
    assert base64.b64decode(first["b64"]) == (images / "a_red.jpg").read_bytes()
    decoded = Image.open(io.BytesIO(base64.b64decode(payload[1]["instances"][0]["b64"])))
    assert decoded.format == "PNG" and decoded.size == (30, 30)


def test_serving_default_sends_224_rgb_pixels_in_unit_range(images):
    payload = build_payload(f"file://{images}", "serving_default", 1)
    pixels = [np.array(item["instances"][0]) for item in payload]
    assert all(p.shape == (224, 224, 3) for p in pixels)
    assert all(p.min() >= 0.0 and p.max() <= 1.0 for p in pixels)
    red, blue, gray = (p.mean(axis=(0, 1)) for p in pixels)
    np.testing.assert_allclose(red, [1.0, 0.0, 0.0], atol=0.02)  # JPEG: nearly pure red
    np.testing.assert_allclose(blue, [0.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(gray, [128 / 255] * 3, atol=1e-6)  # L converted to RGB


def test_instances_per_request_groups_and_wraps(images):
    payload = build_payload(images, "serving_preprocess", 2)
    assert [len(item["instances"]) for item in payload] == [2, 2]
    # the last request is filled up with the first image again
    assert payload[1]["instances"][1] == payload[0]["instances"][0]


def test_write_payload_round_trips(images, tmp_path):
    out = write_payload(images, f"file://{tmp_path}/load/payload.json", "serving_preprocess", 2)
    written = json.loads((tmp_path / "load" / "payload.json").read_text())
    assert written == build_payload(images, "serving_preprocess", 2)
    assert out == {"payload_uri": f"file://{tmp_path}/load/payload.json", "requests": 2,
                   "instances": 4}


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PayloadError, match=r"no image files .*\(found: no files at all\)"):
        build_payload(tmp_path, "serving_preprocess", 1)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PayloadError, match=r"image folder .*nope does not exist"):
        build_payload(tmp_path / "nope", "serving_preprocess", 1)


def test_folder_without_images_names_what_it_found(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(PayloadError, match=r"no image files .*found: notes\.txt"):
        build_payload(tmp_path, "serving_default", 1)


@pytest.mark.parametrize("signature", ["serving_preprocess", "serving_default"])
def test_non_image_with_image_suffix_is_named(images, signature):
    (images / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(PayloadError, match=r"broken\.jpg is not a readable image"):
        build_payload(images, signature, 1)


def test_bad_arguments(images):
    with pytest.raises(PayloadError, match="signature is 'predict'"):
        build_payload(images, "predict", 1)
    with pytest.raises(PayloadError, match="instances_per_request is 0"):
        build_payload(images, "serving_default", 0)
