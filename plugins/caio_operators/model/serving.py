"""The serving module: a ``tf.Module`` with the two signatures every target serves.

``serving_default``: images float32 [None, 224, 224, 3] in [0, 1] -> logits float32 [None, C]
``serving_preprocess``: bytes string [None] (encoded JPEG/PNG) -> labels string [None, k] and
probabilities float32 [None, k] (decode, central crop 0.875, resize, softmax, top-k).

This module imports TensorFlow at import time: import it only from ``export`` and the
local model server, never from anything a DAG file imports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

IMAGE_SIZE = 224
CENTRAL_FRACTION = 0.875
SERVING_DEFAULT = "serving_default"
SERVING_PREPROCESS = "serving_preprocess"
SIGNATURE_NAMES = (SERVING_DEFAULT, SERVING_PREPROCESS)


@dataclass
class BaseClassifier:
    """A classifier adapted to the serving contract, whatever it was built from."""

    root: Any  # the trackable object holding the variables (Keras model, restored SavedModel)
    fn: Callable[[tf.Tensor], tf.Tensor]  # [N,224,224,3] float32 in [0,1] -> logits [N,C]
    num_classes: int
    name: str  # e.g. "ResNet101V2", a hub handle, a SavedModel URI
    weights: str  # where the weights come from, in words
    notes: tuple[str, ...] = ()  # adaptations made (input range, resize, output conversion)


def generated_labels(num_classes: int) -> list[str]:
    return [f"class_{i:04d}" for i in range(num_classes)]


def preprocess_image(data: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG bytes -> float32 [224, 224, 3] in [0, 1] (central crop, then resize).

    The same steps as ``serving_preprocess``; clients use it to build ``serving_default`` inputs.
    """
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)  # uint8 -> [0, 1]
    image = tf.image.central_crop(image, CENTRAL_FRACTION)
    image = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE], method="bilinear")
    return tf.clip_by_value(image, 0.0, 1.0)


class ServingModule(tf.Module):
    """Wraps a :class:`BaseClassifier` with the ``serving_default`` and ``serving_preprocess``
    signatures. ``labels`` must hold exactly one name per class."""

    def __init__(self, base: BaseClassifier, labels: Sequence[str], top_k: int = 5):
        super().__init__(name="caio_serving")
        if len(labels) != base.num_classes:
            raise ValueError(f"{len(labels)} labels for {base.num_classes} classes")
        if not 1 <= top_k <= base.num_classes:
            raise ValueError(f"top_k={top_k} must be between 1 and {base.num_classes}")
        self.base_model = base.root  # tracked, so its variables are saved with the module
        self._logits_fn = base.fn
        self._top_k = top_k
        self.labels = tf.constant(list(labels), dtype=tf.string)

    @tf.function(
        input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32,
                                       name="images")]
    )
    def serving_default(self, images):
        logits = tf.cast(self._logits_fn(images), tf.float32)
        return {"logits": tf.identity(logits, name="logits")}

    # The `_bytes` suffix is AI Platform's cue to base64-decode `{"b64": ...}` inputs.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_preprocess(self, data):
        images = tf.map_fn(
            preprocess_image,
            data,
            fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32),
        )
        probabilities = tf.nn.softmax(tf.cast(self._logits_fn(images), tf.float32), axis=-1)
        top = tf.math.top_k(probabilities, k=self._top_k, sorted=True)
        return {
            "labels": tf.gather(self.labels, top.indices),
            "probabilities": top.values,
        }

    def signatures(self) -> dict[str, Any]:
        """The ``signatures=`` argument for ``tf.saved_model.save``."""
        return {
            SERVING_DEFAULT: self.serving_default.get_concrete_function(),
            SERVING_PREPROCESS: self.serving_preprocess.get_concrete_function(),
        }
