"""``fercurate merge-affectnet``: top up under-represented classes with faces from an AffectNet source.

In the original project surprise was rare, so about 3,000 AffectNet faces were converted to 48x48
grayscale and added until every class held about a quarter of the data. This module does that as
a stage: it reads one manifest version and commits a new one with the added rows.

The source is never modified. It can be laid out in one of two ways:

* **official**: an images root (``Manually_Annotated_Images/<dir>/<name>.jpg``) plus a CSV with
  the columns of ``training.csv`` / ``validation.csv`` (``subDirectory_filePath, face_x, face_y,
  face_width, face_height, facial_landmarks, expression, valence, arousal``), one face box a row;
  expression codes 0-7 are classes, 8-10 (none, uncertain, no-face) are skipped and counted;
* **folders**: class folders (``anger/``, ``Surprised/``, ...), optionally under split folders.

The balancing plan counts the active rows per class (the whole version, or only ``train`` with
``splits="train"``), sets a target per class (the largest class, a fixed number, or a fraction of
the largest) and adds only what each class lacks. Candidates are taken in a seeded random order and
converted in rounds, so topping up 500 faces converts a little over 500 images, not the whole
source. A candidate is added only if it converts cleanly, passes the quality checks and is not a
near-duplicate of a dataset image or of another added face.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from fercurate.errors import DatasetError, InputError
from fercurate.history import class_by_split
from fercurate.images import MIN_SIDE, NEAR_UNIFORM_STD, encode_png, map_batches
from fercurate.manifest import (
    ACTIVE,
    KNOWN_CLASSES,
    SPLITS,
    Col,
    atomic_write,
    atomic_write_bytes,
    canonical_class,
    image_id_for,
)
from fercurate.progress import NullProgress, Progress
from fercurate.scan import IGNORED_NAMES, normalise_split
from fercurate.workspace import PixelCache, VersionInfo, Workspace, load_pixels

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

# Columns this stage adds to every row (null for rows that did not come from AffectNet).
SOURCE_PATH = "source_path"
SOURCE_LABEL = "source_label"
FACE_X, FACE_Y, FACE_WIDTH, FACE_HEIGHT = "face_x", "face_y", "face_width", "face_height"
BOX_COLUMNS: tuple[str, ...] = (FACE_X, FACE_Y, FACE_WIDTH, FACE_HEIGHT)
ADDED_COLUMNS: tuple[str, ...] = (SOURCE_PATH, SOURCE_LABEL, *BOX_COLUMNS)

SPLIT_MODES: tuple[str, ...] = ("stratified", "train")

#: A face box may lose this share of its area past the image edges (rounding in the annotations)
#: and still be used, clipped; a box that loses more lies outside the image and its row is skipped.
BOX_OUTSIDE_TOLERANCE = 0.10
#: Convert this many candidates per missing face in a round, so a few failures do not cost a round.
_ROUND_OVERSHOOT = 1.15
_ROUND_EXTRA = 4
_CONVERT_BATCH = 64

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


@dataclass(frozen=True)
class MergeResult:
    """The plan, what was done, and the version written (``None`` on a dry run).

    ``plan`` has one row per dataset class: ``before`` (active rows counted for balancing),
    ``target``, ``need``, ``available`` (usable candidates in the source), ``planned``
    (``min(need, available)``), ``examined`` (candidates converted), ``added`` and ``shortfall``.
    ``before`` / ``after`` are class x split tables of active rows with a ``total`` column.
    """

    version: VersionInfo | None
    parent: str
    dry_run: bool
    layout: str
    source: Path
    csvs: list[Path]
    image_size: int
    splits: str
    mapping: dict[str, str | None]
    plan: pd.DataFrame
    before: pd.DataFrame
    after: pd.DataFrame
    added_by_split: dict[str, int]
    skipped: dict[str, int]
    skipped_path: Path | None = None
    chart_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def added(self) -> int:
        return int(self.plan["added"].sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version.version if self.version else None,
            "path": self.version.path if self.version else None,
            "parent": self.parent,
            "dry_run": self.dry_run,
            "layout": self.layout,
            "source": str(self.source),
            "csvs": [str(p) for p in self.csvs],
            "image_size": self.image_size,
            "splits": self.splits,
            "mapping": self.mapping,
            "added": self.added,
            "added_by_split": self.added_by_split,
            "plan": _nested(self.plan),
            "before": _nested(self.before),
            "after": _nested(self.after),
            "skipped": self.skipped,
            "skipped_path": str(self.skipped_path) if self.skipped_path else None,
            "chart_path": str(self.chart_path) if self.chart_path else None,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def _nested(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {str(idx): {str(k): _plain(v) for k, v in row.items()} for idx, row in frame.iterrows()}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


def parse_mapping(text: str | None) -> dict[str, str]:
    """Parse ``--map surprised=surprise,anger=angry`` into ``{source class: dataset class}``.

    Raises:
        InputError: for an entry that is not ``SOURCE=CLASS`` or a source class given twice.
    """
    out: dict[str, str] = {}
    if not text:
        return out
    for entry in text.split(","):
        if not entry.strip():
            continue
        parts = [p.strip() for p in entry.split("=")]
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise InputError(
                f"--map entry '{entry.strip()}' is not SOURCE=CLASS; use e.g. --map surprised=surprise,anger=angry"
            )
        key = parts[0].lower()
        if key in out:
            raise InputError(f"--map names source class '{parts[0]}' twice; give each source class once")
        out[key] = parts[1]
    return out


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
    raise InputError(f"--target '{target}' is not 'equal' or a positive whole number of rows per class (e.g. 4000)")


def _check_params(params: MergeParams) -> int | None:
    target = parse_target(params.target)
    if params.target_fraction is not None:
        if target is not None:
            raise InputError("pass either --target N or --target-fraction, not both")
        if not params.target_fraction > 0:
            raise InputError(
                f"--target-fraction {params.target_fraction} must be above 0 (1.0 = up to the largest class)"
            )
    if params.splits not in SPLIT_MODES:
        raise InputError(f"--splits '{params.splits}' is not one of: {', '.join(SPLIT_MODES)}")
    if len(params.ratios) != 3 or min(params.ratios) < 0 or sum(params.ratios) <= 0:
        raise InputError(
            f"--ratios {','.join(map(str, params.ratios))} must be three non-negative train,val,test "
            "proportions with a positive sum, e.g. 80,10,10"
        )
    if not 0 <= params.margin <= 2:
        raise InputError(f"--margin {params.margin} must be between 0 and 2 (a fraction of the face box side)")
    if params.image_size is not None and params.image_size < 8:
        raise InputError(f"--image-size {params.image_size} is too small; use 8 or more (48 for FER)")
    return target


# --------------------------------------------------------------------------------------------
# Reading the source
# --------------------------------------------------------------------------------------------


@dataclass
class Source:
    """The candidate images of a source, before mapping and planning.

    ``rows`` columns: ``source_path`` (relative to SOURCE, POSIX), ``file`` (absolute),
    ``source_label`` (the source's class name, lower case) and the four nullable box columns.
    ``skipped`` holds the rows dropped while reading (``source_path``, ``source_label``,
    ``reason``, ``detail``).
    """

    root: Path
    layout: str
    csvs: list[Path]
    rows: pd.DataFrame
    skipped: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def read_source(source: Path, csv: Path | None = None) -> Source:
    """Find the layout of an AffectNet-style source and list its candidate images.

    Raises:
        DatasetError: for a missing or empty source, a CSV that lacks the official columns, or
            official CSV rows none of whose files can be found.
    """
    source = Path(source).expanduser()
    if source.is_file() and csv is None:
        source, csv = source.parent, source
    if not source.is_dir():
        raise DatasetError(f"AffectNet source {source} is not a folder; pass the AffectNet folder or its CSV")
    if csv is not None:
        csv = Path(csv).expanduser()
        if not csv.is_file() and (source / csv).is_file():
            csv = source / csv
        if not csv.is_file():
            raise DatasetError(f"--csv {csv} does not exist; pass the official training.csv or validation.csv")
        return _read_official(source, [csv])
    found = _official_csvs(source)
    if found:
        return _read_official(source, found)
    return _read_folders(source)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name.lower() not in IGNORED_NAMES
    )


def _csv_header(path: Path) -> list[str]:
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{path} is not a readable CSV: {exc}") from exc


def _official_csvs(source: Path) -> list[Path]:
    """CSVs in ``source`` that look like AffectNet's (two or more of the official column names)."""
    official = {c.lower() for c in CSV_COLUMNS}
    found = []
    for path in sorted(source.glob("*.csv")):
        if path.name.startswith("."):
            continue
        header = {c.strip().lower() for c in _csv_header(path)}
        if len(header & official) >= 2:
            found.append(path)
    return found


def _read_official(source: Path, csvs: list[Path]) -> Source:
    frames = []
    notes = []
    for path in csvs:
        header = _csv_header(path)
        by_lower = {c.strip().lower(): c for c in header}
        missing = [c for c in REQUIRED_CSV_COLUMNS if c.lower() not in by_lower]
        if missing:
            raise DatasetError(
                f"CSV {path.name} lacks column(s) {', '.join(missing)}; an AffectNet CSV has "
                f"{', '.join(CSV_COLUMNS)}"
            )
        usecols = [by_lower[c.lower()] for c in REQUIRED_CSV_COLUMNS]
        table = pd.read_csv(path, usecols=usecols, dtype=str, keep_default_na=False)
        table = table.rename(columns={by_lower[c.lower()]: c for c in REQUIRED_CSV_COLUMNS})[list(REQUIRED_CSV_COLUMNS)]
        notes.append(f"read {len(table)} rows from {path.name}")
        frames.append(table)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(REQUIRED_CSV_COLUMNS))
    rel = table["subDirectory_filePath"].astype(str).str.strip().str.replace("\\", "/", regex=False).str.lstrip("/")
    images_root = _images_root(source, csvs[0].parent, rel.tolist())

    codes = pd.to_numeric(table["expression"].str.strip(), errors="coerce")
    boxes = {c: pd.to_numeric(table[c].str.strip(), errors="coerce") for c in BOX_COLUMNS}
    box_frame = pd.DataFrame(boxes)
    no_box = box_frame.isna().all(axis=1)
    bad_box = box_frame.isna().any(axis=1) & ~no_box
    label = pd.Series(
        [AFFECTNET_CLASSES[int(c)] if c == c and float(c).is_integer() and 0 <= c < 8 else None for c in codes],
        dtype=object,
    )
    reason = pd.Series([None] * len(table), dtype=object)
    detail = pd.Series([None] * len(table), dtype=object)
    for code, why in SKIPPED_CODES.items():
        reason[codes == code] = why
    bad_code = label.isna() & reason.isna()
    reason[bad_code] = "bad_csv_row"
    detail[bad_code] = "expression '" + table.loc[bad_code, "expression"].astype(str) + "' is not a code 0-10"
    bad_path = rel.eq("") & reason.isna()
    reason[bad_path] = "bad_csv_row"
    detail[bad_path] = "empty subDirectory_filePath"
    bad_box &= reason.isna()
    reason[bad_box] = "bad_csv_row"
    detail[bad_box] = "face box values are not numbers"

    prefix = os.path.relpath(images_root, source)
    source_path = rel if prefix == "." else prefix.replace(os.sep, "/") + "/" + rel
    rows = pd.DataFrame(
        {
            SOURCE_PATH: source_path.astype(object),
            "file": [str(images_root / r) for r in rel],
            SOURCE_LABEL: label,
            **{c: pd.array([None if v != v else int(round(v)) for v in boxes[c]], dtype="Int32") for c in BOX_COLUMNS},
        }
    )
    keep = reason.isna()
    skipped = pd.DataFrame(
        {
            SOURCE_PATH: rows[SOURCE_PATH][~keep],
            SOURCE_LABEL: [
                AFFECTNET_CODES_ALL[int(c)] if c == c and float(c).is_integer() and 0 <= c <= 10 else None
                for c in codes[~keep]
            ],
            "reason": reason[~keep],
            "detail": detail[~keep],
        }
    )
    return Source(
        root=source,
        layout="official",
        csvs=list(csvs),
        rows=rows[keep].reset_index(drop=True),
        skipped=skipped.reset_index(drop=True),
        notes=notes + [f"images under {images_root}"],
    )


