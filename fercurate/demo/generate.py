"""A procedural, deliberately messy FER-like demo dataset with ground truth.

``generate_demo`` writes, under one destination folder:

- ``dataset/{train,validation,test}/<class>/<id>.jpg``: 48x48 grayscale faces laid out like the
  Kaggle "Facial_emotion_images" set, with the faults that set is known for: lopsided splits, an
  under-represented class, wrong labels (mostly sad <-> neutral), near-duplicates across splits,
  invalid files, and a few RGB images and PNGs among the JPEGs.
- ``truth.parquet`` and ``TRUTH.md``: what every file really is, so each cleaning stage can be
  scored against the truth.
- ``affectnet/``: an AffectNet-style source (larger colour images, a face box per row, the official
  ``training.csv`` columns) with a few planted faults, and its own ``truth.parquet``.

Faces come from one small renderer (:func:`render_face`): PIL shapes drawn supersampled and
downsampled, so they are anti-aliased. Sad and neutral are drawn from one continuous "sadness"
intensity whose two class ranges overlap, so some images are genuinely ambiguous and a classifier
cannot reach 100% even on clean labels.
"""

from __future__ import annotations

import functools
import io
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fercurate.affectnet import CSV_COLUMNS
from fercurate.errors import InputError

#: Expressions the renderer can draw. The demo dataset uses a subset (``DemoParams.classes``);
#: the others appear in the AffectNet-style source as classes the dataset lacks.
EXPRESSIONS: tuple[str, ...] = (
    "neutral",
    "happy",
    "sad",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)

#: The official AffectNet expression codes, in code order (0-10).
AFFECTNET_CODES: tuple[str, ...] = EXPRESSIONS + ("none", "uncertain", "no-face")

#: The official AffectNet ``training.csv`` columns, in order (defined once, by merge-affectnet).
AFFECTNET_COLUMNS: tuple[str, ...] = CSV_COLUMNS

SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.75, "validation": 0.245, "test": 0.005}

# Intensity ranges per class. Neutral and sad share one "sadness" axis and overlap on
# [0.35, 0.55]: an image drawn there could have come from either class.
INTENSITY_RANGES: dict[str, tuple[float, float]] = {
    "neutral": (0.0, 0.55),
    "sad": (0.35, 1.0),
    "happy": (0.15, 1.0),
    "surprise": (0.2, 1.0),
    "fear": (0.3, 1.0),
    "disgust": (0.3, 1.0),
    "anger": (0.3, 1.0),
    "contempt": (0.3, 1.0),
}

INVALID_REASONS: tuple[str, ...] = (
    "empty",
    "truncated",
    "not_image",
    "uniform",
    "near_uniform",
    "tiny",
)
DUP_TRANSFORMS: tuple[str, ...] = ("reencode", "brightness", "contrast", "resize", "shift", "exact")
_DUP_TRANSFORM_WEIGHTS = (0.2, 0.2, 0.15, 0.2, 0.1, 0.15)

# Share of the under-represented class relative to the others, as in the real case.
_MINORITY_CLASS = "surprise"
_MINORITY_SHARE = 0.6
_SAD_NEUTRAL_FLIP_SHARE = 0.7
_DUP_RELABEL_SHARE = 0.15

# Independent random streams, so adding faults never changes how the faces look.
_STREAM_PLAN, _STREAM_IDENTITY, _STREAM_IMAGE, _STREAM_AFFECTNET, _STREAM_FAULTS = range(5)

_SUPERSAMPLED_EDGE = 192


@dataclass(frozen=True)
class DemoParams:
    """What ``generate_demo`` makes. Counts are before faults unless said otherwise."""

    n_images: int = 3000
    seed: int = 0
    image_size: int = 48
    mislabel_rate: float = 0.10
    duplicate_rate: float = 0.06
    n_invalid: int = 12
    n_affectnet: int = 1200
    classes: tuple[str, ...] = ("happy", "neutral", "sad", "surprise")


@dataclass(frozen=True)
class DemoResult:
    """Where the demo was written and how many of each thing it holds.

    ``counts`` keys: ``files`` (every file under ``dataset/``), ``images`` (clean renders before
    faults), ``mislabeled``, ``duplicates`` (planted copies), ``invalid``, ``rgb``, ``png``,
    ``affectnet`` (CSV rows) and ``affectnet_faults``.
    """

    dest: Path
    dataset_dir: Path
    truth_path: Path
    affectnet_dir: Path
    affectnet_csv: Path
    counts: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The face renderer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """What stays the same for one person across images. Lengths are in face-crop units (0-1)."""

    face_w: float
    face_h: float
    skin: float
    skin_rgb: tuple[float, float, float]
    hair_style: str
    hair_tone: float
    hairline: float
    hair_part: float
    hair_side: float
    eye_dx: float
    eye_y: float
    eye_w: float
    eye_open: float
    iris_tone: float
    brow_gap: float
    brow_thick: float
    brow_tone: float
    nose_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_u: float
    lip_l: float
    lip_tone: float
    rest_corner: float
    rest_brow: float
    glasses: bool


_SKIN_RGB = (
    (1.10, 0.98, 0.90),
    (1.14, 0.97, 0.84),
    (1.16, 0.96, 0.80),
    (1.18, 0.95, 0.76),
    (1.20, 0.94, 0.72),
)


def make_identity(rng: np.random.Generator) -> Identity:
    """Draw one person: face shape, skin and hair tone, feature placement, glasses."""
    u = rng.uniform
    skin = float(u(95, 200))
    style = str(rng.choice(["short", "long", "fringe", "bald"], p=[0.4, 0.3, 0.2, 0.1]))
    dark_hair = rng.random() < 0.75
    return Identity(
        face_w=float(u(0.31, 0.38)),
        face_h=float(u(0.47, 0.54)),
        skin=skin,
        skin_rgb=_SKIN_RGB[int(np.clip((200 - skin) / 21, 0, 4))],
        hair_style=style,
        hair_tone=float(u(15, 70) if dark_hair else u(120, 190)),
        hairline=float(u(0.06, 0.16) if style != "fringe" else u(0.18, 0.25)),
        hair_part=float(u(-0.25, 0.25)),
        hair_side=float(u(0.25, 0.5) if style == "long" else u(0.1, 0.25)),
        eye_dx=float(u(0.150, 0.185)),
        eye_y=float(u(0.40, 0.45)),
        eye_w=float(u(0.058, 0.072)),
        eye_open=float(u(0.020, 0.030)),
        iris_tone=float(u(25, 90)),
        brow_gap=float(u(0.065, 0.085)),
        brow_thick=float(u(0.022, 0.042)),
        brow_tone=float(u(0.35, 0.65)),
        nose_y=float(u(0.60, 0.65)),
        nose_w=float(u(0.040, 0.055)),
        mouth_y=float(u(0.76, 0.80)),
        mouth_w=float(u(0.095, 0.125)),
        lip_u=float(u(0.010, 0.018)),
        lip_l=float(u(0.014, 0.024)),
        lip_tone=float(u(0.72, 0.88)),
        # Some faces look a little sad or a little pleased at rest: part of the ambiguity.
        rest_corner=float(rng.normal(0.0, 0.006)),
        rest_brow=float(rng.normal(0.0, 0.006)),
        glasses=bool(rng.random() < 0.12),
    )


@dataclass(frozen=True)
class _Shape:
    """Feature offsets for one expression at one intensity (face-crop units, +y is down)."""

    corner_l: float = 0.0
    corner_r: float = 0.0
    mouth_wscale: float = 1.0
    mouth_dy: float = 0.0
    gap: float = 0.0
    gap_power: float = 0.8
    teeth: bool = False
    lip_scale: float = 1.0
    brow_inner_dy: float = 0.0
    brow_outer_dy: float = 0.0
    brow_arch: float = 0.0
    brow_inner_dx: float = 0.0
    eye_scale: float = 1.0
    lid_slant: float = 0.0
    lower_lid: float = 0.0
    cheek: float = 0.0
    fold: float = 0.0
    jaw_drop: float = 0.0
    forehead: float = 0.0
    nose_wrinkle: float = 0.0


