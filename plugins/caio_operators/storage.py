"""Bucket I/O by URI (``file://`` locally, ``gs://`` in the cloud) through fsspec.

Writes are atomic: a local file is written beside its target and renamed into place;
an object store receives one single-object upload. Readers never see half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

SCHEMES = ("file", "gs")


class StorageError(RuntimeError):
    """A bucket path cannot be read or written; the message names the path."""


def scheme(uri: str) -> str:
    parsed = urlparse(uri)
    return parsed.scheme or "file"


def is_local(uri: str) -> bool:
    return scheme(uri) == "file"


def local_path(uri: str) -> Path:
    """The filesystem path behind a ``file://`` URI (or a plain path)."""
    if not is_local(uri):
        raise StorageError(f"{uri} is not a local file:// URI")
    parsed = urlparse(uri)
    return Path(parsed.path if parsed.scheme else uri)


def to_uri(path: str | os.PathLike) -> str:
    """A ``file://`` URI for a local path; URIs pass through unchanged."""
    text = str(path)
    if "://" in text:
        return text
    return "file://" + str(Path(text).resolve())


def join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for part in parts:
        out = out + "/" + str(part).strip("/")
    return out


def _fs(uri: str):
    import fsspec  # light, but keep DAG parsing free of it

    # Other processes (Locust workers and pods, the model server) write into the bucket
    # while we run: never answer exists/list_files from a listing cached in this process.
    fs, path = fsspec.core.url_to_fs(uri, use_listings_cache=False)
    return fs, path


def write_bytes(uri: str, data: bytes) -> str:
    """Write ``data`` to ``uri`` atomically and return the URI."""
    try:
        if is_local(uri):
            target = local_path(uri)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        else:
            fs, path = _fs(uri)
            fs.pipe_file(path, data)  # one single-object upload: whole or absent
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot write {uri}: {exc.strerror or exc}. Check that the "
                           "bucket exists, is writable and has free space.") from exc
    return uri


def write_text(uri: str, text: str) -> str:
    return write_bytes(uri, text.encode("utf-8"))


def put_file(src: str | os.PathLike, uri: str) -> str:
    """Copy a local file to ``uri`` atomically."""
    if is_local(uri):
        return write_bytes(uri, Path(src).read_bytes())
    try:
        fs, path = _fs(uri)
        fs.put_file(str(src), path)
    except OSError as exc:
        raise StorageError(f"cannot upload {src} to {uri}: {exc}") from exc
    return uri


def read_bytes(uri: str) -> bytes:
    try:
        if is_local(uri):
            return local_path(uri).read_bytes()
        fs, path = _fs(uri)
        return fs.cat_file(path)
    except FileNotFoundError as exc:
        raise StorageError(f"{uri} does not exist") from exc
    except OSError as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from exc


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def exists(uri: str) -> bool:
    if is_local(uri):
        return local_path(uri).exists()
    fs, path = _fs(uri)
    return fs.exists(path)


def list_files(uri: str, suffix: str = "") -> list[str]:
    """URIs of the files directly or recursively under ``uri`` ending in ``suffix``, sorted.

    Temporary files of in-progress atomic writes (``.name.tmp``) are never listed.
    """
    if is_local(uri):
        root = local_path(uri)
        if not root.exists():
            return []
        return sorted(
            to_uri(p) for p in root.rglob(f"*{suffix}")
            if p.is_file() and not p.name.startswith(".")
        )
    fs, path = _fs(uri)
    if not fs.exists(path):
        return []
    prefix = scheme(uri) + "://"
    return sorted(
        prefix + p for p in fs.find(path)
        if p.endswith(suffix) and not p.rsplit("/", 1)[-1].startswith(".")
    )


def remove_tree(uri: str) -> None:
    if is_local(uri):
        import shutil

        shutil.rmtree(local_path(uri), ignore_errors=True)
        return
    fs, path = _fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)
