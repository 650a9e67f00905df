"""``fercurate scan``: read a FER dataset into manifest version 0.

Three layouts are recognised:

* split folders holding class folders (``train/happy/1.jpg``; split names in any case, with the
  usual synonyms: training, validation, valid, dev, publictest, testing, privatetest);
* class folders with no split level (every row goes to ``train``; run ``fercurate split`` next);
* a FER2013-style CSV (``emotion,pixels[,Usage]``), whose pixel strings become PNG files in the
  workspace's image store;
* the FER+ release (``FER2013Train/`` ... with PNGs and ``label.csv``): labels from the annotators'
  votes, which are kept (see :mod:`fercurate.votes.scan`).

Every file becomes a row. Empty, truncated, non-image and degenerate files are recorded as
``invalid`` with a reason; none of them stops the scan.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from fercurate.engine import Engine
from fercurate.errors import DatasetError, InputError
from fercurate.images import (
    DEFAULT_MAX_PIXELS,
    Inspected,
    encode_png,
    inspect_files,
    inspect_images,
)
from fercurate.manifest import (
    ACTIVE,
    FER2013_CLASSES,
    INVALID,
    KNOWN_CLASSES,
    SOURCE_ORIGINAL,
    Col,
    atomic_write_bytes,
    canonical_class,
    image_id_for,
)
from fercurate.progress import NullProgress, Progress
from fercurate.reports import to_dict
from fercurate.workspace import PixelCache, VersionInfo, Workspace

SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "publictest": "val",
    "test": "test",
    "testing": "test",
    "privatetest": "test",
}
CSV_USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}
#: Names that are never data: OS and tool litter.
IGNORED_NAMES = frozenset({"__macosx", ".ds_store", "thumbs.db", "desktop.ini", ".ipynb_checkpoints"})


@dataclass(frozen=True)
class ScanParams:
    """Options of ``fercurate scan`` (the CLI's defaults point here)."""

    dataset: Path
    classes: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    image_size: int = 48
    workers: int | None = None
    #: images of more pixels are invalid (``too_large_WxH``), judged from the header without decoding
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: start a second lineage (a new root version) in a workspace that already holds versions
    new_lineage: bool = False
    vote_scheme: str = "majority"  # FER+ release only: how labels are read from votes (fercurate.votes)


@dataclass(frozen=True)
class ScanResult:
    """What a scan found and the version it wrote."""

    version: VersionInfo
    layout: str
    rows: int
    by_status: dict[str, int]
    by_split: dict[str, int]
    by_label: dict[str, int]
    invalid_reasons: dict[str, int]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def normalise_split(name: str) -> str | None:
    """``train`` / ``val`` / ``test`` for a split folder or CSV Usage name, else None."""
    key = re.sub(r"[^a-z]", "", name.lower())
    return SPLIT_ALIASES.get(key)


def scan(
    workspace: Workspace, params: ScanParams, progress: Progress | None = None, engine: Engine | None = None
) -> ScanResult:
    """Scan ``params.dataset`` and commit it as a root version (no parent) of ``workspace``.

    Files are decoded, validated and hashed in batches on ``engine`` (default: a local process pool).

    A workspace that already holds versions takes a scan only with ``params.new_lineage``: the new
    root then starts a second lineage and becomes ``latest`` for every later command.

    Raises:
        DatasetError: when the dataset cannot be read as one of the layouts, or every file in it is
            invalid (nothing is written then).
        InputError: for bad options, or a workspace with versions without ``new_lineage``.
    """
    progress = progress or NullProgress()
    started = time.perf_counter()
    dataset = Path(params.dataset).expanduser()
    if not dataset.exists():
        raise DatasetError(f"dataset path {dataset} does not exist; pass a folder or a FER2013-style CSV")
    if params.image_size < 8:
        raise InputError(f"image_size {params.image_size} is too small; use 8 or more (48 for FER)", param="image_size")
    if params.max_pixels < params.image_size * params.image_size:
        raise InputError(
            f"max_pixels {params.max_pixels} is below one {params.image_size}x{params.image_size} image; "
            f"use at least {params.image_size * params.image_size} (default {DEFAULT_MAX_PIXELS})",
            param="max_pixels",
        )
    classes = _parse_classes(params.classes)
    _check_lineage(workspace, params)
    with _removed_on_error(workspace), workspace.lock("fercurate scan", create=True):
        if dataset.is_file():
            df, notes = _scan_csv(workspace, dataset, classes, params, progress)
            layout, root = "csv", dataset.parent
        else:
            root = _descend(dataset)
            from fercurate.votes.scan import ferplus_folders, scan_ferplus  # the FER+ release layout

            if ferplus := ferplus_folders(root):
                layout, (df, root, notes) = "ferplus", scan_ferplus(workspace, ferplus, params, progress, engine)
            else:
                layout, files, notes = _discover(root, classes, {n.lower() for n in params.ignore})
                df = _scan_files(workspace, root, files, params, progress, engine)
        if df.empty:
            raise DatasetError(f"no image files found under {dataset}; expected split/class folders or a CSV")
        _check_some_valid(df, dataset)
        version = workspace.commit(
            df,
            stage="scan",
            parent=None,
            params={
                "dataset": str(dataset.resolve()),
                "layout": layout,
                "classes": list(classes) if classes else None,
                "ignore": list(params.ignore),
                "image_size": params.image_size,
                "max_pixels": params.max_pixels,
                **({"vote_scheme": params.vote_scheme} if layout == "ferplus" else {}),
            },
            dataset_root=root,
            extra={"image_size": params.image_size, "classes": sorted(df[Col.LABEL].unique().tolist())},
        )
    if layout == "classes":
        notes.append("no split folders found: every row is in 'train'; run `fercurate split` to re-split")
    invalid = df[df[Col.STATUS] == INVALID]
    active = df[df[Col.STATUS] == ACTIVE]
    # counted from lists: iterating a column of Arrow strings costs a Python call per value
    return ScanResult(
        version=version,
        layout=layout,
        rows=len(df),
        by_status=dict(Counter(df[Col.STATUS].tolist())),
        by_split=dict(Counter(active[Col.SPLIT].tolist())),
        by_label=dict(Counter(active[Col.LABEL].tolist())),
        invalid_reasons=dict(Counter(_reason_kind(r) for r in invalid[Col.REASON])),
        notes=notes,
        seconds=time.perf_counter() - started,
    )


@contextmanager
def _removed_on_error(workspace: Workspace) -> Iterator[None]:
    """Remove a workspace folder this scan created if the scan fails, so a failed scan writes nothing."""
    fresh = not workspace.root.exists()
    try:
        yield
    except BaseException:
        if fresh:
            shutil.rmtree(workspace.root, ignore_errors=True)
        raise


def _check_lineage(workspace: Workspace, params: ScanParams) -> None:
    """Refuse to scan silently into a workspace whose latest version later commands would lose."""
    infos = workspace.versions()
    if infos and not params.new_lineage:
        raise InputError(
            f"workspace {workspace.root} already holds versions (latest {infos[-1].version}, "
            f"{infos[-1].stage}); pass new_lineage to start a second lineage there (it becomes latest), "
            "or scan into a new workspace",
            param="new_lineage",
        )


def _check_some_valid(df: pd.DataFrame, dataset: Path) -> None:
    """A scan in which no file could be read is an error, named with its commonest reasons."""
    if (df[Col.STATUS] != INVALID).any():
        return
    reasons = Counter(_reason_kind(r) for r in df[Col.REASON]).most_common(3)
    named = ", ".join(f"{kind} {n}" for kind, n in reasons)
    raise DatasetError(
        f"all {len(df)} files under {dataset} are invalid (commonest reasons: {named}); nothing was written. "
        "Check that DATASET points at the images (not at a folder of archives or other files)"
    )


def _reason_kind(reason: str) -> str:
    return re.split(r"[:_]\d|: ", reason)[0]


def _parse_classes(classes: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if not classes:
        return None
    folded = tuple(dict.fromkeys(canonical_class(c) for c in classes if c.strip()))
    if not folded:
        raise InputError("classes is empty; pass names like happy,neutral,sad,surprise", param="classes")
    return folded


def _entries(folder: Path | str) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` by name, without hidden ones (a leading dot) and OS or tool litter."""
    with os.scandir(folder) as it:
        entries = [e for e in it if not e.name.startswith(".") and e.name.lower() not in IGNORED_NAMES]
    entries.sort(key=lambda e: e.name)
    return entries


def _visible_dirs(folder: Path) -> list[Path]:
    return [folder / e.name for e in _entries(folder) if e.is_dir()]


def _has_files(folder: Path) -> bool:
    return any(_is_file_or_broken_link(e) for e in _entries(folder))


def _image_files(folder: Path | str, prefix: str) -> list[str]:
    """``prefix`` + the ``/``-separated path of every visible file under ``folder``, in path order.

    Files inside hidden or littered sub-folders are left out. Like ``Path.rglob``, this does not
    follow symlinked sub-folders and skips sub-folders it may not read. A symlink that leads to no
    file (a loop, a dangling link) is listed: reading it fails, and the scan records why.
    """
    try:
        entries = _entries(folder)
    except PermissionError:
        return []
    files: list[str] = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            files.extend(_image_files(entry.path, f"{prefix}{entry.name}/"))
        elif _is_file_or_broken_link(entry):
            files.append(prefix + entry.name)
    return files


def _is_file_or_broken_link(entry: os.DirEntry[str]) -> bool:
    """Whether ``entry`` is a file, or a symlink that leads to none (a loop or a dangling link)."""
    try:
        if entry.is_file():
            return True
    except OSError:  # a symlink loop: stat() fails with ELOOP
        return True
    # a dangling link: is_file() is False when the target is missing; a link to a folder is not a file
    return entry.is_symlink() and not os.path.exists(entry.path)


def _descend(root: Path) -> Path:
    """Step into single wrapper folders (``Facial_emotion_images/images/train/...``)."""
    for _ in range(3):
        dirs = _visible_dirs(root)
        names = {canonical_class(d.name) for d in dirs}
        is_data = any(normalise_split(d.name) for d in dirs) or names & set(KNOWN_CLASSES)
        if len(dirs) == 1 and not is_data and not _has_files(root):
            root = dirs[0]
        else:
            break
    return root


def _discover(
    root: Path, classes: tuple[str, ...] | None, ignore: set[str]
) -> tuple[str, list[tuple[str, str, str]], list[str]]:
    """Find (path relative to ``root``, split, label) triples and the layout name."""
    notes: list[str] = []
    dirs = [d for d in _visible_dirs(root) if d.name.lower() not in ignore]
    split_dirs = [d for d in dirs if normalise_split(d.name)]
    files: list[tuple[str, str, str]] = []
    if split_dirs:
        others = [d for d in dirs if not normalise_split(d.name)]
        if others:
            raise DatasetError(
                f"folder '{others[0].name}' in {root} is not a split folder (train/val/test and synonyms) "
                f"beside {', '.join(d.name for d in split_dirs)}; pass ignore {others[0].name} to skip it",
                param="ignore",
            )
        seen_splits: dict[str, str] = {}
        for split_dir in split_dirs:
            split = normalise_split(split_dir.name)
            assert split is not None
            if split in seen_splits:
                raise DatasetError(
                    f"split folders '{seen_splits[split]}' and '{split_dir.name}' in {root} both mean "
                    f"'{split}'; pass ignore for one of them",
                    param="ignore",
                )
            seen_splits[split] = split_dir.name
            stray = sum(_is_file_or_broken_link(e) for e in _entries(split_dir))
            if stray:
                notes.append(f"{stray} file(s) directly in {split_dir.name}/ have no class folder: skipped")
            for class_dir in _visible_dirs(split_dir):
                if class_dir.name.lower() in ignore:
                    continue
                label = _check_class(class_dir, classes, f"{split_dir.name}/")
                prefix = f"{split_dir.name}/{class_dir.name}/"
                files.extend((f, split, label) for f in _image_files(class_dir, prefix))
        return "splits", files, notes
    if not dirs:
        raise DatasetError(
            f"{root} holds no folders; expected split folders (train/val/test) holding class folders, "
            "class folders, or pass a FER2013-style CSV file"
        )
    for class_dir in dirs:
        label = _check_class(class_dir, classes, "")
        files.extend((f, "train", label) for f in _image_files(class_dir, f"{class_dir.name}/"))
    return "classes", files, notes


def _check_class(folder: Path, classes: tuple[str, ...] | None, where: str) -> str:
    label = canonical_class(folder.name)
    allowed = classes if classes else KNOWN_CLASSES
    if label not in allowed:
        hint = (
            "pass classes to set them" if classes is None else "add it to classes"
        ) + f", or ignore {folder.name} to skip it"
        raise DatasetError(
            f"label folder '{folder.name}' in {where or './'} is not one of: {', '.join(allowed)}; {hint}",
            param=("classes", "ignore"),
        )
    return label


def _scan_files(
    workspace: Workspace,
    root: Path,
    files: list[tuple[str, str, str]],
    params: ScanParams,
    progress: Progress,
    engine: Engine | None = None,
) -> pd.DataFrame:
    progress.start("Decoding images", len(files))
    base = os.path.join(root, "")
    found = _Found(workspace, params.image_size)
    # each batch's pixels go to the cache as the batch comes back, so the driver never holds them all
    for part in (engine or Engine()).iter_batches(
        functools.partial(inspect_files, size=params.image_size, max_pixels=params.max_pixels),
        [base + path for path, _, _ in files],
        batch_size=FILES_PER_BATCH,
        workers=params.workers,
        progress=progress.advance,
    ):
        found.add(part)
    found.flush()
    paths = [path for path, _, _ in files]
    return _rows(
        ids=[image_id_for(p) for p in paths],
        paths=paths,
        splits=[s for _, s, _ in files],
        labels=[lbl for _, _, lbl in files],
        found=found,
    )


#: Files a worker inspects per call: large enough that a batch's overhead (pickling its result back)
#: is small against decoding it
FILES_PER_BATCH = 256
#: Decoded faces per pixel-cache chunk a scan writes (46 MB of 48x48 pixels): what the driver holds
#: of them at most, besides the batches in flight
CACHE_CHUNK_ROWS = 20_000


class _Found:
    """What the inspected batches found, gathered as they come: the manifest's columns as Arrow arrays
    (a million rows of Python strings would cost gigabytes) and the pixels written to the
    :class:`PixelCache` a chunk at a time (this process stays the only writer of the workspace)."""

    TYPES: ClassVar[dict[str, pa.DataType]] = {
        "status": pa.string(),
        "reason": pa.string(),
        "width": pa.int32(),
        "height": pa.int32(),
        "mode": pa.string(),
        "sha256": pa.string(),
    }

    def __init__(self, workspace: Workspace, size: int) -> None:
        self.cache = PixelCache(workspace, size)
        self.columns: dict[str, list[pa.Array]] = {name: [] for name in self.TYPES}
        self._pending: list[tuple[list[str], np.ndarray]] = []
        self._pending_rows = 0

    def add(self, part: Inspected) -> None:
        """Keep one batch's columns and queue its decoded pixels for the cache."""
        for name, kind in self.TYPES.items():
            self.columns[name].append(pa.array(part[name], kind))  # type: ignore[literal-required]
        decoded = part["decoded"]
        if decoded.all():
            self._pending.append((part["sha256"], part["pixels"]))
        elif decoded.any():
            shas = [sha for sha, ok in zip(part["sha256"], decoded, strict=True) if ok]
            self._pending.append((shas, part["pixels"][decoded]))
        self._pending_rows += int(decoded.sum())
        if self._pending_rows >= CACHE_CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        """Write the queued pixels as one cache chunk (atomically) and let go of them."""
        if self._pending:
            self.cache.add_batches(self._pending, keep=False)
        self._pending, self._pending_rows = [], 0

    def column(self, name: str) -> pd.Series:
        """A manifest column: strings as pandas' Arrow-backed ``str``, sizes as nullable ``Int32``."""
        values = pa.chunked_array(self.columns[name], self.TYPES[name])
        if pa.types.is_integer(values.type):
            return values.to_pandas(types_mapper={pa.int32(): pd.Int32Dtype()}.get)
        return values.to_pandas()


def _rows(*, ids: list[str], paths: list[str], splits: list[str], labels: list[str], found: _Found) -> pd.DataFrame:
    return pd.DataFrame(
        {
            Col.IMAGE_ID: ids,
            Col.PATH: paths,
            Col.SPLIT: splits,
            Col.LABEL: labels,
            Col.SPLIT_ORIGINAL: splits,
            Col.LABEL_ORIGINAL: labels,
            Col.SOURCE: SOURCE_ORIGINAL,
            Col.STATUS: found.column("status"),
            Col.REASON: found.column("reason"),
            Col.WIDTH: found.column("width"),
            Col.HEIGHT: found.column("height"),
            Col.MODE: found.column("mode"),
            Col.SHA256: found.column("sha256"),
        }
    )


def _scan_csv(
    workspace: Workspace, csv_path: Path, classes: tuple[str, ...] | None, params: ScanParams, progress: Progress
) -> tuple[pd.DataFrame, list[str]]:
    """Read a FER2013-style CSV; each pixel string becomes a PNG in the workspace store."""
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{csv_path} is not a readable CSV: {exc}") from exc
    table.columns = [c.strip().lower() for c in table.columns]
    missing = [c for c in ("emotion", "pixels") if c not in table.columns]
    if missing:
        raise DatasetError(
            f"CSV {csv_path.name} lacks column(s) {', '.join(missing)}; a FER2013-style CSV has "
            "emotion,pixels,Usage (emotion 0-6 = angry, disgust, fear, happy, sad, surprise, neutral)"
        )
    notes: list[str] = []
    usage = table["usage"] if "usage" in table.columns else pd.Series(["Training"] * len(table))
    if "usage" not in table.columns:
        notes.append("CSV has no Usage column: every row is in 'train'; run `fercurate split` to re-split")
    progress.start("Decoding CSV rows", len(table))
    ids: list[str] = []
    paths: list[str] = []
    splits: list[str] = []
    labels: list[str] = []
    size = params.image_size
    found = _Found(workspace, size)
    pending: list[bytes | str] = []  # rows not inspected yet: PNG bytes, or why the pixels are no image
    skipped: Counter[str] = Counter()
    for index, (code, pixels, use) in enumerate(zip(table["emotion"], table["pixels"], usage, strict=True)):
        code = code.strip()
        if code.isdigit() and int(code) < len(FER2013_CLASSES):
            label = FER2013_CLASSES[int(code)]
        else:
            raise DatasetError(
                f"CSV {csv_path.name} row {index + 2}: emotion '{code}' is not a code 0-6 "
                "(angry, disgust, fear, happy, sad, surprise, neutral)"
            )
        if classes and label not in classes:
            skipped[label] += 1
            continue
        split = CSV_USAGE.get(re.sub(r"[^a-z]", "", use.lower())) or normalise_split(use) or "train"
        image = _parse_pixel_string(pixels)
        store_value, store_file = workspace.store_path(f"csv/{csv_path.stem}/{index:06d}.png")
        if isinstance(image, str):
            pending.append(image)
        else:
            png = encode_png(image)
            atomic_write_bytes(store_file, png)
            pending.append(png)
        ids.append(image_id_for(f"csv:{csv_path.name}:{index}"))
        paths.append(store_value)
        splits.append(split)
        labels.append(label)
        if index % 512 == 511:
            found.add(_inspect_pending(pending, size))
            pending = []
            progress.advance(512)
    found.add(_inspect_pending(pending, size))
    found.flush()
    progress.advance(len(table) % 512)
    if skipped:
        notes.append(
            "rows of classes outside --classes skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()))
        )
    return _rows(ids=ids, paths=paths, splits=splits, labels=labels, found=found), notes


def _inspect_pending(pending: list[bytes | str], size: int) -> Inspected:
    """Inspect the PNG bytes of CSV rows; a row whose pixels are no image is invalid for its reason."""
    found = inspect_images([png if isinstance(png, bytes) else b"" for png in pending], size)
    for k, png in enumerate(pending):
        if isinstance(png, str):
            found["reason"][k] = png
    return found


def _parse_pixel_string(pixels: str) -> np.ndarray | str:
    """The square grayscale image a space-separated pixel string holds, or why it holds none."""
    try:
        values = np.array(pixels.split(), dtype=np.int64)
    except ValueError:
        values = np.array([], dtype=np.int64)
    side = int(round(np.sqrt(values.size)))
    if values.size == 0 or side * side != values.size or values.min() < 0 or values.max() > 255:
        return f"bad_pixels_{values.size}_values"
    return values.astype(np.uint8).reshape(side, side)
