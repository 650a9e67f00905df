"""``fercurate export``: materialise a manifest version as folders or as a FER2013-style CSV.

A CSV export of a version with annotator votes also writes ``fer2013new.csv`` (FER+'s layout, same
rows in the same order) beside ``fer2013.csv``.

The output is built in a temporary sibling folder and renamed into place, so an interrupted export
never leaves a half-written DEST.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fercurate.errors import InputError
from fercurate.images import load_gray_files
from fercurate.manifest import FER2013_CLASSES, SOURCE_ORIGINAL, Col, VoteCol, active, atomic_write, temp_dir
from fercurate.progress import NullProgress, Progress
from fercurate.reports import to_dict
from fercurate.workspace import PixelCache, Workspace

MODES = ("copy", "hardlink", "symlink")
FORMATS = ("folders", "csv")
CSV_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
#: the file a CSV export writes into a folder DEST
CSV_NAME = "fer2013.csv"


@dataclass(frozen=True)
class ExportParams:
    """Options of ``fercurate export``."""

    version: str
    dest: Path
    mode: str = "copy"
    format: str = "folders"
    overwrite: bool = False
    image_size: int = 48

    def __post_init__(self) -> None:
        """Raise :class:`InputError` naming the first value that is not accepted."""
        if self.mode not in MODES:
            raise InputError(f"mode '{self.mode}' is not one of: {', '.join(MODES)}", param="mode")
        if self.format not in FORMATS:
            raise InputError(f"format '{self.format}' is not one of: {', '.join(FORMATS)}", param="format")


@dataclass(frozen=True)
class ExportResult:
    version: str
    dest: Path
    format: str
    files: int
    by_split: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def export(workspace: Workspace, params: ExportParams, progress: Progress | None = None) -> ExportResult:
    """Write the active rows of a version to ``params.dest``.

    With ``format="folders"`` DEST is a folder. With ``format="csv"`` DEST is the CSV file itself when
    it ends in ``.csv`` or is an existing file, and otherwise a folder that gets ``fer2013.csv``
    (:func:`csv_target`). The result's ``dest`` is what was written: the folder, or the CSV file.

    Raises:
        InputError: for an unknown mode or format, a non-empty DEST without overwrite, or (CSV) a
            class that has no FER2013 emotion code.
    """
    progress = progress or NullProgress()
    dest = Path(params.dest)
    csv_file = csv_target(dest) if params.format == "csv" else None
    if csv_file is not None and csv_file == dest:
        if dest.exists() and not params.overwrite:
            raise InputError(
                f"dest {dest} exists; pass overwrite to replace it or choose another file name",
                param=("dest", "overwrite"),
            )
    elif dest.exists() and not dest.is_dir():
        raise InputError(f"dest {dest} exists and is not a folder; choose another path", param="dest")
    elif dest.is_dir() and any(dest.iterdir()) and not params.overwrite:
        raise InputError(
            f"dest {dest} is not empty; pass overwrite to replace it or choose an empty folder",
            param=("dest", "overwrite"),
        )
    info, df = workspace.read(params.version)
    rows = active(df)
    root = workspace.dataset_root(info)
    written = dest
    if csv_file is not None and csv_file == dest:
        atomic_write(dest, lambda tmp: _export_csv(workspace, rows, root, tmp, params.image_size, progress))
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(dest.parent, dest.name)
        try:
            if csv_file is None:
                _export_folders(workspace, rows, root, tmp, params.mode, progress)
            else:
                _export_csv(workspace, rows, root, tmp / csv_file.name, params.image_size, progress)
                written = csv_file
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return ExportResult(
        version=info.version,
        dest=written,
        format=params.format,
        files=len(rows),
        by_split=dict(Counter(rows[Col.SPLIT])),
    )


def csv_target(dest: Path) -> Path:
    """The CSV file a CSV export to ``dest`` writes: ``dest`` itself when it ends in ``.csv`` (and is
    not an existing folder) or is an existing file, else ``dest/fer2013.csv``."""
    if dest.is_dir():
        return dest / CSV_NAME
    if dest.suffix.lower() == ".csv" or dest.is_file():
        return dest
    return dest / CSV_NAME


def export_name(row: pd.Series) -> str:
    """The file name a row gets in an export: its own, prefixed with its source when not original."""
    name = Path(str(row[Col.PATH])).name
    return name if row[Col.SOURCE] == SOURCE_ORIGINAL else f"{row[Col.SOURCE]}_{name}"


def _export_folders(
    workspace: Workspace, rows: pd.DataFrame, root: Path | None, out: Path, mode: str, progress: Progress
) -> None:
    progress.start("Exporting", len(rows))
    used: set[str] = set()
    for _, row in rows.iterrows():
        src = workspace.resolve_image_path(str(row[Col.PATH]), root)
        name = export_name(row)
        target_rel = f"{row[Col.SPLIT]}/{row[Col.LABEL]}/{name}"
        if target_rel in used:  # two sources shared a file name: keep both, told apart by id
            stem, suffix = os.path.splitext(name)
            target_rel = f"{row[Col.SPLIT]}/{row[Col.LABEL]}/{stem}_{row[Col.IMAGE_ID][:8]}{suffix}"
        used.add(target_rel)
        target = out / target_rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not src.exists():
            raise InputError(f"image {src} of row {row[Col.IMAGE_ID]} is missing; was the dataset moved?")
        if mode == "copy":
            shutil.copy2(src, target)
        elif mode == "hardlink":
            try:
                os.link(src, target)
            except OSError as exc:
                raise InputError(
                    f"cannot hardlink {src} into {out} ({exc.strerror}); use mode copy", param="mode"
                ) from exc
        else:
            os.symlink(src.resolve(), target)
        progress.advance(1)


def _export_csv(
    workspace: Workspace, rows: pd.DataFrame, root: Path | None, out: Path, size: int, progress: Progress
) -> None:
    unknown = sorted(set(rows[Col.LABEL]) - set(FER2013_CLASSES))
    if unknown:
        raise InputError(
            f"class(es) {', '.join(unknown)} have no FER2013 emotion code (0-6 = {', '.join(FER2013_CLASSES)}); "
            "use format folders",
            param="format",
        )
    progress.start("Exporting CSV", len(rows))
    shas = rows[Col.SHA256].tolist()
    pixels, missing = PixelCache(workspace, size).get(shas)
    if missing:
        paths = [str(workspace.resolve_image_path(str(rows.iloc[i][Col.PATH]), root)) for i in missing]
        pixels[missing] = load_gray_files(paths, size)
    codes = [FER2013_CLASSES.index(label) for label in rows[Col.LABEL]]
    strings = [" ".join(map(str, p.ravel().tolist())) for p in np.asarray(pixels)]
    frame = pd.DataFrame({"emotion": codes, "pixels": strings, "Usage": [CSV_USAGE[s] for s in rows[Col.SPLIT]]})
    frame.to_csv(out, index=False)
    if VoteCol.N in rows.columns and rows[VoteCol.N].notna().any():  # annotator votes: FER+'s layout beside
        from fercurate.votes.stage import fer2013new_frame

        fer2013new_frame(rows).to_csv(out.parent / "fer2013new.csv", index=False)
    progress.advance(len(rows))
