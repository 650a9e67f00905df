"""The per-image kernel: crop a face box with a margin, make it grayscale, resize it, check it.

Pure functions over a batch of (file, box) items, mappable by :func:`fercurate.images.map_batches`
or by a distributed engine."""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from fercurate.affectnet.params import BOX_COLUMNS, BOX_OUTSIDE_TOLERANCE, Box
from fercurate.images import MIN_SIDE, NEAR_UNIFORM_STD, encode_png

# --------------------------------------------------------------------------------------------
# Converting faces: a pure per-batch function
# --------------------------------------------------------------------------------------------


def face_crop_box(width: int, height: int, box: Box | None, margin: float) -> tuple[float, float, float, float] | None:
    """The square region (left, top, right, bottom) to resize into the stored face.

    With a box: the box grown by ``margin`` of its longer side on each side, made square around the
    box centre, shrunk to fit the image if it must and shifted inside it (it always contains the
    box). Without a box: the centred square of the image. ``None`` when the box has no area or
    more than :data:`BOX_OUTSIDE_TOLERANCE` of it lies outside the image.
    """
    if box is None:
        side = float(min(width, height))
        left, top = (width - side) / 2, (height - side) / 2
        return left, top, left + side, top + side
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        return None
    inside_w = max(0.0, min(x + w, width) - max(x, 0.0))
    inside_h = max(0.0, min(y + h, height) - max(y, 0.0))
    if inside_w * inside_h < (1 - BOX_OUTSIDE_TOLERANCE) * w * h:
        return None
    # clip the few pixels a tolerated box runs past the edge
    x0, y0 = max(x, 0.0), max(y, 0.0)
    w, h = min(x + w, width) - x0, min(y + h, height) - y0
    cx, cy = x0 + w / 2, y0 + h / 2
    side = min(max(w, h) * (1 + 2 * margin), float(width), float(height))
    side = max(side, min(max(w, h), float(min(width, height))))
    left = min(max(cx - side / 2, 0.0), width - side)
    top = min(max(cy - side / 2, 0.0), height - side)
    return left, top, left + side, top + side


def convert_face(data: bytes, box: Box | None, size: int, margin: float) -> dict[str, Any]:
    """Decode one source image, crop its face, and return a ``size`` x ``size`` grayscale face.

    Returns:
        A dict with ``ok`` (bool), ``reason`` / ``detail`` (why not ok), ``width`` / ``height`` of
        the source image, and for ok faces ``pixels`` (size*size bytes), ``png`` and ``sha256`` (of
        the PNG bytes).
    """
    rec: dict[str, Any] = {"ok": False, "reason": None, "detail": None, "width": None, "height": None}
    if not data:
        rec.update(reason="corrupt", detail="empty file")
        return rec
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
        width, height = img.size
        rec["width"], rec["height"] = width, height
        crop = face_crop_box(width, height, box, margin)
        if crop is None:
            rec.update(reason="box_outside_image", detail=f"box {box} on a {width}x{height} image")
            return rec
        side = crop[2] - crop[0]
        if side < MIN_SIDE:
            rec.update(reason="too_small", detail=f"face region {side:.0f} px")
            return rec
        if img.format == "JPEG":
            # Let the JPEG decoder downscale by 1/2..1/8 in the DCT (fast, and itself an
            # antialiasing filter) while keeping the face region at least twice the output size.
            k = min(1.0, 2 * size / side)
            img.draft("L", (math.ceil(width * k), math.ceil(height * k)))
            sx, sy = img.size[0] / width, img.size[1] / height
            crop = (crop[0] * sx, crop[1] * sy, crop[2] * sx, crop[3] * sy)
        img.load()
        if box is None and img.format in ("JPEG", "TIFF", "WEBP"):
            # only unboxed images follow EXIF rotation: annotated boxes are in stored pixel order
            turned = ImageOps.exif_transpose(img)
            if turned.size != img.size:
                crop = face_crop_box(turned.size[0], turned.size[1], None, margin) or crop
            img = turned
        if img.mode != "L":
            img = img.convert("RGB").convert("L") if img.mode in ("P", "LA", "RGBA", "PA") else img.convert("L")
        face = img.resize((size, size), Image.Resampling.LANCZOS, box=crop, reducing_gap=3.0)
    except UnidentifiedImageError:
        rec.update(reason="corrupt", detail="not an image")
        return rec
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        rec.update(reason="corrupt", detail=str(exc)[:80])
        return rec
    pixels = np.asarray(face, dtype=np.uint8)
    std = float(pixels.std())
    if std < NEAR_UNIFORM_STD:
        rec.update(reason="uniform" if std == 0 else "near_uniform", detail=f"std {std:.1f}")
        return rec
    png = encode_png(pixels)
    rec.update(ok=True, pixels=pixels.tobytes(), png=png, sha256=hashlib.sha256(png).hexdigest())
    return rec


def convert_faces(items: Sequence[tuple[str, Box | None]], size: int = 48, margin: float = 0.1) -> list[dict[str, Any]]:
    """:func:`convert_face` over a batch of ``(file path, face box or None)``; mappable by any engine."""
    out = []
    for path, box in items:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            out.append({"ok": False, "reason": "missing_file", "detail": None, "width": None, "height": None})
            continue
        except OSError as exc:
            out.append(
                {
                    "ok": False,
                    "reason": "corrupt",
                    "detail": f"unreadable: {exc.strerror or exc}",
                    "width": None,
                    "height": None,
                }
            )
            continue
        out.append(convert_face(data, box, size, margin))
    return out


def _box(row: dict[str, Any]) -> Box | None:
    values = [row[c] for c in BOX_COLUMNS]
    if any(pd.isna(v) for v in values):
        return None
    return (int(values[0]), int(values[1]), int(values[2]), int(values[3]))
