"""A replica's model: load a SavedModel's signatures with TensorFlow, and warm them up.

The only module of the local server that imports TensorFlow (inside its functions).
"""

from __future__ import annotations

import importlib.machinery
import logging
import sys
import time
import types

import numpy as np

from caio_operators.targets.instances import STRING, SignatureInfo, TensorInfo

log = logging.getLogger("caio_operators.targets.replica")


def skip_keras_import() -> None:
    """Make `import tensorflow` skip its eager import of Keras.

    Serving a SavedModel needs no Keras, but TensorFlow imports it (with scikit-learn,
    pandas, SciPy...) on import, which doubles a replica's start-up. A placeholder module
    with Keras' real spec keeps TensorFlow's path lookups working while its optional
    `import keras.src.optimizers` fails and is skipped.
    """
    if "keras" in sys.modules:
        return
    spec = importlib.machinery.PathFinder.find_spec("keras")
    if spec is None:
        return
    placeholder = types.ModuleType("keras")
    placeholder.__spec__ = spec
    sys.modules["keras"] = placeholder


def _tensor_info(tf, name: str, spec) -> TensorInfo:
    dtype = STRING if spec.dtype == tf.string else spec.dtype.name
    shape = None if spec.shape.rank is None else tuple(spec.shape.as_list())
    return TensorInfo(name=name, dtype=dtype, shape=shape)


def load_model(model_dir: str, *, intra_threads: int, inter_threads: int, import_keras: bool):
    """(signature infos, predict callable, client error types) for a SavedModel."""
    if not import_keras:
        skip_keras_import()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra_threads)
    tf.config.threading.set_inter_op_parallelism_threads(inter_threads)
    loaded = tf.saved_model.load(model_dir)
    functions = dict(loaded.signatures)
    if not functions:
        raise RuntimeError(f"the SavedModel at {model_dir} has no serving signatures")
    infos = {}
    for name, function in functions.items():
        _, kwargs = function.structured_input_signature
        outputs = function.structured_outputs
        infos[name] = SignatureInfo(
            name=name,
            inputs=tuple(_tensor_info(tf, k, s) for k, s in sorted(kwargs.items())),
            outputs=tuple(_tensor_info(tf, k, s) for k, s in sorted(outputs.items())))

    def predict(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # `loaded` stays referenced here: its variables die with it.
        result = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}

    return infos, predict, (tf.errors.InvalidArgumentError,)


def warm_up(infos: dict[str, SignatureInfo], predict) -> None:
    """Run each signature once so that the first real request is not the slow one."""
    import tensorflow as tf

    image = tf.io.encode_png(tf.zeros([32, 32, 3], tf.uint8)).numpy()
    for name, info in sorted(infos.items()):
        inputs = {}
        for t in info.inputs:
            if t.dtype == STRING:
                inputs[t.name] = np.array([image], dtype=object)
            elif t.shape is not None:
                inputs[t.name] = np.zeros([d or 1 for d in t.shape], dtype=t.dtype)
        if len(inputs) != len(info.inputs):
            continue
        started = time.perf_counter()
        try:
            predict(name, inputs)
        except Exception as exc:  # a warm-up input the model dislikes is not fatal
            log.info("warm-up of %s skipped: %s", name, str(exc).splitlines()[0][:200])
            continue
        log.info("warm-up of %s took %.0f ms", name, (time.perf_counter() - started) * 1000)
