"""Build a tiny SavedModel with the project's two serving signatures (run as a script).

``serving_default``: ``images`` float32 [None, 224, 224, 3] -> ``logits`` [None, 10], the
mean colour times a fixed matrix (so the tests can compute the expected logits).
``serving_preprocess``: ``image_bytes`` string [None] (JPEG/PNG) -> decode, central crop, resize,
then ``labels`` string [None, 5] and ``probabilities`` float32 [None, 5]: a red image's top
label is "red", a green one's "green", a blue one's "blue".

Run in a subprocess so that the pytest process never imports TensorFlow.
"""

from __future__ import annotations

import sys

import numpy as np

LABELS = ["red", "green", "blue"] + [f"class_{i}" for i in range(3, 10)]
WEIGHTS = np.zeros((3, 10), dtype=np.float32)
WEIGHTS[0, 0] = WEIGHTS[1, 1] = WEIGHTS[2, 2] = 5.0
BIAS = np.linspace(0.0, 0.9, 10, dtype=np.float32)[::-1].copy() * 0.1


def expected_logits(images: np.ndarray) -> np.ndarray:
    return images.mean(axis=(1, 2)) @ WEIGHTS + BIAS


def build(out_dir: str) -> None:
    from caio_operators.targets.replica import skip_keras_import

    skip_keras_import()  # not needed here; halves the start-up
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = tf.Variable(WEIGHTS)
            self.bias = tf.Variable(BIAS)
            self.labels = tf.constant(LABELS)

        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32)])
        def serving_default(self, images):
            return {"logits": tf.reduce_mean(images, axis=[1, 2]) @ self.weights + self.bias}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serving_preprocess(self, image_bytes):  # the argument names the input
            def one(data):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                image = tf.image.central_crop(tf.cast(image, tf.float32) / 255.0, 0.875)
                return tf.image.resize(image, [224, 224])

            images = tf.map_fn(one, image_bytes,
                               fn_output_signature=tf.TensorSpec([224, 224, 3], tf.float32))
            logits = tf.reduce_mean(images, axis=[1, 2]) @ self.weights + self.bias
            top = tf.math.top_k(tf.nn.softmax(logits), k=5)
            return {"labels": tf.gather(self.labels, top.indices),
                    "probabilities": top.values}

    module = Tiny()
    tf.saved_model.save(module, out_dir, signatures={
        "serving_default": module.serving_default,
        "serving_preprocess": module.serving_preprocess})


if __name__ == "__main__":
    build(sys.argv[1])
