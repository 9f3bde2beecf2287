"""export_serving_model with real TensorFlow: tiny models, real images, real SavedModels."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from caio_operators.model.export import ExportError, export_serving_model


def _preprocessed(tf, image_bytes):
    from caio_operators.model.serving import preprocess_image

    return tf.stack([preprocess_image(tf.constant(data)) for data in image_bytes])


def _no_staging_left(parent):
    leftovers = [p.name for p in parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


def test_tiny_export_has_both_signatures(tf, tiny_export, tiny_labels, image_bytes):
    _, model_dir = tiny_export
    loaded = tf.saved_model.load(str(model_dir))
    assert {"serving_default", "serving_preprocess"} <= set(loaded.signatures)

    out = loaded.signatures["serving_preprocess"](image_bytes=tf.constant(image_bytes))
    labels, probabilities = out["labels"], out["probabilities"]
    assert labels.dtype == tf.string and probabilities.dtype == tf.float32
    assert labels.shape == (len(image_bytes), 5) and probabilities.shape == (len(image_bytes), 5)
    p = probabilities.numpy()
    assert np.all((p >= 0) & (p <= 1))
    assert np.all(np.diff(p, axis=1) <= 0), "top-5 must be sorted descending"
    known = set(tiny_labels.read_text().splitlines())
    assert {label.decode() for label in labels.numpy().ravel()} <= known

    logits = loaded.signatures["serving_default"](images=_preprocessed(tf, image_bytes))["logits"]
    assert logits.dtype == tf.float32 and logits.shape == (len(image_bytes), 10)
    # The two signatures are the same model: softmax(logits) top-5 == serving_preprocess top-5.
    softmax = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(-np.sort(-softmax, axis=1)[:, :5], p, atol=1e-5)
    _no_staging_left(model_dir.parent)


def test_tiny_export_summary_is_json_and_describes_the_model(tiny_export, tiny_labels):
    summary, model_dir = tiny_export
    json.dumps(summary)
    assert summary["model_uri"] == str(model_dir)
    assert summary["source"] == "builtin:tiny"
    assert summary["weights"].startswith("untrained")
    assert summary["num_classes"] == 10
    assert str(tiny_labels) in summary["labels"]
    sigs = summary["signatures"]
    assert sigs["serving_default"]["inputs"] == {
        "images": {"dtype": "float32", "shape": [None, 224, 224, 3]}}
    assert sigs["serving_default"]["outputs"] == {
        "logits": {"dtype": "float32", "shape": [None, 10]}}
    assert sigs["serving_preprocess"]["inputs"] == {
        "image_bytes": {"dtype": "string", "shape": [None]}}
    assert sigs["serving_preprocess"]["outputs"]["labels"] == {"dtype": "string",
                                                               "shape": [None, 5]}
    assert summary["check"]["images"] == 5
    assert {row["image"] for row in summary["check"]["top1"]} >= {"shapes_320x240.jpg",
                                                                   "rgba_240x320.png"}
    assert all(row["label"].startswith("thing ") for row in summary["check"]["top1"])
    assert summary["tf_version"] and summary["export_seconds"] > 0
    saved = json.loads((model_dir / "assets.extra" / "caio_export.json").read_text())
    assert saved["source"] == "builtin:tiny"


def test_reexport_replaces_and_generates_labels(tf, tmp_path, tiny_labels, image_bytes):
    target = tmp_path / "models" / "tiny" / "2"
    uri = "file://" + str(target)
    export_serving_model("builtin:tiny", uri, labels_uri=str(tiny_labels), top_k=3)
    (target / "stale-file.txt").write_text("from an older export")

    summary = export_serving_model("builtin:tiny", uri)  # no labels, no test images

    assert not (target / "stale-file.txt").exists(), "re-export must replace, not merge"
    assert summary["labels"].startswith("generated")
    assert summary["check"]["top1"][0]["image"] == "generated-gradient.png"
    out = tf.saved_model.load(str(target)).signatures["serving_preprocess"](
        image_bytes=tf.constant(image_bytes[:2]))
    assert out["labels"].shape == (2, 5)
    assert all(label.decode().startswith("class_00") for label in out["labels"].numpy().ravel())
    _no_staging_left(target.parent)


def test_object_store_replace_deletes_old_tree_then_copies(tf, tmp_path):
    """The gs:// branch (delete + copy via tf.io.gfile), exercised on local files."""
    from caio_operators.model.tfio import replace_tree_by_copy

    staging, target = tmp_path / ".v1.staging", tmp_path / "v1"
    (staging / "variables").mkdir(parents=True)
    (staging / "saved_model.pb").write_bytes(b"new model")
    (staging / "variables" / "variables.index").write_bytes(b"new index")
    (target / "variables").mkdir(parents=True)
    (target / "saved_model.pb").write_bytes(b"old model")
    (target / "variables" / "old-shard").write_bytes(b"old")

    replace_tree_by_copy(str(staging), str(target))

    files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert files == ["saved_model.pb", "variables/variables.index"]
    assert (target / "saved_model.pb").read_bytes() == b"new model"