def expression_shape(expression: str, intensity: float, rng: np.random.Generator) -> _Shape:
    """Map an expression and its intensity (0-1) to feature offsets, as real expressions move.

    Args:
        expression: one of :data:`EXPRESSIONS`.
        intensity: 0 (barely there) to 1 (strong). For neutral and sad it is one shared
            "sadness" axis, so the two classes meet in the middle.
        rng: for the small choices an expression leaves open (open smile or closed).
    """
    i = float(np.clip(intensity, 0.0, 1.0))
    if expression in ("neutral", "sad"):
        return _Shape(
            corner_l=0.048 * i,
            corner_r=0.048 * i,
            mouth_wscale=1.0 - 0.10 * i,
            mouth_dy=-0.008 * i,
            lip_scale=1.0 - 0.3 * i,
            brow_inner_dy=-0.060 * i,
            brow_outer_dy=0.015 * i,
            brow_inner_dx=0.010 * i,
            brow_arch=-0.006 * i,
            eye_scale=1.0 - 0.35 * i,
            lid_slant=0.7 * i,
            fold=0.3 * i,
        )
    if expression == "happy":
        open_mouth = i > 0.45 and rng.random() < 0.65
        return _Shape(
            corner_l=-(0.012 + 0.040 * i),
            corner_r=-(0.012 + 0.040 * i),
            mouth_wscale=1.0 + 0.28 * i,
            mouth_dy=0.004 * i,
            gap=(0.012 + 0.032 * i) if open_mouth else 0.0,
            gap_power=1.2,
            teeth=open_mouth,
            brow_inner_dy=-0.006 * i,
            brow_outer_dy=-0.004 * i,
            eye_scale=1.0 - 0.30 * i,
            lower_lid=i,
            cheek=i,
            fold=0.3 + 0.7 * i,
        )
    if expression == "surprise":
        raise_ = 0.018 + 0.055 * i
        return _Shape(
            mouth_wscale=1.0 - 0.45 * i,
            mouth_dy=0.012 * i,
            gap=0.010 + 0.060 * i,
            gap_power=0.55,
            # Teeth only in a wide-open mouth: a white line under a slit reads as a smile.
            teeth=i > 0.5 and rng.random() < 0.3,
            brow_inner_dy=-raise_,
            brow_outer_dy=-raise_ * 0.8,
            brow_arch=0.012 * i,
            eye_scale=1.25 + 0.55 * i,
            jaw_drop=0.035 * i,
            forehead=i,
        )
    if expression == "fear":
        return _Shape(
            corner_l=0.010 * i,
            corner_r=0.010 * i,
            mouth_wscale=1.0 + 0.15 * i,
            gap=0.008 + 0.025 * i,
            gap_power=1.0,
            teeth=True,
            brow_inner_dy=-0.055 * i,
            brow_outer_dy=-0.025 * i,
            brow_inner_dx=0.015 * i,
            eye_scale=1.3 + 0.4 * i,
            forehead=0.8 * i,
        )
    if expression == "anger":
        open_mouth = rng.random() < 0.4
        return _Shape(
            corner_l=0.010 * i,
            corner_r=0.010 * i,
            gap=0.025 * i if open_mouth else 0.0,
            gap_power=1.0,
            teeth=open_mouth,
            lip_scale=1.0 - 0.5 * i,
            brow_inner_dy=0.035 * i,
            brow_outer_dy=-0.008 * i,
            brow_inner_dx=0.018 * i,
            eye_scale=1.0 - 0.25 * i,
            nose_wrinkle=0.5 * i,
            fold=0.3 * i,
        )
    if expression == "disgust":
        return _Shape(
            corner_l=0.015 * i,
            corner_r=0.015 * i,
            mouth_dy=-0.012 * i,
            gap=0.012 * i,
            gap_power=1.5,
            teeth=True,
            brow_inner_dy=0.020 * i,
            brow_inner_dx=0.010 * i,
            eye_scale=1.0 - 0.3 * i,
            lower_lid=0.4 * i,
            nose_wrinkle=i,
            fold=0.6 * i,
        )
    if expression == "contempt":
        side = 1.0 if rng.random() < 0.5 else -1.0
        lift = -0.030 * i
        return _Shape(
            corner_l=lift if side < 0 else 0.004,
            corner_r=lift if side > 0 else 0.004,
            eye_scale=1.0 - 0.15 * i,
            fold=0.3 * i,
        )
    raise InputError(f"expression '{expression}' is not one of: {', '.join(EXPRESSIONS)}")


@dataclass(frozen=True)
class _Pose:
    angle: float  # degrees, counter-clockwise
    scale: float
    dx: float  # face-crop units
    dy: float
    yaw: float  # -1..1, features shift sideways


def _draw_pose(rng: np.random.Generator) -> _Pose:
    return _Pose(
        angle=float(np.clip(rng.normal(0.0, 6.0), -14, 14)),
        scale=float(rng.uniform(1.0, 1.16)),
        dx=float(rng.uniform(-0.04, 0.04)),
        dy=float(rng.uniform(-0.04, 0.04)),
        yaw=float(rng.uniform(-0.7, 0.7)),
    )


_CIRCLE = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * np.pi, 28, endpoint=False)]
# Fixed parameter runs along curves (eyelids, lips, hair), made once: drawing calls them a lot.
_RUN = {n: np.linspace(-1.0, 1.0, n) for n in (5, 7, 9, 19)}
_LOOP = np.linspace(0, 2 * np.pi, 56)
_UNIT_CIRCLES = {
    n: (np.cos(np.linspace(0, 2 * np.pi, n, endpoint=False)), np.sin(np.linspace(0, 2 * np.pi, n, endpoint=False)))
    for n in range(12, 41, 4)
}


class _Canvas:
    """Supersampled PIL layers: the image, and (when asked) the head's silhouette.

    Drawing takes face-crop units; ``affine`` (2x3, units to output pixels) already holds the
    pose, so shapes are posed as they are drawn and the finished image never needs resampling.
    Ellipses become polygons so that they can turn with the head.
    """

    def __init__(self, base: Image.Image, affine: np.ndarray, ss: int, with_mask: bool):
        self.ss = ss
        m = affine * ss
        self.m = tuple(float(v) for v in m.ravel())
        self.k = float(math.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0])))
        self.gray = base
        self.dg = ImageDraw.Draw(self.gray)
        self.mask = Image.new("L", base.size, 0) if with_mask else None
        self.dm = ImageDraw.Draw(self.mask) if self.mask is not None else None

    def pt(self, x: float, y: float) -> tuple[float, float]:
        a, b, c, d, e, f = self.m
        return (a * x + b * y + c, d * x + e * y + f)

    def pts(self, xs: Any, ys: Any) -> list[float]:
        """Many points at once, as the flat ``[x0, y0, x1, y1, ...]`` list PIL accepts."""
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        a, b, c, d, e, f = self.m
        out = np.empty(2 * xs.size)
        out[0::2] = a * xs + b * ys + c
        out[1::2] = d * xs + e * ys + f
        return out.tolist()

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, tone: float, solid: bool = False) -> None:
        n = min(40, max(12, 12 + 4 * int(max(abs(rx), abs(ry)) * self.k / 16)))
        co, si = _UNIT_CIRCLES[n]
        self.polygon(self.pts(cx + rx * co, cy + ry * si), tone, solid)

    def polygon(self, points: list[Any], tone: float, solid: bool = False) -> None:
        self.dg.polygon(points, fill=_tone(tone))
        if solid and self.dm is not None:
            self.dm.polygon(points, fill=255)

    def line(self, points: list[Any], tone: float, width: float) -> None:
        self.dg.line(points, fill=_tone(tone), width=max(1, round(width * self.k)), joint="curve")


