"""The options of ``fercurate merge-affectnet`` and the AffectNet source format's constants."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fercurate.errors import InputError
from fercurate.manifest import Col, stage_columns

SOURCE_AFFECTNET = "affectnet"

#: AffectNet's expression codes 0-7, in code order.
AFFECTNET_CLASSES: tuple[str, ...] = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
#: Codes 8-10 carry no usable expression; their rows are skipped with these reasons.
SKIPPED_CODES: dict[int, str] = {8: "expression_none", 9: "expression_uncertain", 10: "expression_no_face"}

#: The columns of the official CSVs, in their order.
CSV_COLUMNS: tuple[str, ...] = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)
#: The ones merge-affectnet reads (landmarks, valence and arousal are not needed).
REQUIRED_CSV_COLUMNS: tuple[str, ...] = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "expression",
)
#: Where the official release keeps the images, relative to the CSV's folder or to SOURCE.
IMAGE_ROOTS: tuple[str, ...] = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images", ".")

#: The face box columns, in the order of a box tuple (x, y, width, height).
BOX_COLUMNS: tuple[str, ...] = (Col.FACE_X, Col.FACE_Y, Col.FACE_WIDTH, Col.FACE_HEIGHT)
#: Columns this stage adds to every row (null for rows that did not come from AffectNet).
ADDED_COLUMNS: tuple[str, ...] = tuple(c.name for c in stage_columns("merge-affectnet"))

SPLIT_MODES: tuple[str, ...] = ("stratified", "train")

#: A face box may lose this share of its area past the image edges (rounding in the annotations)
#: and still be used, clipped; a box that loses more lies outside the image and its row is skipped.
BOX_OUTSIDE_TOLERANCE = 0.10

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class MergeParams:
    """Options of ``fercurate merge-affectnet`` (the CLI's defaults point here).

    Attributes:
        source: the AffectNet folder (official layout or class folders), or its CSV.
        csv: the official CSV; default: every CSV in ``source`` with the official columns.
        version: the manifest version to merge into; default: the latest.
        target: ``"equal"`` (every class up to the largest) or a whole number of rows per class.
        target_fraction: every class up to this fraction of the largest (overrides ``target``).
        margin: added around the face box on each side, as a fraction of the box's side.
        mapping: source class -> dataset class overrides (``{"surprised": "surprise"}``).
        splits: ``"stratified"`` (new rows go to train/val/test by ``ratios``, per class) or
            ``"train"`` (new rows go to train only, balancing the train split).
        ratios: train/val/test proportions for ``"stratified"``.
        seed: fixes which candidates are taken and where they are placed.
        dry_run: compute and return the plan; write nothing.
        image_size: side of the stored faces; default: the dataset's (from its scan).
        workers: conversion processes; default: all CPUs.
    """

    source: Path
    csv: Path | None = None
    version: str | None = None
    target: str = "equal"
    target_fraction: float | None = None
    margin: float = 0.1
    mapping: dict[str, str] | None = None
    splits: str = "stratified"
    ratios: tuple[float, float, float] = (80, 10, 10)
    seed: int = 0
    dry_run: bool = False
    image_size: int | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        """Raise :class:`InputError` naming the first option out of its range."""
        target = parse_target(self.target)
        if self.target_fraction is not None:
            if target is not None:
                raise InputError(
                    "pass either target N or target_fraction, not both", param=("target", "target_fraction")
                )
            if not self.target_fraction > 0:
                raise InputError(
                    f"target_fraction {self.target_fraction} must be above 0 (1.0 = up to the largest class)",
                    param="target_fraction",
                )
        if self.splits not in SPLIT_MODES:
            raise InputError(f"splits '{self.splits}' is not one of: {', '.join(SPLIT_MODES)}", param="splits")
        if len(self.ratios) != 3 or min(self.ratios) < 0 or sum(self.ratios) <= 0:
            raise InputError(
                f"ratios {','.join(map(str, self.ratios))} must be three non-negative train,val,test "
                "proportions with a positive sum, e.g. 80,10,10",
                param="ratios",
            )
        if not 0 <= self.margin <= 2:
            raise InputError(
                f"margin {self.margin} must be between 0 and 2 (a fraction of the face box side)", param="margin"
            )
        if self.image_size is not None and self.image_size < 8:
            raise InputError(
                f"image_size {self.image_size} is too small; use 8 or more (48 for FER)", param="image_size"
            )


def parse_target(target: str | int) -> int | None:
    """``None`` for ``"equal"``, else the per-class target as a positive int.

    Raises:
        InputError: for anything else.
    """
    text = str(target).strip().lower()
    if text == "equal":
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise InputError(
        f"target '{target}' is not 'equal' or a positive whole number of rows per class (e.g. 4000)", param="target"
    )


#: Names of all eleven expression codes, for the skipped-rows list.
AFFECTNET_CODES_ALL: tuple[str, ...] = (*AFFECTNET_CLASSES, "none", "uncertain", "no-face")
