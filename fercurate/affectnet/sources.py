"""Reading an AffectNet source: the official layout (images + CSV with face boxes) or class folders."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fercurate.affectnet.params import (
    AFFECTNET_CLASSES,
    AFFECTNET_CODES_ALL,
    BOX_COLUMNS,
    CSV_COLUMNS,
    IMAGE_ROOTS,
    REQUIRED_CSV_COLUMNS,
    SKIPPED_CODES,
)
from fercurate.errors import DatasetError, InputError
from fercurate.manifest import (
    KNOWN_CLASSES,
    Col,
    canonical_class,
)
from fercurate.scan import IGNORED_NAMES, normalise_split

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
                f"mapping entry '{entry.strip()}' is not SOURCE=CLASS; use e.g. surprised=surprise,anger=angry",
                param="mapping",
            )
        key = parts[0].lower()
        if key in out:
            raise InputError(
                f"mapping names source class '{parts[0]}' twice; give each source class once", param="mapping"
            )
        out[key] = parts[1]
    return out


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
            raise DatasetError(
                f"csv {csv} does not exist; pass the official training.csv or validation.csv", param="csv"
            )
        return _read_official(source, [csv])
    found = _official_csvs(source)
    if found:
        return _read_official(source, found)
    return _read_folders(source)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name.lower() not in IGNORED_NAMES
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
                f"CSV {path.name} lacks column(s) {', '.join(missing)}; an AffectNet CSV has {', '.join(CSV_COLUMNS)}"
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
            Col.SOURCE_PATH: source_path.astype(object),
            "file": [str(images_root / r) for r in rel],
            Col.SOURCE_LABEL: label,
            **{c: pd.array([None if v != v else int(round(v)) for v in boxes[c]], dtype="Int32") for c in BOX_COLUMNS},
        }
    )
    keep = reason.isna()
    skipped = pd.DataFrame(
        {
            Col.SOURCE_PATH: rows[Col.SOURCE_PATH][~keep],
            Col.SOURCE_LABEL: [
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
            "nor class folders; pass csv or point source at the class folders",
            param=("csv", "source"),
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
            Col.SOURCE_PATH: pd.Series(paths, dtype=object),
            "file": files,
            Col.SOURCE_LABEL: pd.Series(labels, dtype=object),
            **{c: pd.array([None] * len(paths), dtype="Int32") for c in BOX_COLUMNS},
        }
    )
    layout = "split-folders" if split_dirs else "class-folders"
    return Source(root=source, layout=layout, csvs=[], rows=rows, skipped=_empty_skipped(), notes=notes)


def _is_class_name(name: str) -> bool:
    return canonical_class(name) in KNOWN_CLASSES or name.strip().lower() in AFFECTNET_CLASSES


#: The columns of the skipped-rows table (``merge_skipped.parquet``).
SKIPPED_COLUMNS: tuple[str, ...] = (Col.SOURCE_PATH, Col.SOURCE_LABEL, "reason", "detail")


def _empty_skipped() -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in SKIPPED_COLUMNS}, dtype=object)


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
                f"mapping {key}={value}: '{value}' is not a class of the dataset; use one of: {', '.join(classes)}",
                param="mapping",
            )
        if k not in known and canonical_class(k) not in known:
            raise InputError(
                f"mapping {key}={value}: '{key}' is not a class of the source; its classes are: "
                f"{', '.join(present) or '(none)'}",
                param="mapping",
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