def _tone(value: float) -> int:
    return min(255, max(0, round(value)))


def _draw_head(c: _Canvas, who: Identity, shape: _Shape, yaw: float, rng: np.random.Generator) -> None:
    """Draw hair, head, neck and features onto ``c``, in face-crop units (the canvas poses them)."""
    skin = who.skin
    cx = 0.5 + 0.015 * yaw
    fx = 0.5 + 0.05 * yaw  # features sit off-centre when the head turns
    fw = who.face_w
    fh = who.face_h + shape.jaw_drop * 0.5
    fcy = 0.52 + shape.jaw_drop * 0.5

    # Back hair, neck, ears, then the top of the head.
    if who.hair_style == "long":
        c.ellipse(cx, 0.48, fw * 1.32, 0.66, who.hair_tone, solid=True)
    neck = c.pts([cx - 0.17, cx + 0.17, cx + 0.2, cx - 0.2], [0.8, 0.8, 1.8, 1.8])
    c.polygon(neck, skin * 0.72, solid=True)
    for side in (-1, 1):
        c.ellipse(cx + side * fw * 0.97, 0.52, 0.05, 0.085, skin * 0.85, solid=True)
    cap_cy, cap_rx, cap_ry = fcy - fh * 0.38, fw * 1.08, fh * 0.78
    cap_tone = who.hair_tone if who.hair_style != "bald" else skin * 0.9
    c.ellipse(cx, cap_cy, cap_rx, cap_ry, cap_tone, solid=True)

    # Face oval, shaded darker towards the rim so it reads as round.
    for step, shrink in enumerate((1.0, 0.95, 0.89, 0.82, 0.74, 0.65)):
        c.ellipse(cx, fcy - 0.015 * step, fw * shrink, fh * shrink, skin * (0.80 + 0.04 * step), solid=step == 0)

    # Chin shadow and cheeks (raised and lit when smiling).
    c.ellipse(fx, who.mouth_y + 0.09 + shape.jaw_drop, 0.09, 0.035, skin * 0.93)
    for side in (-1, 1):
        if shape.cheek > 0.05:
            cheek_y = who.eye_y + 0.15 - 0.035 * shape.cheek
            for grow, lift in ((1.0, 0.03), (0.6, 0.07)):
                c.ellipse(
                    fx + side * who.eye_dx * 1.1, cheek_y, 0.075 * grow, 0.055 * grow, skin * (1.0 + lift * shape.cheek)
                )
        c.ellipse(fx + side * who.eye_dx, who.eye_y - 0.005, who.eye_w * 1.5, who.eye_w * 0.95, skin * 0.86)

    # Front hair: the cap, cut off below a hairline that drops at the temples.
    if who.hair_style != "bald":
        t = _LOOP
        xs = cx + cap_rx * 1.01 * np.cos(t)
        ys = cap_cy + cap_ry * 1.01 * np.sin(t)
        rel = (xs - cx) / fw
        line = who.hairline + who.hair_part * 0.1 * rel + who.hair_side * np.abs(rel) ** 4
        c.polygon(c.pts(xs, np.minimum(ys, line)), who.hair_tone, solid=True)

    if shape.forehead > 0.45:
        for row in range(2):
            y = who.eye_y - who.brow_gap - 0.075 - 0.03 * row
            c.line(c.pts(fx + 0.12 * _RUN[7], y + 0.012 * _RUN[7] ** 2), skin * 0.82, 0.009)

    _draw_brows(c, who, shape, fx)
    _draw_eyes(c, who, shape, fx, yaw, rng)
    _draw_nose(c, who, shape, fx + 0.02 * yaw, rng)
    _draw_mouth(c, who, shape, fx)


def _draw_brows(c: _Canvas, who: Identity, shape: _Shape, fx: float) -> None:
    base = who.eye_y - who.brow_gap
    tone = who.hair_tone * 0.6 + who.skin * who.brow_tone * 0.4
    for side in (-1, 1):
        xi = fx + side * (who.eye_dx - who.eye_w * 1.0 - shape.brow_inner_dx)
        xo = fx + side * (who.eye_dx + who.eye_w * 1.35)
        yi = base + shape.brow_inner_dy - who.rest_brow
        yo = base + 0.006 + shape.brow_outer_dy
        xm, ym = xi + 0.5 * (xo - xi), yi + 0.5 * (yo - yi) - 0.012 - shape.brow_arch
        c.line([c.pt(xi, yi), c.pt(xm, ym), c.pt(xo, yo + 0.004)], tone, who.brow_thick)


def _draw_eyes(c: _Canvas, who: Identity, shape: _Shape, fx: float, yaw: float, rng: np.random.Generator) -> None:
    gaze = float(rng.uniform(-0.25, 0.25))
    opening = max(0.004, who.eye_open * shape.eye_scale)
    sclera = who.skin * 0.45 + 105
    for side in (-1, 1):
        ex = fx + side * who.eye_dx
        ey = who.eye_y
        w = who.eye_w * (1.0 + side * yaw * 0.15)
        c.line(
            c.pts(ex + w * _RUN[5], ey - opening - 0.012 - 0.01 * (1 - _RUN[5] ** 2)),
            who.skin * 0.72,
            0.008,
        )
        c.ellipse(ex, ey, w, opening, sclera)
        iris_r = w * 0.48
        c.ellipse(ex + gaze * w * 0.4, ey, iris_r, min(iris_r, opening), who.iris_tone)
        c.ellipse(ex + gaze * w * 0.4, ey, iris_r * 0.45, min(iris_r * 0.45, opening), who.iris_tone * 0.4)
        # Upper lid and lashes.
        tx = ex + w * _RUN[9]
        ty = ey - opening * np.sqrt(np.clip(1 - _RUN[9] ** 2, 0, 1))
        c.line(c.pts(tx, ty), 28, 0.011)
        if shape.lid_slant > 0.02:
            # A lowered, drooping upper lid: skin covers the eye from above, more at the outer corner.
            drop = opening * shape.lid_slant
            edge_x = ex + side * w * np.array([-1.2, 1.3])
            edge_y = ey - opening + drop * np.array([0.5, 1.8])
            poly = [
                c.pt(edge_x[0], ey - opening * 2.2),
                c.pt(edge_x[1], ey - opening * 2.2),
                c.pt(edge_x[1], edge_y[1]),
                c.pt(edge_x[0], edge_y[0]),
            ]
            c.polygon(poly, who.skin * 0.86)
            c.line([c.pt(edge_x[0], edge_y[0]), c.pt(edge_x[1], edge_y[1])], 40, 0.01)
        if shape.lower_lid > 0.02:
            # Raised cheeks push the lower lid up into a crescent.
            c.ellipse(
                ex,
                ey + opening + w * 0.5 - shape.lower_lid * opening * 0.9,
                w * 1.25,
                w * 0.5,
                who.skin * (1.0 + 0.06 * shape.cheek),
            )
    if who.glasses:
        frame = [(np.sign(co) * abs(co) ** 0.6, np.sign(si) * abs(si) ** 0.6) for co, si in _CIRCLE]
        for side in (-1, 1):
            ex = fx + side * who.eye_dx
            rim = [c.pt(ex + who.eye_w * 1.55 * u, who.eye_y + 0.003 + 0.047 * v) for u, v in frame]
            c.line(rim + rim[:1], 30, 0.014)
        c.line(
            [
                c.pt(fx - who.eye_dx + who.eye_w * 1.55, who.eye_y - 0.02),
                c.pt(fx + who.eye_dx - who.eye_w * 1.55, who.eye_y - 0.02),
            ],
            30,
            0.012,
        )