def test_hub_source_from_local_path(tf, tmp_path, hub_like_model, image_bytes, test_images_dir):
    labels = tmp_path / "imagenet_1000.txt"
    labels.write_text("".join(f"label {i}\n" for i in range(1000)))
    target = tmp_path / "hub_model"

    summary = export_serving_model(f"hub:{hub_like_model}", str(target), labels_uri=str(labels),
                                   test_images_uri=str(test_images_dir))

    assert summary["num_classes"] == 1001
    assert summary["weights"].startswith("TF Hub handle")
    assert "'background' prepended" in summary["labels"]
    loaded = tf.saved_model.load(str(target))
    batch = _preprocessed(tf, image_bytes)
    expected = tf.saved_model.load(str(hub_like_model))(batch)  # Hub models take [0, 1] as is
    np.testing.assert_allclose(loaded.signatures["serving_default"](images=batch)["logits"],
                               expected, rtol=1e-5, atol=1e-5)
    top = loaded.signatures["serving_preprocess"](image_bytes=tf.constant(image_bytes))
    names = {label.decode() for label in top["labels"].numpy().ravel()}
    assert names <= {"background"} | {f"label {i}" for i in range(1000)}


def test_savedmodel_source_wraps_the_serving_signature(tf, tmp_path, tiny_export, image_bytes):
    _, tiny_dir = tiny_export
    target = tmp_path / "rewrapped"

    summary = export_serving_model(f"savedmodel:file://{tiny_dir}", str(target))

    assert summary["weights"] == "existing SavedModel"
    assert summary["num_classes"] == 10
    assert any("serving_default" in note for note in summary["notes"])
    batch = _preprocessed(tf, image_bytes)
    original = tf.saved_model.load(str(tiny_dir)).signatures["serving_default"](images=batch)
    rewrapped = tf.saved_model.load(str(target)).signatures["serving_default"](images=batch)
    np.testing.assert_allclose(rewrapped["logits"], original["logits"], rtol=1e-6, atol=1e-6)


def test_savedmodel_returning_probabilities_is_converted_to_logits(tf, tmp_path, image_bytes):
    class Softmaxed(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([3, 6], seed=[3, 4]))

        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32,
                                                    name="pixels")])
        def predict(self, pixels):
            return {"scores": tf.nn.softmax(tf.matmul(tf.reduce_mean(pixels, [1, 2]), self.w))}

    source_dir = tmp_path / "softmaxed"
    module = Softmaxed()
    tf.saved_model.save(module, str(source_dir), signatures={"predict": module.predict})

    summary = export_serving_model(f"savedmodel:{source_dir}", str(tmp_path / "out"))

    assert any("probabilities" in note for note in summary["notes"])
    loaded = tf.saved_model.load(str(tmp_path / "out"))
    probabilities = loaded.signatures["serving_preprocess"](
        image_bytes=tf.constant(image_bytes))["probabilities"].numpy()
    expected = module.predict(_preprocessed(tf, image_bytes))["scores"].numpy()
    np.testing.assert_allclose(probabilities, -np.sort(-expected, axis=1)[:, :5], atol=1e-5)


def test_savedmodel_without_signatures_is_a_clear_error(tf, tmp_path):
    bare = tf.Module()
    bare.w = tf.Variable(tf.zeros([3, 4]))
    tf.saved_model.save(bare, str(tmp_path / "bare"))
    target = tmp_path / "models" / "out"

    with pytest.raises(ExportError, match="has no serving signatures") as info:
        export_serving_model(f"savedmodel:{tmp_path / 'bare'}", str(target))
    assert "signatures={'serving_default'" in str(info.value)
    assert not target.exists()


