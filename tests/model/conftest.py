"""Fixtures for the model export tests: real TensorFlow, real files, tiny models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEST_IMAGES = REPO / "test_images"


@pytest.fixture(scope="session")
def tf():
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


@pytest.fixture(scope="session")
def test_images_dir() -> Path:
    images = sorted(p for p in TEST_IMAGES.iterdir() if p.suffix in (".jpg", ".png"))
    assert len(images) >= 4, "run test_images/make_images.py"
    return TEST_IMAGES


@pytest.fixture(scope="session")
def image_bytes(test_images_dir) -> list[bytes]:
    return [p.read_bytes() for p in sorted(test_images_dir.iterdir())
            if p.suffix in (".jpg", ".png")]


@pytest.fixture(scope="session")
def tiny_labels(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "tiny_labels.txt"
    path.write_text("".join(f"thing {i}\n" for i in range(10)), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_labels, test_images_dir):
    """builtin:tiny exported once with a labels file: (summary, model dir)."""
    from caio_operators.model.export import export_serving_model

    model_dir = tmp_path_factory.mktemp("models") / "tiny" / "1"
    summary = export_serving_model(
        "builtin:tiny", str(model_dir),
        labels_uri=str(tiny_labels), test_images_uri=str(test_images_dir),
    )
    return summary, model_dir


@pytest.fixture(scope="session")
def hub_like_model(tf, tmp_path_factory) -> Path:
    """A TF2 SavedModel shaped like a TF Hub ImageNet classifier: callable, 1001 logits."""

    class HubLike(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([3, 1001], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
        def __call__(self, images):
            return tf.matmul(tf.reduce_mean(images, axis=[1, 2]), self.w)

    path = tmp_path_factory.mktemp("hub") / "hub_like"
    tf.saved_model.save(HubLike(), str(path))
    return path


@pytest.fixture
def broken_images_dir(tmp_path, test_images_dir) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(test_images_dir / "shapes_320x240.jpg", folder)
    (folder / "truncated.jpg").write_bytes(
        (test_images_dir / "gradient_500x375.jpg").read_bytes()[:40])
    return folder