def _draw_nose(c: _Canvas, who: Identity, shape: _Shape, nx: float, rng: np.random.Generator) -> None:
    light = 1 if rng.random() < 0.5 else -1
    ny = who.nose_y
    c.line(
        [c.pt(nx + light * 0.03, who.eye_y + 0.02), c.pt(nx + light * 0.038, ny - 0.03), c.pt(nx + light * 0.045, ny)],
        who.skin * 0.82,
        0.02,
    )
    c.ellipse(nx, ny - 0.005, 0.028, 0.022, who.skin * 1.06)
    for side in (-1, 1):
        c.line(
            c.pts(nx + side * who.nose_w * np.array([0.75, 1.0, 0.8]), ny + np.array([-0.025, 0.0, 0.02])),
            who.skin * 0.7,
            0.012,
        )
        c.ellipse(nx + side * who.nose_w * 0.5, ny + 0.018, 0.014, 0.007, who.skin * 0.42)
    if shape.nose_wrinkle > 0.1:
        for k in range(3):
            y = who.eye_y + 0.03 + 0.018 * k
            c.line(
                [c.pt(nx - 0.025, y), c.pt(nx + 0.025, y + 0.004)], who.skin * (0.9 - 0.15 * shape.nose_wrinkle), 0.008
            )


def _draw_mouth(c: _Canvas, who: Identity, shape: _Shape, fx: float) -> None:
    hw = who.mouth_w * shape.mouth_wscale
    my = who.mouth_y + shape.mouth_dy + shape.jaw_drop
    t = _RUN[19]
    x = fx + t * hw
    corner_l = shape.corner_l + who.rest_corner
    corner_r = shape.corner_r + who.rest_corner
    mid = my + np.where(t < 0, corner_l, corner_r) * t * t
    gap = shape.gap * np.clip(1 - t * t, 0, 1) ** shape.gap_power
    upper = mid - gap * 0.4
    lower = mid + gap * 0.6
    rim = np.clip(1 - t * t, 0, 1) ** 0.6
    bow = 1 - 0.3 * np.exp(-((t / 0.15) ** 2))
    lip_top = upper - who.lip_u * shape.lip_scale * rim * bow
    lip_bot = lower + who.lip_l * shape.lip_scale * rim

    # Nasolabial folds deepen when the cheeks rise.
    fold_tone = who.skin * (0.93 - 0.13 * shape.fold)
    for side in (-1, 1):
        fold = [
            c.pt(fx + side * (who.nose_w + 0.015), who.nose_y - 0.005),
            c.pt(fx + side * (hw * 0.95 + 0.012), (who.nose_y + my) / 2),
            c.pt(fx + side * (hw + 0.025), my + 0.02),
        ]
        c.line(fold, fold_tone, 0.01 + 0.006 * shape.fold)
    c.line([c.pt(fx, who.nose_y + 0.03), c.pt(fx, float(lip_top[9]) - 0.004)], who.skin * 0.9, 0.016)

    outline = c.pts(x, lip_top) + c.pts(x[::-1], lip_bot[::-1])
    c.polygon(outline, who.skin * who.lip_tone)
    if shape.gap > 0.004:
        c.polygon(c.pts(x, upper) + c.pts(x[::-1], lower[::-1]), 30)
        if shape.teeth:
            inner = np.abs(t) < 0.8
            teeth_low = np.minimum(upper + min(0.022, shape.gap * 0.6), lower)
            c.polygon(c.pts(x[inner], upper[inner]) + c.pts(x[inner][::-1], teeth_low[inner][::-1]), 205)
    else:
        c.line(c.pts(x, mid), who.skin * 0.3, 0.011)


def _pose_affine(pose: _Pose, scale: float, origin: tuple[float, float]) -> np.ndarray:
    """2x3 map from face-crop units to output pixels: pose about the face centre, then place."""
    a = math.radians(pose.angle)
    cos, sin = math.cos(a) * pose.scale, math.sin(a) * pose.scale
    cx, cy = 0.5, 0.52
    # Image y points down, so +sin in the x row turns the head counter-clockwise on screen.
    rot = np.array([[cos, sin], [-sin, cos]])
    shift = np.array([cx + pose.dx, cy + pose.dy]) - rot @ np.array([cx, cy])
    unit = np.c_[rot, shift]
    return np.c_[unit[:, :2] * scale, unit[:, 2] * scale + np.asarray(origin)]


def _render_head(
    base: Image.Image,
    ss: int,
    who: Identity,
    shape: _Shape,
    pose: _Pose,
    rng: np.random.Generator,
    scale: float,
    origin: tuple[float, float] = (0.0, 0.0),
    with_mask: bool = False,
) -> tuple[Image.Image, Image.Image | None, np.ndarray]:
    """Draw one posed head over ``base``, a backdrop ``ss`` times the output size.

    Returns the image and (when asked) the head's silhouette at output size, and the
    face-units-to-output-pixels affine.
    """
    affine = _pose_affine(pose, scale, origin)
    c = _Canvas(base, affine, ss, with_mask)
    _draw_head(c, who, shape, pose.yaw, rng)
    if ss == 1:
        return c.gray, c.mask, affine
    # Box-averaging the supersampled layers is the anti-aliasing.
    mask = c.mask.reduce(ss) if c.mask is not None else None
    return c.gray.reduce(ss), mask, affine


def _supersample(scale: float) -> int:
    return max(1, min(4, math.ceil(_SUPERSAMPLED_EDGE / scale)))


def _landmarks(who: Identity, shape: _Shape, yaw: float) -> np.ndarray:
    """68 iBUG-style landmarks in face-crop units, matching what ``_draw_head`` drew."""
    cx = 0.5 + 0.015 * yaw
    fx = 0.5 + 0.05 * yaw
    fw = who.face_w
    fh = who.face_h + shape.jaw_drop * 0.5
    fcy = 0.52 + shape.jaw_drop * 0.5
    pts: list[tuple[float, float]] = []
    for a in np.linspace(np.pi + 0.25, -0.25, 17):
        pts.append((cx + fw * math.cos(a), fcy + fh * math.sin(a)))
    base = who.eye_y - who.brow_gap
    for side in (-1, 1):
        xi = fx + side * (who.eye_dx - who.eye_w - shape.brow_inner_dx)
        xo = fx + side * (who.eye_dx + who.eye_w * 1.35)
        yi = base + shape.brow_inner_dy - who.rest_brow
        yo = base + 0.006 + shape.brow_outer_dy
        ends = [(xo, yo), (xi, yi)] if side < 0 else [(xi, yi), (xo, yo)]
        for f in np.linspace(0, 1, 5):
            pts.append(
                (
                    ends[0][0] + f * (ends[1][0] - ends[0][0]),
                    ends[0][1] + f * (ends[1][1] - ends[0][1]) - 0.012 * math.sin(math.pi * f),
                )
            )
    nx = fx + 0.02 * yaw
    for f in np.linspace(0, 1, 4):
        pts.append((nx, who.eye_y + f * (who.nose_y - who.eye_y)))
    for f in np.linspace(-1, 1, 5):
        pts.append((nx + f * who.nose_w, who.nose_y + 0.02 - 0.008 * (1 - f * f)))
    opening = max(0.004, who.eye_open * shape.eye_scale)
    for side in (-1, 1):
        ex, w = fx + side * who.eye_dx, who.eye_w
        pts += [(ex - w, who.eye_y), (ex - w * 0.4, who.eye_y - opening), (ex + w * 0.4, who.eye_y - opening)]
        pts += [(ex + w, who.eye_y), (ex + w * 0.4, who.eye_y + opening), (ex - w * 0.4, who.eye_y + opening)]
    hw = who.mouth_w * shape.mouth_wscale
    my = who.mouth_y + shape.mouth_dy + shape.jaw_drop
    corner = (shape.corner_l + who.rest_corner, shape.corner_r + who.rest_corner)

    def lip(t: float, dy: float) -> tuple[float, float]:
        return (fx + t * hw, my + (corner[0] if t < 0 else corner[1]) * t * t + dy)

    for t in np.linspace(-1, 1, 7):
        pts.append(lip(t, -(who.lip_u + shape.gap * 0.4) * (1 - t * t) ** 0.6))
    for t in np.linspace(1, -1, 7)[1:-1]:
        pts.append(lip(t, (who.lip_l + shape.gap * 0.6) * (1 - t * t) ** 0.6))
    for t in (-1.0, -0.5, 0.0, 0.5, 1.0):
        pts.append(lip(t, -shape.gap * 0.4 * (1 - t * t) ** shape.gap_power))
    for t in (0.5, 0.0, -0.5):
        pts.append(lip(t, shape.gap * 0.6 * (1 - t * t) ** shape.gap_power))
    return np.asarray(pts, dtype=np.float64)


