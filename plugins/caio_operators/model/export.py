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
import time
from typing import Any

from caio_operators.model.classifiers import load_base_classifier
from caio_operators.model.sources import ModelSourceError, parse_source
from caio_operators.model.tfio import (
    ExportError,
    import_tensorflow,
    join_path,
    keras_version,
    read_bytes,
    remove_quietly,
    replace_dir,
    staging_path,
    tf_path,
    write_text,
)

__all__ = ["ExportError", "export_serving_model", "read_check_images", "resolve_labels"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_CHECK_IMAGES = 16
BACKGROUND_LABELS = ("background", "unused background")
METADATA_PATH = "assets.extra/caio_export.json"  # next to the model; servers ignore assets.extra


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
    tf = import_tensorflow()
    from caio_operators.model import serving

    target = tf_path(model_uri)
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
        "keras_version": keras_version() if parsed.kind == "builtin" else None,
    }
    staging = staging_path(target)
    try:
        try:
            tf.saved_model.save(module, staging, signatures=module.signatures())
            write_text(join_path(staging, METADATA_PATH), json.dumps(summary, indent=2))
        except (tf.errors.OpError, OSError) as exc:
            raise ExportError(f"cannot write the SavedModel next to {model_uri}: {exc}. Check that "
                              "the bucket or directory exists and is writable.") from exc
        reloaded = tf.saved_model.load(staging)
        summary["signatures"] = describe_signatures(reloaded)
        summary["check"] = check_signatures(reloaded, check_images, top_k=top_k)
        try:
            replace_dir(staging, target)
        except (tf.errors.OpError, OSError) as exc:
            raise ExportError(f"cannot put the new SavedModel in place at {model_uri}: {exc}. "
                              "Check permissions on it and its parent directory.") from exc
    finally:
        remove_quietly(staging)
    summary["export_seconds"] = round(time.perf_counter() - started, 2)
    log.info("exported %s to %s in %.1f s", parsed, model_uri, summary["export_seconds"])
    return summary


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
        text = read_bytes(tf_path(labels_uri)).decode("utf-8")
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
    root = tf_path(test_images_uri)
    if not tf.io.gfile.exists(root):
        raise ExportError(f"test images folder {test_images_uri} does not exist")
    if tf.io.gfile.isdir(root):
        paths = [join_path(root, name) for name in sorted(tf.io.gfile.listdir(root))
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
            data = read_bytes(path)
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
