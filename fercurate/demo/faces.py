"""The face renderer: PIL shapes drawn supersampled, posed and downsampled into anti-aliased faces.

Pure functions of a random generator (:func:`make_identity`, :func:`expression_shape`,
:func:`render_face`), so any process pool can map them. This module is longer than the ~600 lines
the other modules keep to because it is one renderer: the head, brows, eyes, nose and mouth are
drawn on one canvas in one coordinate frame, and splitting them apart would scatter one face over
several files.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fercurate.demo.params import (
    EXPRESSIONS,
    OCCLUDED_SHARE,
    OCCLUDERS,
    SHADING_CELLS,
    SHADING_LEVELS,
    SOFT_BLUR,
    SOFT_SHARE,
)
from fercurate.errors import InputError

_SUPERSAMPLED_EDGE = 192


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
        rest_corner=float(rng.normal(0.0, 0.01)),
        rest_brow=float(rng.normal(0.0, 0.01)),
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
        open_mouth = i > 0.55 and rng.random() < 0.5
        return _Shape(
            corner_l=-(0.004 + 0.048 * i),
            corner_r=-(0.004 + 0.048 * i),
            mouth_wscale=1.0 + 0.28 * i,
            mouth_dy=0.004 * i,
            gap=(0.012 + 0.032 * i) if open_mouth else 0.0,
            gap_power=1.2,
            teeth=open_mouth,
            brow_inner_dy=-0.006 * i,
            brow_outer_dy=-0.004 * i,
            eye_scale=1.0 - 0.30 * i,
            lower_lid=0.7 * i,
            cheek=0.7 * i,
            fold=0.15 + 0.85 * i,
        )
    if expression == "surprise":
        raise_ = 0.008 + 0.065 * i
        return _Shape(
            mouth_wscale=1.0 - 0.45 * i,
            mouth_dy=0.012 * i,
            gap=0.004 + 0.066 * i,
            gap_power=0.55,
            # Teeth only in a wide-open mouth: a white line under a slit reads as a smile.
            teeth=i > 0.5 and rng.random() < 0.3,
            brow_inner_dy=-raise_,
            brow_outer_dy=-raise_ * 0.8,
            brow_arch=0.012 * i,
            eye_scale=1.1 + 0.7 * i,
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


def draw_pose(rng: np.random.Generator, tight: bool = False) -> _Pose:
    """The head's pose in its crop. FER crops vary in scale and centring (``tight``: a face box fitted
    to the head, as AffectNet's are)."""
    spread = 0.67 if tight else 1.0
    return _Pose(
        angle=float(np.clip(rng.normal(0.0, 8.0 * spread), -18, 18)),
        scale=float(1.0 + 0.16 * rng.random()) if tight else float(rng.uniform(0.92, 1.25)),
        dx=float(rng.uniform(-0.06, 0.06) * spread),
        dy=float(rng.uniform(-0.06, 0.06) * spread),
        yaw=float(rng.uniform(-0.7, 0.7)),
    )


@dataclass(frozen=True)
class _Occluder:
    """Something between the camera and part of the face (face-crop units, placed from the identity's
    landmarks): a hand over the mouth, chin or a cheek, a strand of hair over an eye, an object."""

    kind: str  # a key of OCCLUDERS
    side: int  # -1 or 1: which cheek, eye or side of the mouth
    dx: float
    dy: float
    size: float
    tone: float  # hand: times the skin; object: a gray level


def draw_occluder(rng: np.random.Generator) -> _Occluder | None:
    """None for most renders, else what covers part of the face (``OCCLUDED_SHARE`` of them)."""
    if rng.random() >= OCCLUDED_SHARE:
        return None
    kinds = list(OCCLUDERS)
    kind = str(rng.choice(kinds, p=[OCCLUDERS[k] for k in kinds]))
    return _Occluder(
        kind=kind,
        side=int(rng.choice([-1, 1])),
        dx=float(rng.uniform(-0.04, 0.04)),
        dy=float(rng.uniform(-0.04, 0.04)),
        size=float(rng.uniform(0.8, 1.25)),
        tone=float(rng.uniform(0.85, 1.05) if kind == "hand" else rng.uniform(15, 90)),
    )