def _soft_background(rng: np.random.Generator, width: int, height: int, mode: str, lo: float, hi: float) -> Image.Image:
    """A smooth random backdrop: a few coarse blocks upsampled bicubically."""
    coarse = rng.uniform(lo, hi, size=(3, 3, 1))
    if mode == "RGB":
        # Muted colours: a gray level per block plus a modest tint, like rooms and streets.
        coarse = coarse + rng.uniform(-35, 35, size=(3, 3, 3))
    coarse = np.clip(coarse, 0, 255).astype(np.uint8)
    img = Image.fromarray(coarse[..., 0] if mode == "L" else coarse)
    return img.resize((width, height), Image.Resampling.BICUBIC)


@functools.lru_cache(maxsize=64)
def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return (xs / max(1, width - 1) - 0.5), (ys / max(1, height - 1) - 0.5)


def _camera(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uneven light, contrast, gamma and sensor noise; ``img`` is HxWxC float32 in 0-255."""
    h, w = img.shape[:2]
    xs, ys = _grid(w, h)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1.0 + np.float32(rng.uniform(0.0, 0.7)) * (
        xs * np.float32(math.cos(angle)) + ys * np.float32(math.sin(angle))
    )
    out: np.ndarray = img * gradient[..., None]
    mean = float(out.mean())
    out = (out - mean) * np.float32(rng.uniform(0.7, 1.25)) + np.float32(mean + rng.uniform(-20, 20))
    gamma = 255.0 * (np.arange(256, dtype=np.float32) / 255.0) ** np.float32(rng.uniform(0.75, 1.35))
    out = gamma[np.clip(out, 0, 255).astype(np.uint8)]
    # Luma noise only: one field shared by the channels is what a JPEG'd sensor mostly shows.
    out += rng.standard_normal(size=(h, w, 1), dtype=np.float32) * np.float32(rng.uniform(1.0, 5.0))
    return np.clip(out, 0, 255)


def _blur(img: Image.Image, radius: float) -> np.ndarray:
    """Gaussian blur (camera softness) to a float32 HxWxC array."""
    out = np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    return out[..., None] if out.ndim == 2 else out


def render_face(
    rng: np.random.Generator,
    expression: str,
    intensity: float,
    size: int = 48,
    identity: Identity | None = None,
) -> np.ndarray:
    """Render one FER-style face crop: grayscale, the face filling the frame.

    Args:
        rng: drives pose, lighting, noise and (when ``identity`` is None) the person.
        expression: one of :data:`EXPRESSIONS`.
        intensity: 0-1; see :func:`expression_shape`.
        size: edge of the square output in pixels.
        identity: the person; a new one is drawn from ``rng`` when None.

    Returns:
        ``size x size`` uint8 array, before any JPEG encoding.
    """
    who = identity if identity is not None else make_identity(rng)
    # The expression's own choices get a child stream, so that the same seed gives the same pose
    # and light whatever the expression.
    shape = expression_shape(expression, intensity, np.random.default_rng(int(rng.integers(2**32))))
    pose = _draw_pose(rng)
    ss = _supersample(size)
    # Smooth at output size already, so a blocky upsample to the drawing size loses nothing.
    backdrop = _soft_background(rng, size, size, "L", 25, 225).resize((size * ss, size * ss), Image.Resampling.NEAREST)
    img, _, _ = _render_head(backdrop, ss, who, shape, pose, rng, float(size))
    arr = _blur(img, rng.uniform(0.25, 0.65) * size / 48)
    return _camera(arr, rng)[..., 0].round().astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Per-image workers (pure functions of their task, so any process pool can map them)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FaceTask:
    seed: int
    index: int
    identity: int
    expression: str
    intensity: float
    size: int
    fmt: str  # JPEG or PNG
    mode: str  # L or RGB


@functools.lru_cache(maxsize=4096)
def _identity_for(seed: int, identity: int) -> Identity:
    return make_identity(np.random.default_rng([seed, _STREAM_IDENTITY, identity]))


def _encode(arr: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if fmt == "PNG":
        img.save(buf, format="PNG")
    else:
        img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _render_dataset_image(task: _FaceTask) -> bytes:
    rng = np.random.default_rng([task.seed, _STREAM_IMAGE, task.index])
    who = _identity_for(task.seed, task.identity)
    arr = render_face(rng, task.expression, task.intensity, task.size, identity=who)
    if task.mode == "RGB":
        # The odd RGB file in a gray set: a faint colour cast, as from a different camera.
        tint = np.array([1.0 + rng.uniform(0.02, 0.08), 1.0, 1.0 - rng.uniform(0.02, 0.08)])
        arr = np.clip(arr[..., None] * tint, 0, 255).astype(np.uint8)
    return _encode(arr, task.fmt, int(rng.integers(72, 96)))


@dataclass(frozen=True)
class _AffectTask:
    seed: int
    index: int
    expression: str  # an AffectNet code name
    intensity: float


@dataclass(frozen=True)
class _AffectImage:
    data: bytes
    width: int
    height: int
    box: tuple[int, int, int, int]
    landmarks: np.ndarray


_EXTRA_FACES = EXPRESSIONS


def _render_affectnet_image(task: _AffectTask) -> _AffectImage:
    rng = np.random.default_rng([task.seed, _STREAM_AFFECTNET, task.index])
    width, height = (int(v) for v in rng.integers(96, 161, size=2))
    box = int(rng.uniform(0.5, 0.68) * min(width, height))
    bx = int(rng.integers(max(1, int(0.08 * width)), width - box - max(1, int(0.08 * width)) + 1))
    by = int(rng.integers(max(1, int(0.05 * height)), height - box - max(1, int(0.12 * height)) + 1))
    who = make_identity(rng)
    pose = _draw_pose(rng)

    scene = _soft_background(rng, width, height, "RGB", 20, 235)
    # Clothes below the head.
    clothes = tuple(int(v) for v in rng.integers(20, 221, size=3))
    ImageDraw.Draw(scene).ellipse((bx - 0.35 * box, by + 1.05 * box, bx + 1.35 * box, by + 2.6 * box), fill=clothes)

    if task.expression == "no-face":
        img = scene
        marks = np.zeros((68, 2))
    else:
        expression = task.expression
        if expression == "none":
            expression = str(rng.choice(_EXTRA_FACES))
        elif expression == "uncertain":
            expression = "sad"
        shape = expression_shape(expression, task.intensity, rng)
        ss = 2
        base = Image.new("L", (width * ss, height * ss), 0)
        gray, mask, affine = _render_head(base, ss, who, shape, pose, rng, float(box), (bx, by), with_mask=True)
        assert mask is not None  # asked for with_mask
        # Colour the gray head with the person's skin tint, then lay it on the scene.
        ramp = np.arange(256, dtype=np.float64)
        channels = [gray.point(np.clip(ramp * t, 0, 255).round().astype(int).tolist()) for t in who.skin_rgb]
        img = Image.composite(Image.merge("RGB", channels), scene, mask)
        unit = _landmarks(who, shape, pose.yaw)
        marks = np.c_[unit, np.ones(len(unit))] @ affine.T
    # A light 3x3 smoothing stands in for lens blur: a Gaussian costs more than the face here.
    out = _camera(np.asarray(img.filter(ImageFilter.SMOOTH), dtype=np.float32), rng)
    data = _encode(out.round().astype(np.uint8), "JPEG", int(rng.integers(80, 96)))
    return _AffectImage(data, width, height, (bx, by, box, box), marks)


def _map(fn: Callable[[Any], Any], tasks: Sequence[Any], workers: int) -> list[Any]:
    if workers <= 1 or len(tasks) < 64:
        return [fn(t) for t in tasks]
    chunk = max(8, len(tasks) // (workers * 8))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, tasks, chunksize=chunk))


# --------------------------------------------------------------------------------------------
# Planning the messy dataset
# --------------------------------------------------------------------------------------------


@dataclass
class _Row:
    name: int
    split: str
    given_label: str
    true_label: str | None
    intensity: float | None
    identity: int
    fmt: str = "JPEG"
    mode: str | None = "L"
    invalid_reason: str | None = None
    dup_of: int | None = None  # row index of the original
    dup_transform: str | None = None
    data: bytes = b""

    @property
    def ext(self) -> str:
        return "png" if self.fmt == "PNG" else "jpg"

    def path(self) -> str:
        return f"{self.split}/{self.given_label}/{self.name}.{self.ext}"


def _class_counts(n: int, classes: Sequence[str], rng: np.random.Generator) -> dict[str, int]:
    weights = np.array([_MINORITY_SHARE if c == _MINORITY_CLASS else rng.uniform(0.97, 1.0) for c in classes])
    if _MINORITY_CLASS in classes:
        # The minority share is relative to the largest class, so pin it after the jitter.
        weights[list(classes).index(_MINORITY_CLASS)] = _MINORITY_SHARE * weights.max()
    raw = weights / weights.sum() * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(counts - raw)[: n - counts.sum()]:
        counts[i] += 1
    return dict(zip(classes, (int(v) for v in counts), strict=True))


def _split_counts(n: int) -> dict[str, int]:
    test = max(1, round(n * SPLIT_FRACTIONS["test"])) if n >= 2 else 0
    validation = round(n * SPLIT_FRACTIONS["validation"])
    return {"train": n - validation - test, "validation": validation, "test": test}


def _flip(rows: list[_Row], rate: float, classes: Sequence[str], rng: np.random.Generator) -> None:
    """Give ``rate`` of the rows a wrong folder, mostly sad <-> neutral near their boundary."""
    n_flip = round(rate * len(rows))
    if n_flip == 0:
        return
    flipped: set[int] = set()
    pair = {"sad": "neutral", "neutral": "sad"}
    if "sad" in classes and "neutral" in classes:
        pool = [i for i, r in enumerate(rows) if r.true_label in pair]
        # Prefer the ambiguous middle of the sadness axis, but not only it.
        w = np.array([np.exp(-((((rows[i].intensity or 0.0) - 0.45) / 0.15) ** 2)) + 0.25 for i in pool])
        take = min(len(pool), round(n_flip * _SAD_NEUTRAL_FLIP_SHARE))
        for i in rng.choice(pool, size=take, replace=False, p=w / w.sum()):
            rows[i].given_label = pair[str(rows[i].true_label)]
            flipped.add(int(i))
    pool = [i for i in range(len(rows)) if i not in flipped]
    # Subtle expressions are the ones annotators get wrong.
    w = np.array([1.2 - (rows[i].intensity or 0.0) for i in pool])
    take = min(len(pool), n_flip - len(flipped))
    for i in rng.choice(pool, size=take, replace=False, p=w / w.sum()):
        true = str(rows[i].true_label)
        others = [c for c in classes if c != true and pair.get(true) != c]
        rows[i].given_label = str(rng.choice(others or [c for c in classes if c != true]))


def _plan_originals(p: DemoParams, rng: np.random.Generator) -> list[_Row]:
    counts = _class_counts(p.n_images, p.classes, rng)
    n_ids = max(1, p.n_images // 3)
    rows: list[_Row] = []
    for label, n in counts.items():
        lo, hi = INTENSITY_RANGES[label]
        splits = _split_counts(n)
        split_of = np.repeat(list(splits), list(splits.values()))
        for split, intensity in zip(split_of, rng.uniform(lo, hi, size=n), strict=True):
            rows.append(_Row(0, str(split), label, label, float(intensity), int(rng.integers(n_ids))))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    _flip(rows, p.mislabel_rate, p.classes, rng)
    # A few RGB files and a few PNGs among the gray JPEGs.
    n_odd = max(2, round(0.008 * len(rows))) if len(rows) >= 20 else 0
    odd = rng.choice(len(rows), size=min(len(rows), 2 * n_odd), replace=False)
    for i in odd[:n_odd]:
        rows[i].mode = "RGB"
    for i in odd[n_odd:]:
        rows[i].fmt = "PNG"
    return rows


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


def _transform_copy(original: _Row, transform: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """Re-make an original's file the way a scraper or an editor would. Returns (bytes, format)."""
    if transform == "exact":
        return original.data, original.fmt
    arr = _decode(original.data).astype(np.float32)
    h, w = arr.shape[:2]
    quality = int(rng.integers(75, 96))
    if transform == "reencode":
        quality = int(rng.choice([q for q in range(40, 96, 5) if abs(q - quality) > 10]))
    elif transform == "brightness":
        arr = arr * (1 + rng.choice([-1, 1]) * rng.uniform(0.10, 0.25))
    elif transform == "contrast":
        factor = rng.uniform(0.7, 0.85) if rng.random() < 0.5 else rng.uniform(1.15, 1.35)
        arr = (arr - arr.mean()) * factor + arr.mean()
    elif transform == "resize":
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        if rng.random() < 0.4:
            img = img.resize((64, 64), Image.Resampling.BICUBIC)
        else:
            mid = int(rng.choice([40, 44, 56]))
            img = img.resize((mid, mid), Image.Resampling.BILINEAR).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.float32)
    elif transform == "shift":
        dy, dx = (int(v) * int(rng.choice([-1, 1])) for v in rng.integers(1, 3, size=2))
        pad = [(2, 2), (2, 2)] + [(0, 0)] * (arr.ndim - 2)
        padded = np.pad(arr, pad, mode="edge")
        arr = padded[2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w]
    return _encode(np.clip(arr, 0, 255).round().astype(np.uint8), original.fmt, quality), original.fmt


