"""Regenerate the sample images in this folder, offline and deterministically.

    .venv/bin/python test_images/make_images.py

Synthetic pictures (gradients, shapes, soft noise) in the sizes and formats real payloads
come in: JPEG and PNG, RGB, grayscale and RGBA, landscape, portrait and square.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent


def gradient(width: int, height: int) -> np.ndarray:
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (1 - x) * (1 - y)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def soft_noise(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise: coarse noise scaled up and posterised, so PNG compresses it well."""
    coarse = rng.integers(0, 256, size=(height // 16, width // 16, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    return smooth // 32 * 32


def shapes(width: int, height: int) -> Image.Image:
    image = Image.fromarray(gradient(width, height))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.1, height * 0.15, width * 0.5, height * 0.7), fill=(220, 40, 40))
    draw.rectangle((width * 0.55, height * 0.3, width * 0.9, height * 0.85), fill=(30, 90, 200))
    draw.polygon([(width * 0.3, height * 0.95), (width * 0.5, height * 0.6),
                  (width * 0.7, height * 0.95)], fill=(250, 210, 30))
    return image


def checkerboard(size: int, cell: int) -> np.ndarray:
    index = (np.arange(size) // cell)
    board = (index[None, :] + index[:, None]) % 2
    return (board * 200 + 30).astype(np.uint8)


def main() -> None:
    rng = np.random.default_rng(20240501)
    shapes(320, 240).save(HERE / "shapes_320x240.jpg", quality=85)
    Image.fromarray(gradient(500, 375)).save(HERE / "gradient_500x375.jpg", quality=85)
    Image.fromarray(soft_noise(224, 224, rng)).save(HERE / "noise_224x224.png", optimize=True)
    Image.fromarray(checkerboard(256, 32), mode="L").save(HERE / "checker_gray_256x256.png")
    portrait = np.dstack([soft_noise(240, 320, rng), np.full((320, 240), 255, np.uint8)])
    portrait[:, :40, 3] = 128  # a translucent strip: decoders must drop alpha, not fail
    Image.fromarray(portrait, mode="RGBA").save(HERE / "rgba_240x320.png", optimize=True)
    total = sum(p.stat().st_size for p in HERE.glob("*.[jp][pn]g"))
    print(f"wrote 5 images, {total / 1024:.0f} KB")


if __name__ == "__main__":
    main()