#: Names of all eleven expression codes, for the skipped-rows list.
AFFECTNET_CODES_ALL: tuple[str, ...] = (*AFFECTNET_CLASSES, "none", "uncertain", "no-face")


def _images_root(source: Path, csv_dir: Path, rel: list[str]) -> Path:
    """The folder the CSV's ``subDirectory_filePath`` values are relative to."""
    roots: list[Path] = []
    for base in (csv_dir, source):
        for name in IMAGE_ROOTS:
            candidate = (base / name).resolve() if name != "." else base.resolve()
            if candidate.is_dir() and candidate not in roots:
                roots.append(candidate)
    probe = [r for r in rel if r][:50]
    if not probe:
        return roots[0] if roots else source
    hits = [sum((root / r).is_file() for r in probe) for root in roots]
    best = int(np.argmax(hits)) if hits else 0
    if not hits or hits[best] == 0:
        raise DatasetError(
            f"none of the first {len(probe)} images named in the CSV (e.g. {probe[0]}) exist under "
            f"{', '.join(str(r) for r in roots) or source}; put the images in "
            f"{source / IMAGE_ROOTS[0]}"
        )
    return roots[best]


def _read_folders(source: Path) -> Source:
    root = source
    # step into single wrapper folders (AffectNet/affectnet/train/...)
    for _ in range(3):
        dirs = _visible_dirs(root)
        is_data = any(normalise_split(d.name) or _is_class_name(d.name) for d in dirs)
        if len(dirs) == 1 and not is_data:
            root = dirs[0]
        else:
            break
    dirs = _visible_dirs(root)
    if not dirs:
        raise DatasetError(
            f"AffectNet source {source} holds neither an official CSV (with {', '.join(REQUIRED_CSV_COLUMNS)}) "
            "nor class folders; pass --csv or point SOURCE at the class folders"
        )
    notes: list[str] = []
    split_dirs = [d for d in dirs if normalise_split(d.name)]
    if split_dirs:
        others = [d.name for d in dirs if not normalise_split(d.name)]
        if others:
            notes.append(f"folder(s) beside the split folders ignored: {', '.join(others)}")
        class_dirs = [c for d in split_dirs for c in _visible_dirs(d)]
    else:
        class_dirs = dirs
    paths, files, labels = [], [], []
    for class_dir in class_dirs:
        label = class_dir.name.strip().lower()
        for f in sorted(class_dir.rglob("*")):
            rel_parts = f.relative_to(class_dir).parts
            if not f.is_file() or any(p.startswith(".") or p.lower() in IGNORED_NAMES for p in rel_parts):
                continue
            paths.append(f.relative_to(source).as_posix())
            files.append(str(f.resolve()))
            labels.append(label)
    if not paths:
        raise DatasetError(f"the class folders of AffectNet source {source} hold no files")
    rows = pd.DataFrame(
        {
            SOURCE_PATH: pd.Series(paths, dtype=object),
            "file": files,
            SOURCE_LABEL: pd.Series(labels, dtype=object),
            **{c: pd.array([None] * len(paths), dtype="Int32") for c in BOX_COLUMNS},
        }
    )
    layout = "split-folders" if split_dirs else "class-folders"
    return Source(root=source, layout=layout, csvs=[], rows=rows, skipped=_empty_skipped(), notes=notes)