def _pick_sources(rows: list[_Row], n: int, rng: np.random.Generator) -> list[tuple[int, str]]:
    """Choose (original, split of its copy) pairs that keep the split fractions intact.

    The copy's split is drawn from the split fractions first; its original then comes from
    another split 80% of the time, so most duplicates leak across splits.
    """
    by_split = {s: [i for i, r in enumerate(rows) if r.split == s] for s in SPLITS}
    used: set[int] = set()
    picks: list[tuple[int, str]] = []
    # One leak from the tiny test split is worth showing: a test image copied into train.
    if by_split["test"]:
        picks.append((by_split["test"][0], "train"))
        used.add(by_split["test"][0])
    fractions = np.array([SPLIT_FRACTIONS[s] for s in SPLITS])
    while len(picks) < n:
        split = str(rng.choice(SPLITS, p=fractions))
        cross = rng.random() < 0.8
        pool = [s for s in SPLITS if (s != split) == cross and by_split[s]]
        if not pool:
            continue
        weights = np.array([len(by_split[s]) for s in pool], dtype=float)
        source_split = pool[int(rng.choice(len(pool), p=weights / weights.sum()))]
        candidate = int(rng.choice(by_split[source_split]))
        if candidate not in used:
            used.add(candidate)
            picks.append((candidate, split))
    return picks


