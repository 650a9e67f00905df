"""The options of ``fercurate dedup`` and of the matching functions, with their ranges."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fercurate.errors import InputError

#: What ``--conflicts`` accepts (see :mod:`fercurate.dedup` for what each does).
CONFLICT_MODES: tuple[str, ...] = ("remove-all", "keep-majority", "keep-all")

#: Inclusive ranges of the numeric options, checked when :class:`DedupParams` is made.
RANGES: dict[str, tuple[float, float]] = {
    "radius": (0, 32),
    "shift_radius": (0, 16),
    "detail_radius": (0, 128),
    "min_similarity": (0.0, 1.0),
    "max_residual": (0.0, 16.0),
    "max_shift": (0, 4),
    "max_zoom": (0.0, 0.2),
    "recrop_radius": (0, 16),
}

#: ``fercurate dedup --photos``: the tolerances measured on real FER photos (docs/dedup.md, "Real FER
#: data"): re-crops up to a zoom of 1 +- 0.2, and a residual limit of 0.3 (stock watermarks, tone
#: curves, re-sampling). Not the defaults: the demo's drawn faces have burst frames (another,
#: faint expression) that pass these.
PHOTO_TOLERANCES: dict[str, float] = {"max_zoom": 0.2, "max_residual": 0.3}


@dataclass(frozen=True)
class DedupParams:
    """Options of ``fercurate dedup`` (the CLI's defaults point here).

    The defaults were chosen by measuring precision and recall on planted same-photo copies
    (re-encoded, brightness, contrast, resized, shifted, exact) among hard negatives; see
    ``docs/dedup.md`` for the numbers.

    Attributes:
        version: the manifest version to deduplicate; None for the latest.
        hasher: which perceptual hash is stored (column named after it) and searched within ``radius``.
        radius: Hamming radius of the plain hash search: generous, the verifier keeps precision.
        shift_radius: Hamming radius of the shift-compensated DCT hash search (finds shifted copies).
        detail_radius: largest Hamming distance (of 255 bits) between the aligned DCT detail hashes of a
            candidate pair; a cheap filter in front of the pixel-level check.
        min_similarity: smallest normalised cross-correlation (best over shifts) of a duplicate pair.
        max_residual: largest unexplained share of any 8x8 window once the pair is aligned and
            brightness and contrast fitted, relative to an average window: a changed mouth or eyes
            (another frame of the same person) fail it although their global NCC is high. 16
            switches the check off.
        max_shift: largest shift in pixels (each axis) that copies may have.
        max_zoom: re-cropped copies (another face box: zoom 1 +- max_zoom, shifts up to ~4 pixels)
            are searched and verified over zoom too (0.15 for real FER data); 0, the default for
            now, switches the re-crop search off: on the demo's drawn faces it links other photos
            of one person (docs/dedup.md).
        recrop_radius: Hamming radius of the re-crop search (moved, smaller windows of one image
            against the other's central window).
        mirror: also find horizontally flipped copies.
        related: also link other frames of one sitting (the same person, backdrop and light, another
            expression): never removed, grouped in ``related_group`` for ``split --group-by related``.
        conflicts: what to do with groups whose members carry different labels.
        dry_run: report only; write no version.
        image_size: side of the cached grayscale images dedup works on.
    """

    version: str | None = None
    hasher: str = "phash"
    radius: int = 12
    shift_radius: int = 4
    detail_radius: int = 48
    min_similarity: float = 0.90
    max_residual: float = 0.15
    max_shift: int = 2
    max_zoom: float = 0.0
    recrop_radius: int = 6
    mirror: bool = False
    related: bool = True
    conflicts: str = "remove-all"
    dry_run: bool = False
    image_size: int = 48

    def __post_init__(self) -> None:
        """Raise :class:`InputError` naming the first option out of its range."""
        from fercurate.dedup.hashers import HASHERS

        if self.hasher not in HASHERS:
            raise InputError(f"hasher '{self.hasher}' is not one of: {', '.join(HASHERS)}", param="hasher")
        if self.conflicts not in CONFLICT_MODES:
            raise InputError(
                f"conflicts '{self.conflicts}' is not one of: {', '.join(CONFLICT_MODES)}", param="conflicts"
            )
        for name, (lo, hi) in RANGES.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise InputError(f"{name} {value} is out of range; use a value from {lo:g} to {hi:g}", param=name)
        if self.image_size < 16:
            raise InputError(
                f"image_size {self.image_size} is too small; use 16 or more (48 for FER)", param="image_size"
            )
        if self.image_size - 2 * self.max_shift < 8:
            raise InputError(
                f"max_shift {self.max_shift} is too large for {self.image_size}-pixel images", param="max_shift"
            )


#: What decides whether two images are duplicates (not which version, what to do with a group, or
#: whether to write): the fields :func:`matching_params` takes from a recorded dedup run.
MATCHING_FIELDS: tuple[str, ...] = (
    "hasher",
    "radius",
    "shift_radius",
    "detail_radius",
    "min_similarity",
    "max_residual",
    "max_shift",
    "max_zoom",
    "recrop_radius",
    "mirror",
    "image_size",
)


def matching_params(record: Mapping[str, Any] | None) -> DedupParams:
    """The tolerances a dedup run recorded (its version's ``params``), so that another stage matches
    images the way that run did: a dataset deduplicated with ``--photos`` has its re-crops looked for
    too. Fields the record lacks (an older version's) and a missing record keep the defaults."""
    return DedupParams(**{k: record[k] for k in MATCHING_FIELDS if record and k in record})


def describe(params: DedupParams) -> str:
    """The matching options that differ from the defaults, spelt as ``fercurate dedup`` takes them."""
    default = DedupParams()
    parts = []
    for name in MATCHING_FIELDS:
        value = getattr(params, name)
        if value == getattr(default, name):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            parts.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(parts) or "the defaults"