def test_missing_savedmodel_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match=r"saved_model\.pb not found"):
        export_serving_model(f"savedmodel:{tmp_path / 'nothing'}", str(tmp_path / "out"))


def test_corrupt_image_folder_fails_before_anything_is_written(tmp_path, broken_images_dir):
    target = tmp_path / "models" / "out"
    with pytest.raises(ExportError, match=r"truncated\.jpg .*cannot be decoded") as info:
        export_serving_model("builtin:tiny", str(target), test_images_uri=str(broken_images_dir))
    assert "replace or remove it" in str(info.value)
    assert not target.parent.exists()


def test_empty_image_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(ExportError, match=r"has no \.jpg/\.jpeg/\.png files"):
        export_serving_model("builtin:tiny", str(tmp_path / "out"),
                             test_images_uri=str(tmp_path / "empty"))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("a\nb\nc\n", "has 3 labels but the model has 10 classes"),
        ("", "is empty"),
        ("a\n\nb\n" + "x\n" * 7, "line 2 is empty"),
        (b"\xff\xfe\x00bad", "cannot read labels file"),
    ],
)
def test_unusable_labels_are_clear_errors(tmp_path, content, match):
    labels = tmp_path / "labels.txt"
    if isinstance(content, bytes):
        labels.write_bytes(content)
    else:
        labels.write_text(content)
    with pytest.raises(ExportError, match=match):
        export_serving_model("builtin:tiny", str(tmp_path / "out"), labels_uri=str(labels))
    assert not (tmp_path / "out").exists()


def test_missing_labels_file_and_bad_source_and_top_k(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        export_serving_model("builtin:tiny", str(tmp_path / "out"),
                             labels_uri=str(tmp_path / "nope.txt"))
    with pytest.raises(ExportError, match="Accepted forms"):
        export_serving_model("builtin:resnet50", str(tmp_path / "out"))
    with pytest.raises(ExportError, match="top_k=11 is larger than the model's 10 classes"):
        export_serving_model("builtin:tiny", str(tmp_path / "out"), top_k=11)


@pytest.mark.slow
def test_resnet_v2_101_export(tf, tmp_path, test_images_dir, image_bytes):
    started = time.perf_counter()
    summary = export_serving_model("builtin:resnet_v2_101", str(tmp_path / "resnet"),
                                   test_images_uri=str(test_images_dir))
    seconds = time.perf_counter() - started
    print(f"\nbuiltin:resnet_v2_101 export took {seconds:.1f} s")

    assert summary["base_model"] == "ResNet101V2" and summary["num_classes"] == 1000
    loaded = tf.saved_model.load(str(tmp_path / "resnet"))
    logits = loaded.signatures["serving_default"](images=_preprocessed(tf, image_bytes))["logits"]
    assert logits.shape == (len(image_bytes), 1000) and logits.dtype == tf.float32
    out = loaded.signatures["serving_preprocess"](image_bytes=tf.constant(image_bytes))
    assert out["labels"].shape == (len(image_bytes), 5)
    p = out["probabilities"].numpy()
    assert np.all((p >= 0) & (p <= 1)) and np.all(np.diff(p, axis=1) <= 0)


def test_two_exports_of_one_version_at_once_both_go_in(tmp_path, monkeypatch):
    """Another export of the same version puts its folder in place between this one's two
    renames (the race two runs sharing a model version had): this one still goes in."""
    from caio_operators.model import tfio

    target = tmp_path / "models" / "m" / "v1"
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for folder in (ours, theirs):
        folder.mkdir()
        (folder / "saved_model.pb").write_text(folder.name)
    rename = os.rename
    raced = []

    def racing_rename(src, dst):
        if src == str(ours) and not raced:  # the other export wins the first time
            raced.append(dst)
            rename(theirs, dst)
        rename(src, dst)

    monkeypatch.setattr(tfio.os, "rename", racing_rename)
    target.parent.mkdir(parents=True)
    tfio.swap_local_dir(str(ours), str(target))
    assert raced == [str(target)]
    assert (target / "saved_model.pb").read_text() == "ours"
    assert sorted(p.name for p in target.parent.iterdir()) == ["v1"]  # nothing left aside