def _plant_duplicates(rows: list[_Row], p: DemoParams, rng: np.random.Generator) -> list[_Row]:
    n_dup = min(round(p.duplicate_rate * len(rows)), len(rows) // 2)
    if n_dup == 0:
        return []
    # A few originals get two copies: duplicate groups of three.
    n_triples = min(n_dup // 2, max(1, round(0.08 * n_dup)) if n_dup >= 3 else 0)
    picks = _pick_sources(rows, n_dup - n_triples, rng)
    for src, split in picks[-n_triples:] if n_triples else []:
        others = [s for s in SPLITS if s not in (split, "test")]
        picks.append((src, str(rng.choice(others))))
    transforms = rng.choice(DUP_TRANSFORMS, size=len(picks), p=_DUP_TRANSFORM_WEIGHTS)
    copies: list[_Row] = []
    for (src, split), transform in zip(picks, transforms, strict=True):
        original = rows[src]
        label = original.given_label
        if rng.random() < _DUP_RELABEL_SHARE:
            label = str(rng.choice([c for c in p.classes if c != label]))
        data, fmt = _transform_copy(original, str(transform), rng)
        copies.append(
            _Row(
                0,
                split,
                label,
                original.true_label,
                original.intensity,
                original.identity,
                fmt=fmt,
                mode=original.mode,
                dup_of=src,
                dup_transform=str(transform),
                data=data,
            )
        )
    return copies


_NOT_AN_IMAGE = b"<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


def _plant_invalid(p: DemoParams, donor: bytes, rng: np.random.Generator) -> list[_Row]:
    rows: list[_Row] = []
    for k in range(p.n_invalid):
        reason = INVALID_REASONS[k % len(INVALID_REASONS)]
        split = "train" if rng.random() < 0.72 else "validation"
        label = str(rng.choice(p.classes))
        mode: str | None = "L"
        size = p.image_size
        if reason == "empty":
            data, mode = b"", None
        elif reason == "truncated":
            data = donor[: int(len(donor) * rng.uniform(0.35, 0.6))]
        elif reason == "not_image":
            data, mode = _NOT_AN_IMAGE, None
        elif reason == "uniform":
            data = _encode(np.full((size, size), int(rng.integers(0, 256)), np.uint8), "JPEG", 90)
        elif reason == "near_uniform":
            base = rng.uniform(30, 220) + rng.normal(0, 0.7, size=(size, size))
            data = _encode(np.clip(base, 0, 255).round().astype(np.uint8), "PNG", 0)
        else:
            data = _encode(np.full((1, 1), int(rng.integers(0, 256)), np.uint8), "JPEG", 90)
        fmt = "PNG" if reason == "near_uniform" else "JPEG"
        rows.append(_Row(0, split, label, None, None, -1, fmt=fmt, mode=mode, invalid_reason=reason, data=data))
    return rows


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


TRUTH_MD = """\
# Demo ground truth

`dataset/` is a messy FER-like set; `truth.parquet` says what every file under it really is
(one row per file). Columns:

- `path`: relative to `dataset/`, e.g. `train/sad/10023.jpg`.
- `split`: the split folder as written (train, validation, test).
- `given_label`: the class folder the file sits in (possibly wrong).
- `true_label`: the expression actually rendered; null for invalid files.
- `mislabeled`: `given_label != true_label`.
- `intensity`: 0-1 strength of the expression. Neutral and sad share one sadness axis
  (neutral 0-0.55, sad 0.35-1.0), so images in 0.35-0.55 are genuinely ambiguous.
- `identity`: the rendered person (several images per person); -1 for invalid files.
- `invalid_reason`: null, or empty, truncated, not_image, uniform, near_uniform, tiny.
- `dup_of`: null, or the `path` of the original this file is a copy of (originals have null).
- `dup_transform`: null, or reencode, brightness, contrast, resize, shift, exact.
- `mode`: L or RGB as stored (null when the file is not an image); `format`: JPEG or PNG.

`affectnet/` is an AffectNet-style source: `Manually_Annotated_Images/<dir>/<name>.jpg`, the
official `training.csv` columns, and `affectnet/truth.parquet` (`subDirectory_filePath`,
`expression`, `true_label`, `intensity`, `fault`: null, missing_file, box_outside or corrupt).
"""


def _check_params(p: DemoParams) -> None:
    unknown = [c for c in p.classes if c not in EXPRESSIONS]
    if unknown:
        raise InputError(
            f"demo class {unknown[0]!r} is not one the renderer can draw; use some of: {', '.join(EXPRESSIONS)}"
        )
    if len(set(p.classes)) != len(p.classes) or len(p.classes) < 2:
        raise InputError(f"demo classes {list(p.classes)} must be at least two distinct names")
    if p.n_images < 10 * len(p.classes):
        raise InputError(f"n_images={p.n_images} is too small; use at least {10 * len(p.classes)}")
    if not 16 <= p.image_size <= 512:
        raise InputError(f"image_size={p.image_size} is outside 16-512 pixels")
    for name in ("mislabel_rate", "duplicate_rate"):
        value = getattr(p, name)
        if not 0.0 <= value <= 0.5:
            raise InputError(f"{name}={value} is outside 0-0.5")
    if p.n_invalid < 0 or p.n_affectnet < 0:
        raise InputError("n_invalid and n_affectnet must be 0 or more")


def _check_dest(dest: Path, overwrite: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise InputError(f"demo destination {dest} is a file; choose a folder")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise InputError(f"demo destination {dest} is not empty; pass --overwrite or choose an empty folder")


def _write_files(files: list[tuple[Path, bytes]]) -> None:
    """Write many small files. Threads, because on slow file systems opening a file costs more
    than writing it, and ``open`` releases the GIL."""
    for folder in {path.parent for path, _ in files}:
        folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda item: item[0].write_bytes(item[1]), files))


def _truth_table(rows: list[_Row]) -> Any:
    import pyarrow as pa

    paths = [r.path() for r in rows]
    schema = pa.schema(
        [
            ("path", pa.string()),
            ("split", pa.string()),
            ("given_label", pa.string()),
            ("true_label", pa.string()),
            ("mislabeled", pa.bool_()),
            ("intensity", pa.float64()),
            ("identity", pa.int64()),
            ("invalid_reason", pa.string()),
            ("dup_of", pa.string()),
            ("dup_transform", pa.string()),
            ("mode", pa.string()),
            ("format", pa.string()),
        ]
    )
    columns = {
        "path": paths,
        "split": [r.split for r in rows],
        "given_label": [r.given_label for r in rows],
        "true_label": [r.true_label for r in rows],
        "mislabeled": [r.true_label is not None and r.given_label != r.true_label for r in rows],
        "intensity": [r.intensity for r in rows],
        "identity": [r.identity for r in rows],
        "invalid_reason": [r.invalid_reason for r in rows],
        "dup_of": [paths[r.dup_of] if r.dup_of is not None else None for r in rows],
        "dup_transform": [r.dup_transform for r in rows],
        "mode": [r.mode for r in rows],
        "format": [r.fmt for r in rows],
    }
    return pa.table(columns, schema=schema)


def _affectnet_plan(n: int, rng: np.random.Generator) -> list[str]:
    # Surprise is what balancing the demo set needs, so the source is rich in it.
    shares = {
        "surprise": 0.34,
        "happy": 0.12,
        "neutral": 0.12,
        "sad": 0.12,
        "fear": 0.07,
        "anger": 0.06,
        "contempt": 0.04,
        "disgust": 0.03,
        "none": 0.04,
        "uncertain": 0.03,
        "no-face": 0.03,
    }
    raw = np.array(list(shares.values())) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(counts - raw)[: n - counts.sum()]:
        counts[i] += 1
    labels = np.repeat(list(shares), counts)
    return [str(v) for v in rng.permutation(labels)]


_VALENCE_AROUSAL = {
    "neutral": (0.0, 0.0),
    "happy": (0.75, 0.35),
    "sad": (-0.65, -0.25),
    "surprise": (0.15, 0.75),
    "fear": (-0.6, 0.7),
    "disgust": (-0.65, 0.35),
    "anger": (-0.6, 0.65),
    "contempt": (-0.45, 0.25),
}


def _write_affectnet(root: Path, p: DemoParams, workers: int) -> dict[str, int]:
    import pandas as pd

    rng = np.random.default_rng([p.seed, _STREAM_AFFECTNET])
    labels = _affectnet_plan(p.n_affectnet, rng)
    tasks = []
    for j, label in enumerate(labels):
        lo, hi = INTENSITY_RANGES.get(label, (0.3, 0.8))
        tasks.append(_AffectTask(p.seed, j, label, float(rng.uniform(lo, hi))))
    images: list[_AffectImage] = _map(_render_affectnet_image, tasks, workers)

    faults: list[str | None] = [None] * len(tasks)
    fault_kinds = ["missing_file", "missing_file", "box_outside", "corrupt"]
    for j, kind in zip(rng.choice(len(tasks), size=min(len(tasks), 4), replace=False), fault_kinds, strict=False):
        faults[int(j)] = kind

    image_dir = root / "Manually_Annotated_Images"
    csv_rows = []
    truth_rows = []
    files: list[tuple[Path, bytes]] = []
    for task, img, fault in zip(tasks, images, faults, strict=True):
        sub = int(rng.integers(1, 21))
        rel = f"{sub}/{rng.bytes(20).hex()}.jpg"
        x, y, bw, bh = img.box
        if fault == "box_outside":
            x = img.width - bw // 3  # the box runs off the right edge
        code = AFFECTNET_CODES.index(task.expression)
        va = _VALENCE_AROUSAL.get(task.expression)
        if va is None:
            valence, arousal = rng.uniform(-0.3, 0.3, size=2)
        else:
            valence = va[0] * (0.4 + 0.6 * task.intensity) + rng.normal(0, 0.08)
            arousal = va[1] * (0.4 + 0.6 * task.intensity) + rng.normal(0, 0.08)
        landmarks = ";".join(f"{v:.2f}" for v in img.landmarks.ravel())
        csv_rows.append(
            (
                rel,
                x,
                y,
                bw,
                bh,
                landmarks,
                code,
                round(float(np.clip(valence, -1, 1)), 6),
                round(float(np.clip(arousal, -1, 1)), 6),
            )
        )
        truth_rows.append((rel, code, task.expression, task.intensity, fault))
        if fault == "missing_file":
            continue
        data = img.data
        if fault == "corrupt":
            data = data[:4] + rng.bytes(len(data) // 2)
        files.append((image_dir / rel, data))
    image_dir.mkdir(parents=True, exist_ok=True)
    _write_files(files)
    pd.DataFrame(csv_rows, columns=list(AFFECTNET_COLUMNS)).to_csv(root / "training.csv", index=False)
    truth = pd.DataFrame(
        truth_rows, columns=["subDirectory_filePath", "expression", "true_label", "intensity", "fault"]
    )
    truth.to_parquet(root / "truth.parquet", index=False)
    return {"affectnet": len(csv_rows), "affectnet_faults": sum(f is not None for f in faults)}


def _default_workers() -> int:
    from fercurate.images import default_workers

    return min(8, default_workers())


def generate_demo(
    dest: Path,
    params: DemoParams = DemoParams(),
    *,
    overwrite: bool = False,
    workers: int | None = None,
) -> DemoResult:
    """Write a messy FER-like demo dataset, its ground truth and an AffectNet-style source.

    Everything is built in a hidden folder inside ``dest`` and moved into place at the end, so an
    interrupted run leaves no half-written dataset. With ``overwrite`` the demo's own entries
    (``dataset/``, ``affectnet/``, ``truth.parquet``, ``TRUTH.md``) are replaced; other files in
    ``dest`` are left alone. The same ``params`` always give byte-identical files, whatever
    ``workers`` is.

    Args:
        dest: the destination folder; created if missing, must be empty unless ``overwrite``.
        params: sizes, fault rates, classes and seed.
        overwrite: replace an existing demo in a non-empty ``dest``.
        workers: processes for rendering; defaults to the available cores (at most 8).

    Returns:
        Where things were written and how many of each were planted.

    Raises:
        InputError: bad params, or a non-empty ``dest`` without ``overwrite``.
    """
    dest = Path(dest)
    _check_params(params)
    _check_dest(dest, overwrite)
    n_workers = workers if workers is not None else _default_workers()

    rng = np.random.default_rng([params.seed, _STREAM_PLAN])
    rows = _plan_originals(params, rng)
    tasks = [
        _FaceTask(
            params.seed,
            i,
            r.identity,
            str(r.true_label),
            float(r.intensity or 0.0),
            params.image_size,
            r.fmt,
            str(r.mode),
        )
        for i, r in enumerate(rows)
    ]
    for row, data in zip(rows, _map(_render_dataset_image, tasks, n_workers), strict=True):
        row.data = data

    fault_rng = np.random.default_rng([params.seed, _STREAM_FAULTS])
    copies = _plant_duplicates(rows, params, fault_rng)
    donor = _render_dataset_image(_FaceTask(params.seed, len(rows), 0, "neutral", 0.2, params.image_size, "JPEG", "L"))
    invalid = _plant_invalid(params, donor, fault_rng)
    everything = rows + copies + invalid
    # Numeric names, unique across the whole dataset, in no particular order.
    names = fault_rng.choice(np.arange(10000, 10000 + 20 * len(everything)), size=len(everything), replace=False)
    for row, name in zip(everything, names, strict=True):
        row.name = int(name)

    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=dest))
    try:
        _write_files([(tmp / "dataset" / row.path(), row.data) for row in everything])
        import pyarrow.parquet as pq

        pq.write_table(_truth_table(everything), tmp / "truth.parquet")
        (tmp / "TRUTH.md").write_text(TRUTH_MD, encoding="utf-8")
        affect_counts = _write_affectnet(tmp / "affectnet", params, n_workers)
        for name in ("dataset", "affectnet", "truth.parquet", "TRUTH.md"):
            target = dest / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            (tmp / name).rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)

    counts = {
        "files": len(everything),
        "images": len(rows),
        "mislabeled": sum(r.true_label is not None and r.given_label != r.true_label for r in everything),
        "duplicates": len(copies),
        "invalid": len(invalid),
        "rgb": sum(r.mode == "RGB" for r in everything),
        "png": sum(r.fmt == "PNG" for r in everything),
        **affect_counts,
    }
    return DemoResult(
        dest=dest,
        dataset_dir=dest / "dataset",
        truth_path=dest / "truth.parquet",
        affectnet_dir=dest / "affectnet",
        affectnet_csv=dest / "affectnet" / "training.csv",
        counts=counts,
    )
