"""What the demo generator makes (:class:`DemoParams`, validated here) and the constants of its faults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fercurate.affectnet.params import CSV_COLUMNS
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
# [0.2, 0.7]: an image drawn there could have come from either class. A faint smile or a faint
# surprise (intensity near 0) is close to a neutral face, as in real FER.
INTENSITY_RANGES: dict[str, tuple[float, float]] = {
    "neutral": (0.0, 0.7),
    "sad": (0.2, 1.0),
    "happy": (0.0, 1.0),
    "surprise": (0.05, 1.0),
    "fear": (0.3, 1.0),
    "disgust": (0.3, 1.0),
    "anger": (0.3, 1.0),
    "contempt": (0.3, 1.0),
}

# What real FER crops hold beyond expression, identity, pose and light, so that the demo is as hard
# to learn as real faces (docs/demo.md measures both): a hand, a strand of hair or an object over
# part of the face, and soft crops (a small, upscaled face). Shares of all renders.
OCCLUDED_SHARE = 0.25
OCCLUDERS: dict[str, float] = {"hand": 0.55, "hair": 0.3, "object": 0.15}
SOFT_SHARE = 0.3
SOFT_BLUR = (0.7, 1.1)  # Gaussian radius at 48x48 (the others: 0.25-0.65)
# What makes two photos unlike each other beyond the face drawn in them, so that a duplicate finder
# sees the demo's different photos about as far apart as real ones (docs/demo.md compares the
# similarity of random pairs): shadows, skin and hair texture, light patches. A smooth random field
# fixed to the photo, on a grid of this many cells a side, this many grey levels at one s.d.
SHADING_CELLS = 8
SHADING_LEVELS = (6.0, 12.0)

INVALID_REASONS: tuple[str, ...] = (
    "empty",
    "truncated",
    "not_image",
    "uniform",
    "near_uniform",
    "tiny",
)
DUP_TRANSFORMS: tuple[str, ...] = (
    "reencode",
    "brightness",
    "contrast",
    "resize",
    "shift",
    "exact",
    "recrop",
    "watermark",
    "tone",
)
DUP_TRANSFORM_WEIGHTS = (0.1, 0.1, 0.08, 0.1, 0.07, 0.1, 0.25, 0.1, 0.1)
#: What each transform is, as the dedup score counts it: byte copies, small edits of the same
#: pixels, another face box on the same photo, a stock-photo watermark, a tone curve.
COPY_KINDS: dict[str, str] = {
    "exact": "exact",
    "reencode": "near",
    "brightness": "near",
    "contrast": "near",
    "resize": "near",
    "shift": "near",
    "recrop": "recrop",
    "watermark": "watermark",
    "tone": "tone",
}
# A re-crop: the face box zoomed by 0.85-1.15 (at least 4% away from 1) and moved a few pixels.
RECROP_ZOOM = (0.85, 1.15)
RECROP_MIN_ZOOM_CHANGE = 0.04
RECROP_SHIFT_PX = 3.0
# A watermark: one stock-photo word, white, at this opacity, often diagonal.
WATERMARK_WORDS: tuple[str, ...] = ("shutterstock", "iStock", "alamy", "123RF", "Getty Images", "dreamstime")
WATERMARK_ALPHA = (0.2, 0.4)
# A tone curve: gamma in 0.7-1.4, at least 12% away from 1 so the change is visible.
TONE_GAMMA = (0.7, 1.4)
TONE_MIN_CHANGE = 0.12
# Burst frames: the same person, pose, light and backdrop a moment later with another expression
# (and the camera a pixel off). Hard negatives: not duplicates. Share of the clean renders.
BURST_SHARE = 0.02
BURST_ZOOM_CHANGE = 0.03
BURST_SHIFT_PX = 1.0
# A frame shows another expression only where it visibly does: (grey levels, pixels per 48x48) that
# must change between the original and the frame, both drawn with the original's box.
BURST_MIN_CHANGE = (20, 30)

# Share of the under-represented class relative to the others, as in the real case.
MINORITY_CLASS = "surprise"
MINORITY_SHARE = 0.6
SAD_NEUTRAL_FLIP_SHARE = 0.7
DUP_RELABEL_SHARE = 0.15

# Independent random streams, so adding faults never changes how the faces look.
STREAM_PLAN, STREAM_IDENTITY, STREAM_IMAGE, STREAM_AFFECTNET, STREAM_FAULTS = range(5)


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

    def __post_init__(self) -> None:
        """Raise :class:`InputError` naming the first value out of its range."""
        unknown = [c for c in self.classes if c not in EXPRESSIONS]
        if unknown:
            raise InputError(
                f"demo class {unknown[0]!r} is not one the renderer can draw; use some of: {', '.join(EXPRESSIONS)}"
            )
        if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
            raise InputError(f"demo classes {list(self.classes)} must be at least two distinct names")
        if self.n_images < 10 * len(self.classes):
            raise InputError(f"n_images={self.n_images} is too small; use at least {10 * len(self.classes)}")
        if not 16 <= self.image_size <= 512:
            raise InputError(f"image_size={self.image_size} is outside 16-512 pixels")
        for name in ("mislabel_rate", "duplicate_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 0.5:
                raise InputError(f"{name}={value} is outside 0-0.5")
        if self.n_invalid < 0 or self.n_affectnet < 0:
            raise InputError("n_invalid and n_affectnet must be 0 or more")


@dataclass(frozen=True)
class DemoResult:
    """Where the demo was written and how many of each thing it holds.

    ``counts`` keys: ``files`` (every file under ``dataset/``), ``images`` (clean renders before
    faults), ``mislabeled``, ``duplicates`` (planted copies), ``bursts`` (burst frames: another
    expression of an image's moment, not a copy), ``invalid``, ``rgb``, ``png``,
    ``affectnet`` (CSV rows) and ``affectnet_faults``.
    """

    dest: Path
    dataset_dir: Path
    truth_path: Path
    affectnet_dir: Path
    affectnet_csv: Path
    counts: dict[str, int] = field(default_factory=dict)
    #: ``written`` (a new demo), ``reused`` (the same demo was there) or ``replaced`` (another demo was)
    action: str = "written"


EXTRA_FACES = EXPRESSIONS


NOT_AN_IMAGE = b"<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


VALENCE_AROUSAL = {
    "neutral": (0.0, 0.0),
    "happy": (0.75, 0.35),
    "sad": (-0.65, -0.25),
    "surprise": (0.15, 0.75),
    "fear": (-0.6, 0.7),
    "disgust": (-0.65, 0.35),
    "anger": (-0.6, 0.65),
    "contempt": (-0.45, 0.25),
}


class Truth:
    """Columns of the demo's ``truth.parquet``: what every file really is (declared once, here)."""

    PATH = "path"
    SPLIT = "split"
    GIVEN_LABEL = "given_label"
    TRUE_LABEL = "true_label"
    MISLABELED = "mislabeled"
    INTENSITY = "intensity"
    IDENTITY = "identity"
    INVALID_REASON = "invalid_reason"
    DUP_OF = "dup_of"
    DUP_TRANSFORM = "dup_transform"
    COPY_KIND = "copy_kind"
    BURST_OF = "burst_of"
    MODE = "mode"
    FORMAT = "format"


def truth_schema() -> Any:
    """The Arrow schema of ``truth.parquet``."""
    import pyarrow as pa

    return pa.schema(
        [
            (Truth.PATH, pa.string()),
            (Truth.SPLIT, pa.string()),
            (Truth.GIVEN_LABEL, pa.string()),
            (Truth.TRUE_LABEL, pa.string()),
            (Truth.MISLABELED, pa.bool_()),
            (Truth.INTENSITY, pa.float64()),
            (Truth.IDENTITY, pa.int64()),
            (Truth.INVALID_REASON, pa.string()),
            (Truth.DUP_OF, pa.string()),
            (Truth.DUP_TRANSFORM, pa.string()),
            (Truth.COPY_KIND, pa.string()),
            (Truth.BURST_OF, pa.string()),
            (Truth.MODE, pa.string()),
            (Truth.FORMAT, pa.string()),
        ]
    )