def _draw_occluder(c: _Canvas, who: Identity, fx: float, occ: _Occluder) -> None:
    s = occ.size
    if occ.kind == "hand":
        # A palm over the mouth and chin, or flat on a cheek, fingers pointing up.
        over_mouth = occ.dy < 0  # half of the hands
        x = fx + (0.04 * occ.side if over_mouth else occ.side * (who.eye_dx + 0.06)) + occ.dx
        y = (who.mouth_y + 0.06 if over_mouth else who.eye_y + 0.2) + occ.dy
        tone = who.skin * occ.tone
        for k in range(4):
            tip = 0.012 * (1.5 - abs(k - 1.5))  # the middle fingers reach higher
            c.ellipse(x + (k - 1.5) * 0.048 * s, y - 0.13 * s - tip, 0.026 * s, 0.085 * s, tone)
        c.ellipse(x, y, 0.115 * s, 0.1 * s, tone * 0.96)
    elif occ.kind == "hair":
        ex = fx + occ.side * who.eye_dx + occ.dx
        xs = ex + np.array([-0.12, -0.02, 0.05]) * occ.side
        c.line(c.pts(xs, who.eye_y + occ.dy + np.array([-0.2, 0.0, 0.18])), who.hair_tone, 0.035 * s)
    else:  # a phone or a microphone held to the face
        x = fx + occ.side * (who.mouth_w + 0.08) + occ.dx
        y = who.mouth_y + occ.dy
        w, h = 0.05 * s, 0.17 * s
        c.polygon(c.pts([x - w, x + w, x + w, x - w], [y - h, y - h, y + h, y + h]), occ.tone)


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


def _draw_head(
    c: _Canvas, who: Identity, shape: _Shape, yaw: float, rng: np.random.Generator, occluder: _Occluder | None = None
) -> None:
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
    if occluder is not None:
        _draw_occluder(c, who, fx, occluder)


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


def render_head(
    base: Image.Image,
    ss: int,
    who: Identity,
    shape: _Shape,
    pose: _Pose,
    rng: np.random.Generator,
    scale: float,
    origin: tuple[float, float] = (0.0, 0.0),
    with_mask: bool = False,
    occluder: _Occluder | None = None,
) -> tuple[Image.Image, Image.Image | None, np.ndarray]:
    """Draw one posed head over ``base``, a backdrop ``ss`` times the output size.

    Returns the image and (when asked) the head's silhouette at output size, and the
    face-units-to-output-pixels affine.
    """
    affine = _pose_affine(pose, scale, origin)
    c = _Canvas(base, affine, ss, with_mask)
    _draw_head(c, who, shape, pose.yaw, rng, occluder)
    if ss == 1:
        return c.gray, c.mask, affine
    # Box-averaging the supersampled layers is the anti-aliasing.
    mask = c.mask.reduce(ss) if c.mask is not None else None
    return c.gray.reduce(ss), mask, affine


def _supersample(scale: float) -> int:
    return max(1, min(4, math.ceil(_SUPERSAMPLED_EDGE / scale)))


def landmarks(who: Identity, shape: _Shape, yaw: float) -> np.ndarray:
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


def soft_background(rng: np.random.Generator, width: int, height: int, mode: str, lo: float, hi: float) -> Image.Image:
    """A smooth random backdrop: a few coarse blocks upsampled bicubically."""
    coarse = rng.uniform(lo, hi, size=(3, 3, 1))
    if mode == "RGB":
        # Muted colours: a gray level per block plus a modest tint, like rooms and streets.
        coarse = coarse + rng.uniform(-35, 35, size=(3, 3, 3))
    coarse = np.clip(coarse, 0, 255).astype(np.uint8)
    img = Image.fromarray(coarse[..., 0] if mode == "L" else coarse)
    return img.resize((width, height), Image.Resampling.BICUBIC)


