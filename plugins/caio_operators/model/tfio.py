"""TensorFlow, imported quietly, and files through ``tf.io.gfile`` (local paths and gs://):
what the export and the base classifiers share. TensorFlow is imported inside functions."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import uuid

from caio_operators import storage

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The model cannot be exported; the message says what is wrong and what to do."""


def import_tensorflow():
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


def keras_version() -> str:
    import keras

    return keras.__version__


def tf_path(uri: str) -> str:
    """What tf.io.gfile wants: a plain path for local URIs, the URI itself for gs://."""
    if storage.is_local(uri):
        return os.path.abspath(storage.local_path(uri))
    return uri.rstrip("/")


def join_path(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def staging_path(target: str) -> str:
    parent, _, name = target.rstrip("/").rpartition("/")
    if not name:
        raise ExportError(f"model_uri {target!r} has no directory name to export into")
    return f"{parent}/.{name}.staging-{uuid.uuid4().hex[:8]}"


_SWAP_TRIES = 20  # renames lost to other exports of the same version before giving up


def replace_dir(staging: str, target: str) -> None:
    """Put ``staging`` in place of ``target``: a rename swap locally, delete + copy on gs://."""
    target = target.rstrip("/")
    if storage.is_local(target):
        swap_local_dir(staging, target)
    else:
        replace_tree_by_copy(staging, target)


def swap_local_dir(staging: str, target: str) -> None:
    """Two renames: readers see the old model or the new one, never a mix.

    Two exports of the same model version at once (two runs sharing it) race here: the
    other may put its folder in place between our two renames. Ours then moves that one
    aside too and goes in (both are the same model; the last one in stays)."""
    for _ in range(_SWAP_TRIES):
        old = f"{staging_path(target)}.old"
        # no model yet, or the other export has just moved it aside
        with contextlib.suppress(FileNotFoundError):
            os.rename(target, old)
        try:
            os.rename(staging, target)
            break
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                if os.path.lexists(old) and not os.path.lexists(target):
                    os.rename(old, target)
                raise
            remove_quietly(old)  # the other export's model, in place since our first rename
    else:
        raise OSError(errno.EBUSY, f"{target} kept being replaced by other exports; "
                                   "export again")
    remove_quietly(old)


def replace_tree_by_copy(staging: str, target: str) -> None:
    """Object stores have no directory rename: delete the old tree first so nothing old stays
    mixed in, then copy the new one object by object (``staging`` is removed by the caller)."""
    import tensorflow as tf

    if tf.io.gfile.exists(target):
        tf.io.gfile.rmtree(target)
    for folder, _, files in tf.io.gfile.walk(staging):
        relative = folder[len(staging):].strip("/")
        dest = join_path(target, relative) if relative else target
        tf.io.gfile.makedirs(dest)
        for name in files:
            tf.io.gfile.copy(join_path(folder, name), join_path(dest, name), overwrite=True)


def remove_quietly(path: str) -> None:
    import tensorflow as tf

    try:
        if tf.io.gfile.exists(path):
            tf.io.gfile.rmtree(path)
    except tf.errors.OpError as exc:  # leftovers are hidden (.name) and harmless; say so
        log.warning("could not remove temporary export directory %s: %s", path, exc)


def read_bytes(path: str) -> bytes:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as handle:
        return handle.read()


def write_text(path: str, text: str) -> None:
    import tensorflow as tf

    tf.io.gfile.makedirs(path.rpartition("/")[0])
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(text)