def _is_class_name(name: str) -> bool:
    return canonical_class(name) in KNOWN_CLASSES or name.strip().lower() in AFFECTNET_CLASSES


def _empty_skipped() -> pd.DataFrame:
    return pd.DataFrame({SOURCE_PATH: [], SOURCE_LABEL: [], "reason": [], "detail": []}, dtype=object)


# --------------------------------------------------------------------------------------------
# Mapping source classes onto the dataset's
# --------------------------------------------------------------------------------------------


def resolve_mapping(
    source_labels: Iterable[str], classes: Sequence[str], overrides: dict[str, str] | None = None
) -> dict[str, str | None]:
    """Map each source class to a dataset class, or to ``None`` when the dataset lacks it.

    By default names are folded (``anger`` -> ``angry``, ``surprised`` -> ``surprise``);
    ``overrides`` (source name -> dataset class) take precedence.

    Raises:
        InputError: for an override naming a class the dataset does not have, or a source class
            that is neither in the source nor an AffectNet class.
    """
    present = sorted({s for s in source_labels if s})
    known = set(present) | {canonical_class(s) for s in present} | set(AFFECTNET_CLASSES) | set(KNOWN_CLASSES)
    over: dict[str, str] = {}
    for key, value in (overrides or {}).items():
        k = key.strip().lower()
        v = canonical_class(value)
        if v not in classes:
            raise InputError(
                f"--map {key}={value}: '{value}' is not a class of the dataset; use one of: {', '.join(classes)}"
            )
        if k not in known and canonical_class(k) not in known:
            raise InputError(
                f"--map {key}={value}: '{key}' is not a class of the source; its classes are: "
                f"{', '.join(present) or '(none)'}"
            )
        over[k] = v
    out: dict[str, str | None] = {}
    for label in present:
        if label in over:
            out[label] = over[label]
        elif canonical_class(label) in over:
            out[label] = over[canonical_class(label)]
        else:
            folded = canonical_class(label)
            out[label] = folded if folded in classes else None
    return out


