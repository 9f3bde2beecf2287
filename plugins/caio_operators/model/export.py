"""Export a model source as a SavedModel with ``serving_default`` and ``serving_preprocess``.

Steps: parse the source, read and decode the check images (fail early), build or load the
base classifier, resolve labels, save the serving module to a staging directory next to
``model_uri``, reload it and call both signatures on the check images, then replace
``model_uri`` with the staging directory. Re-running replaces the model, never mixes two.

TensorFlow is imported inside functions only: importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
import warnings
from typing import TYPE_CHECKING, Any

from caio_operators import storage
from caio_operators.model.sources import ModelSource, ModelSourceError, parse_source

if TYPE_CHECKING:
    from caio_operators.model.serving import BaseClassifier

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_CHECK_IMAGES = 16
BACKGROUND_LABELS = ("background", "unused background")
METADATA_PATH = "assets.extra/caio_export.json"  # next to the model; servers ignore assets.extra
UNTRAINED = "untrained: offline Keras architecture, weights=None"


class ExportError(RuntimeError):
    """The model cannot be exported; the message says what is wrong and what to do."""


def export_serving_model(
    source: str,
    model_uri: str,
    *,
    labels_uri: str | None = None,
    test_images_uri: str | None = None,
    top_k: int = 5,
) -> dict[str, Any]:
    """Export ``source`` to ``model_uri`` (local path, ``file://`` or ``gs://``), check it and
    return a small JSON-able summary."""
    started = time.perf_counter()
    try:
        parsed = parse_source(source)
    except ModelSourceError as exc:
        raise ExportError(str(exc)) from exc
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ExportError(f"top_k={top_k!r} must be a positive integer (default 5)")
    tf = _tensorflow()
    from caio_operators.model import serving

    target = _tf_path(model_uri)
    check_images = read_check_images(test_images_uri)
    base = load_base_classifier(parsed)
    if top_k > base.num_classes:
        raise ExportError(f"top_k={top_k} is larger than the model's {base.num_classes} classes; "
                          f"use top_k <= {base.num_classes}")
    labels, labels_note = resolve_labels(labels_uri, base.num_classes)
    module = serving.ServingModule(base, labels, top_k=top_k)

    summary: dict[str, Any] = {
        "model_uri": model_uri,
        "source": str(parsed),
        "base_model": base.name,
        "weights": base.weights,
        "num_classes": base.num_classes,
        "top_k": top_k,
        "labels": labels_note,
        "notes": list(base.notes),
        "tf_version": tf.__version__,
        "keras_version": _keras_version() if parsed.kind == "builtin" else None,
    }
    staging = _staging_path(target)
    try:
        try:
            tf.saved_model.save(module, staging, signatures=module.signatures())
            _write_text(_join(staging, METADATA_PATH), json.dumps(summary, indent=2))
        except (tf.errors.OpError, OSError) as exc:
            raise ExportError(f"cannot write the SavedModel next to {model_uri}: {exc}. Check that "
                              "the bucket or directory exists and is writable.") from exc
        reloaded = tf.saved_model.load(staging)
        summary["signatures"] = describe_signatures(reloaded)
        summary["check"] = check_signatures(reloaded, check_images, top_k=top_k)
        try:
            _replace_dir(staging, target)
        except (tf.errors.OpError, OSError) as exc:
            raise ExportError(f"cannot put the new SavedModel in place at {model_uri}: {exc}. "
                              "Check permissions on it and its parent directory.") from exc
    finally:
        _remove_quietly(staging)
    summary["export_seconds"] = round(time.perf_counter() - started, 2)
    log.info("exported %s to %s in %.1f s", parsed, model_uri, summary["export_seconds"])
    return summary


# --- TensorFlow setup and paths ------------------------------------------------------------


def _tensorflow():
    """Import TensorFlow quietly; ``CAIO_TF_THREADS`` caps its thread pools (shared workers)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    text = os.environ.get("CAIO_TF_THREADS", "").strip()
    threads = int(text) if text.isdigit() else 0
    if threads > 0:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:
            pass  # the runtime is already initialised in this process; keep its settings
    return tf


def _keras_version() -> str:
    import keras

    return keras.__version__


def _tf_path(uri: str) -> str:
    """What tf.io.gfile wants: a plain path for local URIs, the URI itself for gs://."""
    if storage.is_local(uri):
        return os.path.abspath(storage.local_path(uri))
    return uri.rstrip("/")


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _staging_path(target: str) -> str:
    parent, _, name = target.rstrip("/").rpartition("/")
    if not name:
        raise ExportError(f"model_uri {target!r} has no directory name to export into")
    return f"{parent}/.{name}.staging-{uuid.uuid4().hex[:8]}"


def _replace_dir(staging: str, target: str) -> None:
    """Put ``staging`` in place of ``target``: a rename swap locally, delete + copy on gs://."""
    target = target.rstrip("/")
    if storage.is_local(target):
        swap_local_dir(staging, target)
    else:
        replace_tree_by_copy(staging, target)


def swap_local_dir(staging: str, target: str) -> None:
    """Two renames: readers see the old model or the new one, never a mix."""
    old = f"{_staging_path(target)}.old"
    if os.path.lexists(target):
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError:
        if os.path.lexists(old):
            os.rename(old, target)
        raise
    _remove_quietly(old)


def replace_tree_by_copy(staging: str, target: str) -> None:
    """Object stores have no directory rename: delete the old tree first so nothing old stays
    mixed in, then copy the new one object by object (``staging`` is removed by the caller)."""
    import tensorflow as tf

    if tf.io.gfile.exists(target):
        tf.io.gfile.rmtree(target)
    for folder, _, files in tf.io.gfile.walk(staging):
        relative = folder[len(staging):].strip("/")
        dest = _join(target, relative) if relative else target
        tf.io.gfile.makedirs(dest)
        for name in files:
            tf.io.gfile.copy(_join(folder, name), _join(dest, name), overwrite=True)


def _remove_quietly(path: str) -> None:
    import tensorflow as tf

    try:
        if tf.io.gfile.exists(path):
            tf.io.gfile.rmtree(path)
    except tf.errors.OpError as exc:  # leftovers are hidden (.name) and harmless; say so
        log.warning("could not remove temporary export directory %s: %s", path, exc)


def _read_bytes(path: str) -> bytes:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as handle:
        return handle.read()


def _write_text(path: str, text: str) -> None:
    import tensorflow as tf

    tf.io.gfile.makedirs(path.rpartition("/")[0])
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(text)


# --- base classifiers ----------------------------------------------------------------------


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

    path = _tf_path(uri)
    if not tf.io.gfile.exists(_join(path, "saved_model.pb")):
        raise ExportError(f"no SavedModel at {uri} (saved_model.pb not found). Point "
                          "savedmodel: at the directory that holds saved_model.pb.")
    try:
        obj = tf.saved_model.load(path)
    except Exception as exc:  # corrupt protos and missing variables raise assorted errors
        raise ExportError(f"cannot load the SavedModel at {uri}: {type(exc).__name__}: {exc}") \
            from exc
    return _from_signature(obj, uri, "existing SavedModel", source_text=f"savedmodel:{uri}")


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
    if "serving_default" in signatures:
        sig_name = "serving_default"
    elif len(signatures) == 1:
        sig_name = next(iter(signatures))
    else:
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
    if "logits" in outputs:
        output_name = "logits"
    elif len(outputs) == 1:
        output_name = next(iter(outputs))
    else:
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


# --- labels and check images ---------------------------------------------------------------


def resolve_labels(labels_uri: str | None, num_classes: int) -> tuple[list[str], str]:
    """One label per class, and a note saying where they came from.

    TF Hub ImageNet classifiers have 1001 classes with "background" first: a 1000-line
    labels file gets "background" prepended; a 1001-line file starting with "background"
    is trimmed for a 1000-class model. Any other mismatch is an error.
    """
    from caio_operators.model.serving import generated_labels

    if not labels_uri:
        last = f"class_{num_classes - 1:04d}"
        return generated_labels(num_classes), f"generated names class_0000..{last}"
    import tensorflow as tf

    try:
        text = _read_bytes(_tf_path(labels_uri)).decode("utf-8")
    except tf.errors.NotFoundError as exc:
        raise ExportError(f"labels file {labels_uri} does not exist; give a text file with one "
                          "label per line, or leave labels_uri unset for generated names") from exc
    except (tf.errors.OpError, OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read labels file {labels_uri}: {exc}. It must be a UTF-8 text "
                          "file with one label per line.") from exc
    labels = [line.strip() for line in text.strip("\n\r").splitlines()] if text.strip() else []
    if not labels:
        raise ExportError(f"labels file {labels_uri} is empty; it needs one label per line "
                          f"({num_classes} for this model)")
    if "" in labels:
        raise ExportError(f"labels file {labels_uri} line {labels.index('') + 1} is empty; blank "
                          "lines would shift every following label onto the wrong class")
    where = f"{labels_uri} ({len(labels)} lines)"
    if len(labels) == num_classes:
        return labels, where
    if len(labels) == num_classes - 1:
        return ["background", *labels], f"{where}; 'background' prepended for class 0"
    if len(labels) == num_classes + 1 and labels[0].lower() in BACKGROUND_LABELS:
        return labels[1:], f"{where}; leading '{labels[0]}' dropped"
    raise ExportError(
        f"labels file {labels_uri} has {len(labels)} labels but the model has {num_classes} "
        f"classes. Give exactly one label per class (line i names class i; {num_classes - 1} "
        "is also accepted when class 0 is background), or leave labels_uri unset."
    )


def read_check_images(test_images_uri: str | None) -> list[tuple[str, bytes]]:
    """(name, encoded bytes) of up to MAX_CHECK_IMAGES images, each verified to decode.

    Without a folder, one generated PNG gradient is used so the check always runs.
    """
    import tensorflow as tf

    if not test_images_uri:
        ramp = tf.cast(tf.linspace(0.0, 255.0, 160), tf.uint8)
        rows = tf.tile(ramp[None, :, None], [120, 1, 3])
        return [("generated-gradient.png", tf.io.encode_png(rows).numpy())]
    root = _tf_path(test_images_uri)
    if not tf.io.gfile.exists(root):
        raise ExportError(f"test images folder {test_images_uri} does not exist")
    if tf.io.gfile.isdir(root):
        paths = [_join(root, name) for name in sorted(tf.io.gfile.listdir(root))
                 if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")]
    else:
        paths = [root]
    if not paths:
        raise ExportError(f"test images folder {test_images_uri} has no {'/'.join(IMAGE_SUFFIXES)} "
                          "files; add a few sample images (see test_images/ in the repo) or "
                          "leave test_images_uri unset")
    images = []
    for path in paths[:MAX_CHECK_IMAGES]:
        name = path.rpartition("/")[2]
        try:
            data = _read_bytes(path)
            tf.io.decode_image(data, channels=3, expand_animations=False)
        except (tf.errors.OpError, OSError) as exc:
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            raise ExportError(f"test image {name} in {test_images_uri} cannot be decoded as "
                              f"JPEG/PNG ({reason.strip()}); replace or remove it") from exc
        images.append((name, data))
    return images


# --- description and check of the exported model -------------------------------------------


def _spec(spec) -> dict[str, Any]:
    return {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}


def describe_signatures(loaded) -> dict[str, Any]:
    """Names with input/output dtypes and shapes (JSON-able: unknown dims are None)."""
    from caio_operators.model.serving import SIGNATURE_NAMES

    out = {}
    for name in SIGNATURE_NAMES:
        fn = loaded.signatures[name]
        _, inputs = fn.structured_input_signature
        out[name] = {
            "inputs": {key: _spec(value) for key, value in inputs.items()},
            "outputs": {key: _spec(value) for key, value in fn.structured_outputs.items()},
        }
    return out


def check_signatures(loaded, images: list[tuple[str, bytes]], *, top_k: int) -> dict[str, Any]:
    """Call both signatures on the check images; raise ExportError if any output is off."""
    import numpy as np
    import tensorflow as tf

    from caio_operators.model.serving import preprocess_image

    names = [name for name, _ in images]
    encoded = tf.constant([data for _, data in images])
    batch = tf.stack([preprocess_image(data) for data in tf.unstack(encoded)])
    logits = loaded.signatures["serving_default"](images=batch)["logits"].numpy()
    out = loaded.signatures["serving_preprocess"](image_bytes=encoded)
    labels = out["labels"].numpy()
    probabilities = out["probabilities"].numpy()

    n = len(images)
    problems = []
    if logits.ndim != 2 or logits.shape[0] != n:
        problems.append(f"serving_default logits have shape {list(logits.shape)}, "
                        f"expected [{n}, C]")
    elif not np.all(np.isfinite(logits)):
        problems.append("serving_default returned non-finite logits")
    if labels.shape != (n, top_k) or probabilities.shape != (n, top_k):
        problems.append(f"serving_preprocess returned labels {list(labels.shape)} and "
                        f"probabilities {list(probabilities.shape)}, expected [{n}, {top_k}]")
    elif not (np.all(probabilities >= 0) and np.all(probabilities <= 1)
              and np.all(np.diff(probabilities, axis=1) <= 1e-6)):
        problems.append("serving_preprocess probabilities are not sorted values in [0, 1]")
    max_diff = None
    if not problems:
        # Both signatures must agree: same preprocessing, same model, same top-1 score.
        shifted = logits - logits.max(axis=1, keepdims=True)
        softmax = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        max_diff = float(np.max(np.abs(softmax.max(axis=1) - probabilities[:, 0])))
        if max_diff > 1e-3:
            problems.append("the two signatures disagree on the top-1 probability by "
                            f"{max_diff:.4g}")
    if problems:
        raise ExportError("the exported model failed its check on the test images: "
                          + "; ".join(problems))
    return {
        "images": n,
        "top1": [
            {"image": name, "label": labels[i, 0].decode("utf-8"),
             "probability": round(float(probabilities[i, 0]), 6)}
            for i, name in enumerate(names)
        ],
        "logits_shape": list(logits.shape),
        "top1_probability_max_diff": max_diff,
    }
