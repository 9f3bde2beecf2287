"""Request payloads from a folder of images: ``[{"signature", "instances"}, ...]``.

``serving_preprocess`` takes the encoded image files as ``{"b64": ...}``; ``serving_default``
takes decoded ``[224, 224, 3]`` RGB pixels scaled to ``[0, 1]`` (PIL + numpy here, never
TensorFlow, so building a payload stays light).
"""

from __future__ import annotations

import base64
import io
import json
import os
from typing import Any

from caio_operators import storage

SIGNATURES = ("serving_default", "serving_preprocess")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


class PayloadError(ValueError):
    """The images cannot make a payload; the message names the folder or file."""


def list_images(images_uri_or_dir: str | os.PathLike) -> list[str]:
    """URIs of the image files (by suffix) under a folder, sorted; errors if there are none."""
    root = storage.to_uri(images_uri_or_dir)
    try:
        if not storage.exists(root):
            raise PayloadError(f"image folder {root} does not exist")
        files = storage.list_files(root)
    except (OSError, storage.StorageError) as exc:
        raise PayloadError(f"cannot list images in {root}: {exc}") from exc
    images = [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    if not images:
        others = ", ".join(f.rsplit("/", 1)[-1] for f in files[:5]) or "no files at all"
        raise PayloadError(
            f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {root} (found: {others}); "
            "point the payload at a folder of JPEG or PNG images")
    return images


def build_payload(
    images_uri_or_dir: str | os.PathLike,
    signature: str,
    instances_per_request: int = 1,
    *,
    image_size: int = 224,
    decimals: int = 6,
) -> list[dict[str, Any]]:
    """One payload item per request: ``instances_per_request`` instances each, every image
    used once (the last request wraps around to the first images to stay full)."""
    if signature not in SIGNATURES:
        raise PayloadError(f"signature is {signature!r}; use one of {', '.join(SIGNATURES)}")
    if instances_per_request < 1:
        raise PayloadError(f"instances_per_request is {instances_per_request}; it must be >= 1")
    instances = [
        _instance(uri, storage.read_bytes(uri), signature, image_size, decimals)
        for uri in list_images(images_uri_or_dir)
    ]
    return [{"signature": signature, "instances": chunk}
            for chunk in _chunks(instances, instances_per_request)]


def write_payload(
    images_uri_or_dir: str | os.PathLike,
    payload_uri: str,
    signature: str,
    instances_per_request: int = 1,
    **options: Any,
) -> dict[str, Any]:
    """Build the payload (see ``build_payload``) and write it as JSON, atomically, to
    ``payload_uri``; returns ``{payload_uri, requests, instances}``."""
    payload = build_payload(images_uri_or_dir, signature, instances_per_request, **options)
    storage.write_text(payload_uri, json.dumps(payload, separators=(",", ":")))
    return {"payload_uri": payload_uri, "requests": len(payload),
            "instances": sum(len(item["instances"]) for item in payload)}


def _instance(uri: str, data: bytes, signature: str, size: int, decimals: int) -> Any:
    from PIL import Image, UnidentifiedImageError  # only when a payload is built

    try:
        with Image.open(io.BytesIO(data)) as image:
            if signature == "serving_preprocess":
                image.verify()  # a broken file fails here, not as 400s under load
                return {"b64": base64.b64encode(data).decode("ascii")}
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise PayloadError(f"{uri} is not a readable image ({exc}); remove it or replace it "
                           "with a JPEG or PNG file") from exc
    import numpy as np

    pixels = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    return np.round(pixels.astype(np.float64), decimals).tolist()


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    n = len(items)
    return [[items[(i * size + j) % n] for j in range(size)] for i in range(-(-n // size))]