# --------------------------------------------------------------------------------------------
# Converting faces: a pure per-batch function
# --------------------------------------------------------------------------------------------


def face_crop_box(
    width: int, height: int, box: Box | None, margin: float
) -> tuple[float, float, float, float] | None:
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


def convert_faces(
    items: Sequence[tuple[str, Box | None]], size: int = 48, margin: float = 0.1
) -> list[dict[str, Any]]:
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
                {"ok": False, "reason": "corrupt", "detail": f"unreadable: {exc.strerror or exc}", "width": None,
                 "height": None}
            )
            continue
        out.append(convert_face(data, box, size, margin))
    return out


# --------------------------------------------------------------------------------------------
# Planning and placement
# --------------------------------------------------------------------------------------------


def class_targets(counts: dict[str, int], target: int | None, fraction: float | None) -> dict[str, int]:
    """The row count each class should reach: the largest class (``equal``), ``target``, or
    ``ceil(fraction * largest)``."""
    largest = max(counts.values(), default=0)
    if fraction is not None:
        goal = math.ceil(fraction * largest - 1e-9)
    elif target is not None:
        goal = target
    else:
        goal = largest
    return {c: goal for c in counts}


def allocate(n: int, ratios: Sequence[float]) -> list[int]:
    """Split ``n`` into whole parts proportional to ``ratios`` (largest remainder, ties to the first)."""
    total = float(sum(ratios))
    raw = [n * r / total for r in ratios]
    parts = [math.floor(v) for v in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - parts[i]), i))
    for i in order[: n - sum(parts)]:
        parts[i] += 1
    return parts