def shading(rng: np.random.Generator, size: int, box: tuple[float, float, float]) -> np.ndarray:
    """Shadows, skin and hair texture, light patches: a smooth random field in grey levels, fixed to
    the photo, so that a re-crop's ``box`` (see :func:`render_face`) sees it moved and zoomed."""
    from scipy.ndimage import map_coordinates

    cells = SHADING_CELLS
    coarse = rng.standard_normal((cells + 1, cells + 1))
    amplitude = rng.uniform(*SHADING_LEVELS)
    zoom, dx, dy = box
    margin = size * (1.0 - zoom) / 2
    u = (np.arange(size) + 0.5 - margin) / (size * zoom)  # photo units 0..1 of the plain box
    ys = (u - dy / (size * zoom))[:, None] * cells
    xs = (u - dx / (size * zoom))[None, :] * cells
    grid = [np.broadcast_to(ys, (size, size)), np.broadcast_to(xs, (size, size))]
    return (map_coordinates(coarse, grid, order=3, mode="mirror") * amplitude).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return (xs / max(1, width - 1) - 0.5), (ys / max(1, height - 1) - 0.5)


def camera(img: np.ndarray, rng: np.random.Generator, noise: np.random.Generator | None = None) -> np.ndarray:
    """Uneven light, contrast, gamma and sensor noise; ``img`` is HxWxC float32 in 0-255. The noise
    field comes from ``noise`` when given (another exposure with the same settings)."""
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
    level = np.float32(rng.uniform(1.0, 8.0))
    out += (noise if noise is not None else rng).standard_normal(size=(h, w, 1), dtype=np.float32) * level
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
    box: tuple[float, float, float] = (1.0, 0.0, 0.0),
    exposure: int = 0,
) -> np.ndarray:
    """Render one FER-style face crop: grayscale, the face filling the frame.

    Args:
        rng: drives pose, lighting, noise and (when ``identity`` is None) the person.
        expression: one of :data:`EXPRESSIONS`.
        intensity: 0-1; see :func:`expression_shape`.
        size: edge of the square output in pixels.
        identity: the person; a new one is drawn from ``rng`` when None.
        box: (zoom, dx, dy) of the face box on the photo: the face drawn ``zoom`` times as large
            and its centre moved by (dx, dy) output pixels. Redrawing the same ``rng`` with another
            box is a re-crop of the same photo (same pose, light and expression), drawn afresh at
            the supersampled size rather than resampled from the 48x48.
        exposure: another exposure of the same scene (a burst frame) has its own sensor noise.

    Returns:
        ``size x size`` uint8 array, before any JPEG encoding.
    """
    who = identity if identity is not None else make_identity(rng)
    # The expression's own choices get a child stream, so that the same seed gives the same pose
    # and light whatever the expression.
    shape = expression_shape(expression, intensity, np.random.default_rng(int(rng.integers(2**32))))
    pose = draw_pose(rng)
    occluder = draw_occluder(rng)
    soft = rng.random() < SOFT_SHARE
    ss = _supersample(size)
    # Smooth at output size already, so a blocky upsample to the drawing size loses nothing.
    backdrop = soft_background(rng, size, size, "L", 25, 225).resize((size * ss, size * ss), Image.Resampling.NEAREST)
    zoom, dx, dy = box
    margin = size * (1.0 - zoom) / 2
    img, _, _ = render_head(
        backdrop, ss, who, shape, pose, rng, size * zoom, (margin + dx, margin + dy), occluder=occluder
    )
    arr = _blur(img, rng.uniform(*(SOFT_BLUR if soft else (0.25, 0.65))) * size / 48)
    arr = arr + shading(np.random.default_rng(int(rng.integers(2**32))), size, box)[..., None]
    noise = np.random.default_rng([int(rng.integers(2**32)), exposure])
    return camera(arr, rng, noise)[..., 0].round().astype(np.uint8)
