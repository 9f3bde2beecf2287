"""The base classifiers an export wraps: a builtin Keras architecture (untrained, offline),
a TF Hub model, or an existing SavedModel, each checked on probe images before use."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from caio_operators import storage
from caio_operators.model.sources import ModelSource
from caio_operators.model.tfio import ExportError, join_path, tf_path

if TYPE_CHECKING:
    from caio_operators.model.serving import BaseClassifier

UNTRAINED = "untrained: offline Keras architecture, weights=None"


def load_base_classifier(source: ModelSource) -> BaseClassifier:
    if source.kind == "builtin":
        return _builtin(source.value)
    if source.kind == "hub":
        return _hub(source.value)
    return _savedmodel(source.value)


def _builtin(name: str) -> BaseClassifier:
    import keras

    from caio_operators.model.serving import IMAGE_SIZE, BaseClassifier

    shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
    # scale/offset map [0, 1] pixels to what each architecture's preprocess_input produces.
    if name == "resnet_v2_101":
        model = keras.applications.ResNet101V2(
            weights=None, classifier_activation=None, input_shape=shape)
        title, scale, offset, note = "ResNet101V2", 2.0, -1.0, "inputs scaled [0,1] -> [-1,1]"
    elif name == "mobilenet_v3_small":
        # include_preprocessing=True (the default) rescales [0, 255] inside the model.
        model = keras.applications.MobileNetV3Small(
            weights=None, classifier_activation=None, input_shape=shape)
        title, scale, offset = "MobileNetV3Small", 255.0, 0.0
        note = "inputs scaled [0,1] -> [0,255]"
    elif name == "tiny":
        model = _tiny_convnet(shape)
        title, scale, offset, note = "tiny_convnet", 1.0, 0.0, "inputs used as [0,1]"
    else:  # parse_source only lets BUILTINS through
        raise ExportError(f"unknown builtin model {name!r}")

    def logits(images):
        return model(images * scale + offset, training=False)

    return BaseClassifier(root=model, fn=logits, num_classes=int(model.output_shape[-1]),
                          name=title, weights=UNTRAINED, notes=(note,))


def _tiny_convnet(shape: tuple[int, int, int], num_classes: int = 10):
    """A few-thousand-parameter conv net with seeded weights: same export, same outputs."""
    import keras

    def init(seed: int):
        return keras.initializers.GlorotUniform(seed=seed)

    inputs = keras.Input(shape, name="images")
    x = keras.layers.Conv2D(8, 5, strides=4, activation="relu", kernel_initializer=init(1))(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", kernel_initializer=init(2))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, kernel_initializer=init(3), name="logits")(x)
    return keras.Model(inputs, outputs, name="tiny_convnet")


def _hub(handle: str) -> BaseClassifier:
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tensorflow_hub warns about pkg_resources on import
        import tensorflow_hub as hub
    if handle.startswith("file://"):
        handle = str(storage.local_path(handle))  # hub resolves plain paths, not file:// URLs
    try:
        obj = hub.load(handle)
    except Exception as exc:  # hub raises many kinds: URL, file, SavedModel parse errors
        raise ExportError(
            f"cannot load TF Hub handle {handle!r}: {type(exc).__name__}: {exc}. Without internet "
            "access use a local copy: hub:/path/to/saved_model, or a pre-filled TFHUB_CACHE_DIR."
        ) from exc
    weights = f"TF Hub handle {handle} (its published weights)"
    call_error: Exception | None = None
    if callable(obj):
        # Hub models exported from Keras take a training flag; plain tf.Modules do not.
        for kwargs in ({"training": False}, {}):
            def call(images, _kwargs=kwargs):
                return obj(images, **_kwargs)
            try:
                probe = call(_probe_images())
            except (TypeError, ValueError, tf.errors.OpError) as exc:
                call_error = exc
                continue
            return _finish_restored(obj, call, probe, f"hub:{handle}", weights,
                                    ["inputs used as [0,1] (TF Hub image convention)"])
    if getattr(obj, "signatures", None):
        return _from_signature(obj, f"hub:{handle}", weights, source_text=f"hub:{handle}")
    raise ExportError(
        f"TF Hub handle {handle!r} is neither callable on float32 images [N,224,224,3] in [0,1] "
        f"({call_error or 'not callable'}) nor has a serving signature. Use an image "
        "classification model, e.g. https://tfhub.dev/google/imagenet/resnet_v2_101/classification/5"
    )


def _savedmodel(uri: str) -> BaseClassifier:
    import tensorflow as tf

    path = tf_path(uri)
    if not tf.io.gfile.exists(join_path(path, "saved_model.pb")):
        raise ExportError(f"no SavedModel at {uri} (saved_model.pb not found). Point "
                          "savedmodel: at the directory that holds saved_model.pb.")
    try:
        obj = tf.saved_model.load(path)
    except Exception as exc:  # corrupt protos and missing variables raise assorted errors
        raise ExportError(f"cannot load the SavedModel at {uri}: {type(exc).__name__}: {exc}") \
            from exc
    return _from_signature(obj, uri, "existing SavedModel", source_text=f"savedmodel:{uri}")


def _preferred_or_only(named: dict, preferred: str) -> str | None:
    """``preferred`` if it is one of the names, else the only name, else None."""
    if preferred in named:
        return preferred
    return next(iter(named)) if len(named) == 1 else None


def _from_signature(obj, name: str, weights: str, *, source_text: str) -> BaseClassifier:
    """Adapt a SavedModel signature taking one image tensor to [0,1] images -> logits."""
    import tensorflow as tf

    from caio_operators.model.serving import IMAGE_SIZE

    signatures = dict(getattr(obj, "signatures", {}) or {})
    if not signatures:
        raise ExportError(
            f"{source_text} has no serving signatures, so there is nothing to wrap. Re-save it "
            "with tf.saved_model.save(model, path, signatures={'serving_default': fn}) where fn "
            "takes float32 images [N,224,224,3] in [0,1]; a TF2 module callable on images can "
            "be used as hub:<path> instead."
        )
    sig_name = _preferred_or_only(signatures, "serving_default")
    if sig_name is None:
        raise ExportError(f"{source_text} has signatures {sorted(signatures)} but none is "
                          "'serving_default'; re-save it with a serving_default signature.")
    signature = signatures[sig_name]
    _, inputs = signature.structured_input_signature
    if len(inputs) != 1:
        raise ExportError(f"{source_text} signature {sig_name!r} takes inputs {sorted(inputs)}; "
                          "it must take exactly one image tensor [N,H,W,3].")
    input_name, spec = next(iter(inputs.items()))
    shape = spec.shape
    if (shape.rank not in (None, 4) or (shape.rank == 4 and shape[-1] not in (None, 3))
            or not (spec.dtype.is_floating or spec.dtype == tf.uint8)):
        raise ExportError(
            f"{source_text} signature {sig_name!r} input {input_name!r} is {spec.dtype.name} "
            f"{shape}; it must be float or uint8 images [N,H,W,3]. Export a signature that "
            "takes decoded images (this tool adds the JPEG/PNG decoding itself)."
        )
    outputs = signature.structured_outputs
    if not isinstance(outputs, dict):
        outputs = {"output_0": outputs}
    output_name = _preferred_or_only(outputs, "logits")
    if output_name is None:
        raise ExportError(f"{source_text} signature {sig_name!r} has outputs {sorted(outputs)}; "
                          "name the class scores 'logits' or return a single output.")

    notes = [f"wraps signature {sig_name!r} ({input_name} -> {output_name}); inputs used as [0,1]"]
    height, width = (shape[1], shape[2]) if shape.rank == 4 else (None, None)
    resize = height is not None and width is not None and (height, width) != (IMAGE_SIZE,) * 2
    if resize:
        notes.append(f"images resized 224x224 -> {height}x{width}")
    if spec.dtype == tf.uint8:
        notes.append("images converted to uint8 [0,255]")

    def call(images):
        if resize:
            images = tf.image.resize(images, [height, width])
        if spec.dtype == tf.uint8:
            images = tf.cast(tf.round(images * 255.0), tf.uint8)
        else:
            images = tf.cast(images, spec.dtype)
        result = signature(**{input_name: images})
        return result[output_name] if isinstance(result, dict) else result

    try:
        probe = call(_probe_images())
    except (TypeError, ValueError, tf.errors.OpError) as exc:
        raise ExportError(f"calling {source_text} signature {sig_name!r} on float images "
                          f"[2,224,224,3] failed: {exc}") from exc
    return _finish_restored(obj, call, probe, name, weights, notes)


def _probe_images():
    import tensorflow as tf

    from caio_operators.model.serving import IMAGE_SIZE

    ramp = tf.linspace(0.0, 1.0, IMAGE_SIZE)
    gradient = tf.stack([*tf.meshgrid(ramp, ramp), tf.fill([IMAGE_SIZE] * 2, 0.5)], axis=-1)
    return tf.stack([gradient, tf.fill([IMAGE_SIZE, IMAGE_SIZE, 3], 0.25)])


def _finish_restored(obj, call, probe, name, weights, notes) -> BaseClassifier:
    """Check the probe output is [N, C] class scores; turn probabilities back into logits."""
    import numpy as np
    import tensorflow as tf

    from caio_operators.model.serving import BaseClassifier

    values = np.asarray(probe)
    if values.ndim != 2 or values.shape[0] != 2 or values.shape[1] < 2:
        raise ExportError(f"{name} returns shape {list(values.shape)} for 2 images; an image "
                          "classifier must return class scores [N, num_classes].")
    looks_like_probabilities = bool(
        np.all(values >= 0) and np.all(values <= 1)
        and np.allclose(values.sum(axis=1), 1, atol=1e-3)
    )
    fn = call
    if looks_like_probabilities:
        notes = [*notes, "outputs are probabilities: converted to logits with log()"]

        def fn(images):
            return tf.math.log(tf.maximum(tf.cast(call(images), tf.float32), 1e-12))

    return BaseClassifier(root=obj, fn=fn, num_classes=int(values.shape[1]), name=name,
                          weights=weights, notes=tuple(notes))