def _class_seed(seed: int, name: str) -> list[int]:
    # a per-class stream that does not depend on which other classes exist
    return [seed, int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")]


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def merge_affectnet(workspace: Workspace, params: MergeParams, progress: Progress | None = None) -> MergeResult:
    """Add converted AffectNet faces to a manifest version until each class reaches its target.

    Raises:
        DatasetError: for an unreadable source, missing CSV columns, or a source with none of the
            dataset's classes.
        InputError: for bad options (target, fraction, splits, ratios, margin, ``--map``).
        WorkspaceError: for a missing version or a busy workspace.
    """
    progress = progress or NullProgress()
    started = time.perf_counter()
    goal = _check_params(params)
    source = read_source(params.source, params.csv)
    with nullcontext() if params.dry_run else workspace.lock("fercurate merge-affectnet"):
        info, df = workspace.read(params.version)
        size = params.image_size or _dataset_image_size(workspace, info)
        act = df[df[Col.STATUS] == ACTIVE]
        classes = sorted(act[Col.LABEL].unique().tolist())
        mapping = resolve_mapping(source.rows[SOURCE_LABEL].tolist(), classes, params.mapping)
        if not mapping:
            reasons = ", ".join(f"{k} {v}" for k, v in _skip_counts(source.skipped).items()) or "no rows"
            raise DatasetError(
                f"AffectNet source {source.root} has no labelled images to use ({reasons}); "
                "check that the CSV's expression codes are 0-7"
            )
        if not any(mapping.values()):
            found = ", ".join(sorted(mapping)) or "(none)"
            raise DatasetError(
                f"AffectNet source {source.root} has classes {found}, none of which is a dataset class "
                f"({', '.join(classes)}); pass --map to say which source class is which, e.g. "
                f"--map {next(iter(sorted(mapping)), 'surprised')}={classes[0] if classes else 'surprise'}"
            )
        cands, skipped = _candidates(source, mapping, set(df[Col.IMAGE_ID]))
        scope = act if params.splits == "stratified" else act[act[Col.SPLIT] == "train"]
        counts = {c: int((scope[Col.LABEL] == c).sum()) for c in classes}
        targets = class_targets(counts, goal, params.target_fraction)
        needs = {c: max(0, targets[c] - counts[c]) for c in classes}
        order = {
            c: cands.index[cands["label"] == c][
                np.random.default_rng(_class_seed(params.seed, c)).permutation(int((cands["label"] == c).sum()))
            ].tolist()
            for c in classes
        }
        plan = pd.DataFrame(
            {
                "before": counts,
                "target": targets,
                "need": needs,
                "available": {c: len(order[c]) for c in classes},
            }
        )
        plan["planned"] = plan[["need", "available"]].min(axis=1)
        plan.index.name = "class"
        notes = list(source.notes)
        before = class_by_split(df)
        if params.dry_run:
            return _dry_run_result(params, info, source, size, mapping, plan, before, skipped, notes, started)

        accepted, rejected, examined = _convert_in_rounds(
            workspace, info, act, cands, order, needs, size, params, progress
        )
        skipped = pd.concat([skipped, rejected], ignore_index=True)
        plan["examined"] = pd.Series(examined)
        plan["added"] = pd.Series({c: len(accepted[c]) for c in classes})
        plan["shortfall"] = plan["need"] - plan["added"]
        for c in classes:
            if plan.loc[c, "shortfall"] > 0:
                notes.append(
                    f"{c}: added {plan.loc[c, 'added']} of the {plan.loc[c, 'need']} needed; the source has no "
                    "more usable images of it"
                )
        new = _new_rows(workspace, cands, accepted, size, params)
        merged = _append_rows(df, new)
        version = workspace.commit(
            merged,
            stage="merge-affectnet",
            parent=info,
            params={**asdict(params), "image_size": size, "layout": source.layout, "csvs": source.csvs},
            extra={
                "image_size": size,
                "merge_affectnet": {
                    "added": int(len(new)),
                    "plan": _nested(plan),
                    "skipped": _skip_counts(skipped),
                },
            },
        )
        report = workspace.report_dir(version.version)
        skipped_path = report / "merge_skipped.parquet"
        frame = skipped.astype(object).reset_index(drop=True)
        atomic_write(skipped_path, lambda tmp: frame.to_parquet(tmp, index=False))
        after = class_by_split(merged)
        chart_path = report / "merge_chart.png"
        _chart(before, after, chart_path, f"merge-affectnet {info.version} -> {version.version}")
    return MergeResult(
        version=version,
        parent=info.version,
        dry_run=False,
        layout=source.layout,
        source=source.root,
        csvs=source.csvs,
        image_size=size,
        splits=params.splits,
        mapping=mapping,
        plan=plan,
        before=before,
        after=after,
        added_by_split={s: int((new[Col.SPLIT] == s).sum()) for s in SPLITS},
        skipped=_skip_counts(skipped),
        skipped_path=skipped_path,
        chart_path=chart_path,
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def _dataset_image_size(workspace: Workspace, info: VersionInfo) -> int:
    scan = workspace.find_stage("scan", info.version)
    for record in (info, scan):
        if record is not None and isinstance(record.extra.get("image_size"), int):
            return int(record.extra["image_size"])
    return 48


def _candidates(
    source: Source, mapping: dict[str, str | None], existing_ids: set[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The usable rows of the source with their dataset class, and the rows dropped on the way."""
    rows = source.rows.copy()
    rows["label"] = rows[SOURCE_LABEL].map(mapping).astype(object)
    rows[Col.IMAGE_ID] = [image_id_for(f"{SOURCE_AFFECTNET}:{p}") for p in rows[SOURCE_PATH]]
    reason = pd.Series([None] * len(rows), dtype=object, index=rows.index)
    reason[rows[Col.IMAGE_ID].duplicated()] = "repeated_row"
    reason[rows[Col.IMAGE_ID].isin(existing_ids) & reason.isna()] = "already_in_dataset"
    reason[rows["label"].isna() & reason.isna()] = "unmapped_class"
    drop = reason.notna()
    dropped = pd.DataFrame(
        {
            SOURCE_PATH: rows.loc[drop, SOURCE_PATH],
            SOURCE_LABEL: rows.loc[drop, SOURCE_LABEL],
            "reason": reason[drop],
            "detail": [f"class '{s}' is not in the dataset" if r == "unmapped_class" else None
                       for s, r in zip(rows.loc[drop, SOURCE_LABEL], reason[drop], strict=True)],
        }
    )
    skipped = pd.concat([source.skipped, dropped], ignore_index=True) if len(dropped) else source.skipped
    # sort so the seeded order does not depend on the order of CSV rows or of directory listings
    kept = rows[~drop].sort_values(SOURCE_PATH, kind="stable").reset_index(drop=True)
    return kept, skipped


def _dedup_view(pixels: np.ndarray, size: int) -> np.ndarray:
    """The dedup machinery works on 48x48 images."""
    if size == 48 or len(pixels) == 0:
        return pixels.reshape(-1, 48, 48) if len(pixels) == 0 else pixels
    return np.stack(
        [np.asarray(Image.fromarray(p).resize((48, 48), Image.Resampling.LANCZOS), dtype=np.uint8) for p in pixels]
    )


def _convert_in_rounds(
    workspace: Workspace,
    info: VersionInfo,
    act: pd.DataFrame,
    cands: pd.DataFrame,
    order: dict[str, list[int]],
    needs: dict[str, int],
    size: int,
    params: MergeParams,
    progress: Progress,
) -> tuple[dict[str, list[dict[str, Any]]], pd.DataFrame, dict[str, int]]:
    """Convert candidates class by class in seeded order until each need is met.

    A candidate is accepted when it converts, passes the quality checks, is not a near-duplicate of
    an active dataset image, nor of a face accepted before it. Rounds convert a little more than the
    remaining need, so a few failures rarely cost another round.

    Returns:
        The accepted records per class (with ``index`` into ``cands``), the rejected rows and the
        number of candidates examined per class.
    """
    from fercurate.dedup import find_duplicate_pairs, match_against

    accepted: dict[str, list[dict[str, Any]]] = {c: [] for c in order}
    examined = {c: 0 for c in order}
    rejected: list[dict[str, Any]] = []
    if not any(needs[c] > 0 and order[c] for c in order):
        return accepted, pd.DataFrame(rejected, columns=[SOURCE_PATH, SOURCE_LABEL, "reason", "detail"]), examined
    rows = cands.to_dict("records")  # plain dicts: row access in the loops below is hot
    dataset = _dedup_view(load_pixels(workspace, info, act, size, progress), size)
    dataset_ids = act[Col.IMAGE_ID].tolist()
    taken: list[np.ndarray] = []  # accepted faces (dedup view), in acceptance order
    taken_ids: list[str] = []
    cache = PixelCache(workspace, size)
    convert = functools.partial(convert_faces, size=size, margin=params.margin)
    round_no = 0
    while True:
        batch: list[int] = []
        for c in sorted(order):
            left = needs[c] - len(accepted[c])
            if left <= 0 or examined[c] >= len(order[c]):
                continue
            take = math.ceil(left * _ROUND_OVERSHOOT) + _ROUND_EXTRA
            batch.extend(order[c][examined[c] : examined[c] + take])
            examined[c] = min(len(order[c]), examined[c] + take)
        if not batch:
            break
        round_no += 1
        progress.start(f"Converting AffectNet faces (round {round_no})", len(batch))
        items = [(rows[i]["file"], _box(rows[i])) for i in batch]
        records = map_batches(
            convert, items, batch_size=_CONVERT_BATCH, workers=params.workers, progress=progress.advance
        )
        ok = [k for k, r in enumerate(records) if r["ok"]]
        for k, r in enumerate(records):
            if not r["ok"]:
                rejected.append(_rejection(rows[batch[k]], r["reason"], r["detail"]))
        faces = np.stack([np.frombuffer(records[k]["pixels"], np.uint8).reshape(size, size) for k in ok]) if ok else (
            np.zeros((0, size, size), np.uint8)
        )
        query = _dedup_view(faces, size)
        of_dataset = _best_matches(match_against, query, dataset)
        of_taken = _best_matches(match_against, query, np.stack(taken)) if taken else {}
        partners: dict[int, set[int]] = {}
        if len(query) > 1:
            for a, b in find_duplicate_pairs(query)[["i", "j"]].itertuples(index=False):
                partners.setdefault(int(a), set()).add(int(b))
                partners.setdefault(int(b), set()).add(int(a))
        kept_here: set[int] = set()
        for q, k in enumerate(ok):
            row = rows[batch[k]]
            c = row["label"]
            if len(accepted[c]) >= needs[c]:
                continue  # spare: converted, fine, not needed
            if q in of_dataset:
                ref, sim = of_dataset[q]
                rejected.append(_rejection(row, "duplicate_of_dataset", f"{dataset_ids[ref]} (similarity {sim:.3f})"))
                continue
            if q in of_taken:
                ref, sim = of_taken[q]
                rejected.append(_rejection(row, "duplicate_within_source", f"{taken_ids[ref]} (similarity {sim:.3f})"))
                continue
            twins = partners.get(q, set()) & kept_here
            if twins:
                twin = rows[batch[ok[min(twins)]]][Col.IMAGE_ID]
                rejected.append(_rejection(row, "duplicate_within_source", str(twin)))
                continue
            kept_here.add(q)
            accepted[c].append({"index": batch[k], **records[k]})
        if kept_here:
            new = sorted(kept_here)
            taken.extend(query[new])
            taken_ids.extend(rows[batch[ok[q]]][Col.IMAGE_ID] for q in new)
            cache.add([records[ok[q]]["sha256"] for q in new], faces[new])
    frame = pd.DataFrame(rejected, columns=[SOURCE_PATH, SOURCE_LABEL, "reason", "detail"])
    return accepted, frame, examined


def _box(row: dict[str, Any]) -> Box | None:
    values = [row[c] for c in BOX_COLUMNS]
    if any(pd.isna(v) for v in values):
        return None
    return (int(values[0]), int(values[1]), int(values[2]), int(values[3]))


def _rejection(row: dict[str, Any], reason: str, detail: str | None) -> dict[str, Any]:
    return {SOURCE_PATH: row[SOURCE_PATH], SOURCE_LABEL: row[SOURCE_LABEL], "reason": reason, "detail": detail}


def _best_matches(match_against: Any, query: np.ndarray, reference: np.ndarray) -> dict[int, tuple[int, float]]:
    if len(query) == 0 or len(reference) == 0:
        return {}
    found = match_against(query, reference)
    return {
        int(q): (int(r), float(s))
        for q, r, s in found[["query", "reference", "similarity"]].itertuples(index=False)
    }


def _new_rows(
    workspace: Workspace,
    cands: pd.DataFrame,
    accepted: dict[str, list[dict[str, Any]]],
    size: int,
    params: MergeParams,
) -> pd.DataFrame:
    """Store the accepted faces and build their manifest rows, placed into splits per class."""
    rows = cands.to_dict("records")
    records: list[tuple[str, dict[str, Any]]] = []
    for c in sorted(accepted):
        faces = accepted[c]
        if params.splits == "train":
            places = ["train"] * len(faces)
        else:
            n_train, n_val, n_test = allocate(len(faces), params.ratios)
            slots = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
            shuffle = np.random.default_rng([*_class_seed(params.seed, c), 1]).permutation(len(faces))
            places = [slots[int(p)] for p in shuffle]
        records.extend(zip(places, faces, strict=True))
    ids, paths, splits, labels, shas, src_paths, src_labels = [], [], [], [], [], [], []
    boxes: dict[str, list[Any]] = {c: [] for c in BOX_COLUMNS}
    for split, rec in records:
        row = rows[rec["index"]]
        # keep the store inside the workspace even for a CSV whose images lie outside SOURCE
        stem = "/".join(p for p in Path(os.path.splitext(row[SOURCE_PATH])[0]).parts if p not in ("..", ".", "/"))
        # the sha in the name keeps stored files immutable: another margin or size is another file
        value, file = workspace.store_path(f"{SOURCE_AFFECTNET}/{stem}_{rec['sha256'][:10]}.png")
        if not file.exists():
            atomic_write_bytes(file, rec["png"])
        ids.append(row[Col.IMAGE_ID])
        paths.append(value)
        splits.append(split)
        labels.append(row["label"])
        shas.append(rec["sha256"])
        src_paths.append(row[SOURCE_PATH])
        src_labels.append(row[SOURCE_LABEL])
        for col in BOX_COLUMNS:
            boxes[col].append(None if pd.isna(row[col]) else int(row[col]))
    n = len(ids)
    return pd.DataFrame(
        {
            Col.IMAGE_ID: pd.Series(ids, dtype=object),
            Col.PATH: pd.Series(paths, dtype=object),
            Col.SPLIT: pd.Series(splits, dtype=object),
            Col.LABEL: pd.Series(labels, dtype=object),
            Col.SPLIT_ORIGINAL: pd.Series(splits, dtype=object),
            Col.LABEL_ORIGINAL: pd.Series(labels, dtype=object),
            Col.SOURCE: pd.Series([SOURCE_AFFECTNET] * n, dtype=object),
            Col.STATUS: pd.Series([ACTIVE] * n, dtype=object),
            Col.REASON: pd.Series([None] * n, dtype=object),
            Col.WIDTH: pd.array([size] * n, dtype="Int32"),
            Col.HEIGHT: pd.array([size] * n, dtype="Int32"),
            Col.MODE: pd.Series(["L"] * n, dtype=object),
            Col.SHA256: pd.Series(shas, dtype=object),
            SOURCE_PATH: pd.Series(src_paths, dtype=object),
            SOURCE_LABEL: pd.Series(src_labels, dtype=object),
            **{c: pd.array(boxes[c], dtype="Int32") for c in BOX_COLUMNS},
        }
    )


def _append_rows(df: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``new`` appended: new columns null for old rows, other stages' columns null for new."""
    df = df.copy()
    for col in ADDED_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series([None] * len(df), dtype=new[col].dtype, index=df.index)
    new = new.copy()
    for col in df.columns:
        if col in new.columns:
            continue
        dtype = df[col].dtype
        # plain int and bool columns cannot hold a null: give them pandas' nullable types first
        if pd.api.types.is_integer_dtype(dtype) and not isinstance(dtype, pd.api.extensions.ExtensionDtype):
            df[col] = df[col].astype(f"Int{dtype.itemsize * 8}")
        elif pd.api.types.is_bool_dtype(dtype) and not isinstance(dtype, pd.api.extensions.ExtensionDtype):
            df[col] = df[col].astype("boolean")
        try:
            new[col] = pd.Series([None] * len(new), dtype=df[col].dtype)
        except (TypeError, ValueError):
            new[col] = pd.Series([None] * len(new), dtype=object)
    if new.empty:
        return df
    return pd.concat([df, new[list(df.columns)]], ignore_index=True)


def _skip_counts(skipped: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in Counter(skipped["reason"]).most_common()}


def _dry_run_result(
    params: MergeParams,
    info: VersionInfo,
    source: Source,
    size: int,
    mapping: dict[str, str | None],
    plan: pd.DataFrame,
    before: pd.DataFrame,
    skipped: pd.DataFrame,
    notes: list[str],
    started: float,
) -> MergeResult:
    """The plan alone: what would be added where, assuming every planned candidate is usable."""
    plan = plan.copy()
    plan["examined"] = 0
    plan["added"] = 0
    plan["shortfall"] = plan["need"] - plan["planned"]
    after = before.drop(columns="total").copy()
    for s in SPLITS:
        if s not in after.columns:
            after[s] = 0
    after = after.reindex(index=plan.index, fill_value=0)[list(SPLITS)]
    for c, n in plan["planned"].items():
        parts = [n, 0, 0] if params.splits == "train" else allocate(int(n), params.ratios)
        for s, k in zip(SPLITS, parts, strict=True):
            after.loc[c, s] += k
    after["total"] = after.sum(axis=1)
    notes = [*notes, "dry run: nothing was converted or written; 'after' assumes every planned image is usable"]
    return MergeResult(
        version=None,
        parent=info.version,
        dry_run=True,
        layout=source.layout,
        source=source.root,
        csvs=source.csvs,
        image_size=size,
        splits=params.splits,
        mapping=mapping,
        plan=plan,
        before=before,
        after=after,
        added_by_split={s: 0 for s in SPLITS},
        skipped=_skip_counts(skipped),
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def _chart(before: pd.DataFrame, after: pd.DataFrame, path: Path, title: str) -> None:
    """Bars of active rows per class before (plain) and after (hatched), stacked by split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    classes = sorted(set(before.index) | set(after.index))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(classes) + 3), 4.2), dpi=100)
    x = np.arange(len(classes))
    colours = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
    for offset, table, hatch in ((-0.2, before, ""), (0.2, after, "//")):
        bottom = np.zeros(len(classes))
        for s in SPLITS:
            values = np.array(
                [float(table.loc[c, s]) if c in table.index and s in table.columns else 0.0 for c in classes]
            )
            ax.bar(x + offset, values, 0.38, bottom=bottom, color=colours[s], hatch=hatch, edgecolor="white")
            bottom += values
    ax.set_xticks(x, classes)
    ax.set_ylabel("active rows")
    ax.set_title(title)
    handles = [Patch(color=colours[s], label=s) for s in SPLITS]
    handles += [Patch(facecolor="white", edgecolor="grey", label="before"),
                Patch(facecolor="white", edgecolor="grey", hatch="//", label="after")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
