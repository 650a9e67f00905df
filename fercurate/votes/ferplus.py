"""Reading FER+'s vote files: ``label.csv`` (per folder) and ``fer2013new.csv`` (per FER2013 row).

Both are read strictly: a wrong column count, a count that is not a whole number, or a negative
count stops with one line naming the file and the line (1-based, as an editor shows it).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fercurate.errors import DatasetError
from fercurate.votes.params import FERPLUS_CLASSES, FERPLUS_FOLDERS

LABEL_FILE = "label.csv"
NEW_CSV_HEADER: tuple[str, ...] = ("Usage", "Image name", *FERPLUS_CLASSES)
_BOX = re.compile(r"^\(\s*-?\d+\s*,\s*-?\d+\s*,\s*\d+\s*,\s*\d+\s*\)$")


@dataclass(frozen=True)
class VoteTable:
    """Votes read from one FER+ file: one entry per line, in file order.

    Attributes:
        names: FER+ image names (``fer0000123.png``); empty where FER+ dropped the image
            (``fer2013new.csv`` keeps such rows with an empty name).
        usages: FER2013 Usage of each line (``Training``, ``PublicTest``, ``PrivateTest``).
        counts: ``(N, 10)`` int16 vote counts in :data:`FERPLUS_CLASSES` order.
        lines: the 1-based line of each entry in its file, for messages.
        files: the file each entry came from.
    """

    names: list[str]
    usages: list[str]
    counts: np.ndarray
    lines: list[int]
    files: list[str]

    def __len__(self) -> int:
        return len(self.names)


def _counts(values: list[str], where: str) -> list[int]:
    out = []
    for name, value in zip(FERPLUS_CLASSES, values, strict=True):
        text = value.strip()
        if not re.fullmatch(r"-?\d+", text):
            raise DatasetError(f"{where}: the {name} count '{value}' is not a whole number; votes are counts 0-10+")
        count = int(text)
        if count < 0:
            raise DatasetError(f"{where}: the {name} count {count} is negative; votes are counts of 0 or more")
        out.append(count)
    return out


def _rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.reader(fh))
    except FileNotFoundError as exc:
        raise DatasetError(f"{path} does not exist; pass FER+'s fer2013new.csv or a FER+ data folder") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path} is not a readable CSV: {exc}") from exc


def read_label_csv(path: Path, usage: str) -> VoteTable:
    """Read a FER+ ``label.csv``: headerless ``name,"(x, y, w, h)",<10 counts>`` lines.

    Raises:
        DatasetError: naming the file and line of a malformed line.
    """
    names: list[str] = []
    counts: list[list[int]] = []
    lines: list[int] = []
    for number, row in enumerate(_rows(path), start=1):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        where = f"{path} line {number}"
        if len(row) != 2 + len(FERPLUS_CLASSES):
            raise DatasetError(
                f"{where}: {len(row)} columns, expected {2 + len(FERPLUS_CLASSES)} "
                f"(image name, face box, then {', '.join(FERPLUS_CLASSES)})"
            )
        name = row[0].strip()
        if not name:
            raise DatasetError(f"{where}: the image name is empty")
        if not _BOX.match(row[1].strip()):
            raise DatasetError(f"{where}: face box '{row[1]}' is not '(x, y, w, h)'")
        names.append(name)
        counts.append(_counts(row[2:], where))
        lines.append(number)
    return VoteTable(
        names=names,
        usages=[usage] * len(names),
        counts=np.array(counts, dtype=np.int16).reshape(-1, len(FERPLUS_CLASSES)),
        lines=lines,
        files=[str(path)] * len(names),
    )


def read_new_csv(path: Path) -> VoteTable:
    """Read FER+'s ``fer2013new.csv``: a header, then ``Usage,Image name,<10 counts>`` per FER2013 row.

    Raises:
        DatasetError: naming the file and line of a malformed line or header.
    """
    rows = _rows(path)
    if not rows:
        raise DatasetError(f"{path} is empty; expected the header {','.join(NEW_CSV_HEADER)}")
    header = [h.strip() for h in rows[0]]
    if [h.lower() for h in header] != [h.lower() for h in NEW_CSV_HEADER]:
        raise DatasetError(f"{path} line 1: header '{','.join(header)}' is not {','.join(NEW_CSV_HEADER)}")
    names: list[str] = []
    usages: list[str] = []
    counts: list[list[int]] = []
    lines: list[int] = []
    known = {u.lower(): u for u in FERPLUS_FOLDERS.values()}
    for number, row in enumerate(rows[1:], start=2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        where = f"{path} line {number}"
        if len(row) != len(NEW_CSV_HEADER):
            raise DatasetError(
                f"{where}: {len(row)} columns, expected {len(NEW_CSV_HEADER)} ({','.join(NEW_CSV_HEADER)})"
            )
        usage = known.get(row[0].strip().lower())
        if usage is None:
            raise DatasetError(f"{where}: Usage '{row[0]}' is not one of: {', '.join(known.values())}")
        usages.append(usage)
        names.append(row[1].strip())
        counts.append(_counts(row[2:], where))
        lines.append(number)
    return VoteTable(
        names=names,
        usages=usages,
        counts=np.array(counts, dtype=np.int16).reshape(-1, len(FERPLUS_CLASSES)),
        lines=lines,
        files=[str(path)] * len(names),
    )


def find_release(root: Path) -> dict[str, Path]:
    """The FER+ folders (``FER2013Train`` ...) under ``root`` or ``root/data``, by Usage; empty if none."""
    for base in (root, root / "data"):
        found = {usage: base / folder for folder, usage in FERPLUS_FOLDERS.items() if (base / folder).is_dir()}
        if found:
            return found
    return {}


def read_release(folders: dict[str, Path]) -> VoteTable:
    """The votes of every ``label.csv`` in the FER+ folders, Training first, and the PNGs they name.

    Raises:
        DatasetError: for a folder without ``label.csv``, a malformed line, or a line naming an
            image that is not in its folder.
    """
    parts = []
    for usage in ("Training", "PublicTest", "PrivateTest"):
        folder = folders.get(usage)
        if folder is None:
            continue
        label = folder / LABEL_FILE
        if not label.is_file():
            raise DatasetError(f"FER+ folder {folder} has no {LABEL_FILE}; expected the FER+ release layout")
        table = read_label_csv(label, usage)
        present = {p.name for p in folder.iterdir()}
        for name, line in zip(table.names, table.lines, strict=True):
            if name not in present:
                raise DatasetError(f"{label} line {line}: votes for image '{name}', which is not in {folder}")
        parts.append(table)
    return concat(parts)


def concat(parts: list[VoteTable]) -> VoteTable:
    """One table holding ``parts`` in order."""
    return VoteTable(
        names=[n for p in parts for n in p.names],
        usages=[u for p in parts for u in p.usages],
        counts=np.concatenate([p.counts for p in parts]) if parts else np.zeros((0, 10), np.int16),
        lines=[n for p in parts for n in p.lines],
        files=[f for p in parts for f in p.files],
    )
