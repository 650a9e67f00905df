"""Same-photo copies as real FER datasets hold them, for measuring dedup (bench, tests, the demo).

Real FER sets were assembled from web searches and face detectors, so the commonest duplicate is
the same photo **cropped again with a slightly different face box** (zoom about 0.85-1.15, a shift
of a few pixels), often with a semi-transparent stock watermark on one copy or another tone curve.
These functions make such copies from any source image; :func:`recrop_pair` crops both copies from
one larger source, as two face detectors would.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Words a stock-photo watermark might read.
WATERMARK_WORDS = ("stock", "photo", "preview", "sample", "images", "dreams")


def crop(source: np.ndarray, zoom: float, dy: float, dx: float, size: int = 48, frac: float = 0.8) -> np.ndarray:
    """A face box of ``source`` resized to ``size``: side ``frac * S / zoom``, centre moved by (dy, dx).

    ``dy``/``dx`` are in pixels of the output; ``zoom`` above 1 shows the face larger (a tighter box).
    The box is clamped inside the source (whose side must allow it).
    """
    s = source.shape[0]
    side = min(frac * s / zoom, s)
    scale = side / size  # source pixels per output pixel
    cy = (s - side) / 2 + dy * scale
    cx = (s - side) / 2 + dx * scale
    cy = float(np.clip(cy, 0, s - side))
    cx = float(np.clip(cx, 0, s - side))
    im = Image.fromarray(source)
    out = im.resize((size, size), Image.Resampling.BICUBIC, box=(cx, cy, cx + side, cy + side))
    return np.asarray(out)


def recrop_pair(
    source: np.ndarray, rng: np.random.Generator, max_zoom: float = 0.15, max_shift: float = 4.0, size: int = 48
) -> tuple[np.ndarray, np.ndarray, float, tuple[float, float]]:
    """Two crops of one source: the plain box and one zoomed by up to ``1 +- max_zoom`` and shifted.

    Returns:
        The two images, the second's zoom relative to the first and its shift (dy, dx) in pixels.
    """
    first = crop(source, 1.0, 0.0, 0.0, size)
    zoom = float(rng.uniform(1 - max_zoom, 1 + max_zoom))
    dy, dx = (float(v) for v in rng.uniform(-max_shift, max_shift, 2))
    return first, crop(source, zoom, dy, dx, size), zoom, (dy, dx)


def watermark(img: np.ndarray, rng: np.random.Generator, opacity: float | None = None) -> np.ndarray:
    """``img`` with semi-transparent stock-photo text over it (drawn at 4x, then reduced).

    Light text with a dark outline, across the middle or the lower half, as stock sites stamp it.
    """
    size = img.shape[0]
    big = size * 4
    layer = Image.new("L", (big, big), 0)
    ink = Image.new("L", (big, big), 0)
    draw_mask = ImageDraw.Draw(layer)
    draw_ink = ImageDraw.Draw(ink)
    word = str(rng.choice(WATERMARK_WORDS))
    font = ImageFont.load_default(size=int(big * rng.uniform(0.16, 0.24)))
    left, top, right, bottom = draw_mask.textbbox((0, 0), word, font=font)
    x = (big - (right - left)) / 2 + rng.uniform(-0.1, 0.1) * big - left
    y = big * rng.uniform(0.3, 0.7) - (bottom - top) / 2 - top
    draw_mask.text((x, y), word, font=font, fill=255, stroke_width=3, stroke_fill=255)
    draw_ink.text((x, y), word, font=font, fill=255, stroke_width=3, stroke_fill=0)
    alpha = np.asarray(layer.resize((size, size), Image.Resampling.BOX), np.float64) / 255.0
    tone = np.asarray(ink.resize((size, size), Image.Resampling.BOX), np.float64)
    a = (opacity if opacity is not None else rng.uniform(0.25, 0.5)) * alpha
    out = img.astype(np.float64) * (1 - a) + tone * a
    return np.clip(out, 0, 255).round().astype(np.uint8)


def tone_curve(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``img`` through another tone curve: a gamma of 0.75-1.35 and a mild S-curve or its inverse."""
    x = img.astype(np.float64) / 255.0
    x = x ** rng.uniform(0.75, 1.35)
    s = rng.uniform(-0.25, 0.25)
    x = x + s * np.sin(2 * np.pi * x) / (2 * np.pi)
    return np.clip(x * 255.0, 0, 255).round().astype(np.uint8)
