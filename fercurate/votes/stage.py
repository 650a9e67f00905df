"""``fercurate votes import`` as a library function: read votes, attach them to rows, commit."""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fercurate.errors import DatasetError, InputError
from fercurate.manifest import (
    ACTIVE,
    STORE_PREFIX,
    VOTE_COLUMNS,
    VOTE_COUNT_COLUMNS,
    Col,
    VoteCol,
    atomic_write,
)
from fercurate.progress import NullProgress, Progress
from fercurate.votes.ferplus import VoteTable, find_release, read_label_csv, read_new_csv, read_release
from fercurate.votes.match import AMBIGUOUS, MATCHED, UNMATCHED, Matches, match_images
from fercurate.votes.params import FERPLUS_CLASSES, FERPLUS_FOLDERS, VotesParams
from fercurate.votes.stats import agreement, class_map, entropy_bits, scheme_labels
from fercurate.workspace import VersionInfo, Workspace, load_pixels

STAGE = "votes-import"
MATCHES_FILE = "vote_matches.csv"
#: Manifest split -> FER2013 Usage, for rows whose file name does not carry it.
SPLIT_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
#: How rows were matched (the ``vote_match`` column).
BY_ROW, BY_PIXELS = "row", "pixels"


@dataclass(frozen=True)
class VotesResult:
    """What an import matched and the version it wrote (None for a dry run)."""

    version: VersionInfo | None
    parent: str
    source: str
    method: str
    entries: int
    matched: int
    unmatched: int
    ambiguous: int
    rows: int
    rows_with_votes: int
    mapping: dict[str, str | None]
    scheme: str
    by_majority: dict[str, int]
    majority_disagrees: int
    distance: dict[str, float]
    min_margin: float | None
    report: str | None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["version"] = self.version.version if self.version else None
        out["path"] = self.version.path if self.version else None
        out["seconds"] = round(self.seconds, 3)
        return out


def import_votes(workspace: Workspace, params: VotesParams, progress: Progress | None = None) -> VotesResult:
    """Attach annotator votes to a version's rows and commit the result as a new version.

    ``params.votes`` is FER+'s ``fer2013new.csv`` (matched to a scanned FER2013 CSV by row order and
    Usage), or FER+ images with ``label.csv`` (a release folder or one ``label.csv``: matched to the
    version's rows by pixels). Rows that get no votes hold nulls in every vote column; votes already
    on the version are replaced.

    Raises:
        DatasetError: a malformed vote file (naming the file and line), votes for an image that is
            not there, or files that do not line up with the version.
        InputError: bad options (``--map`` naming a class the dataset lacks, ...).
        WorkspaceError: no workspace or version.
    """
    progress = progress or NullProgress()
    started = time.perf_counter()
    votes_path = Path(params.votes).expanduser()
    if not votes_path.exists():
        raise InputError(f"votes file {votes_path} does not exist; pass FER+'s fer2013new.csv or its data folder")
    workspace.require_versions()
    info, df = workspace.read(params.version)
    classes = sorted(df.loc[df[Col.STATUS] == ACTIVE, Col.LABEL].unique().tolist())
    mapping = class_map(classes, params.overrides())
    progress.start("Reading votes", None)
    notes: list[str] = []
    if votes_path.is_file() and _is_new_csv(votes_path):
        table = read_new_csv(votes_path)
        source = "fer2013new.csv"
        rows, matches, method = _by_row_order(workspace, info, df, table, votes_path, params, progress, notes)
    else:
        table, folders = _release(votes_path)
        source = "label.csv"
        rows, matches = _by_pixels(workspace, info, df, table, folders, params, progress)
        method = BY_PIXELS
    out = with_votes(df, table, rows, matches, method, mapping, classes, params.scheme)
    has = out[VoteCol.N].notna()
    majority = out.loc[has & (out[Col.STATUS] == ACTIVE), VoteCol.MAJORITY]
    given = out.loc[majority.index, Col.LABEL]
    disagree = int((majority.notna() & (majority != given)).sum())
    counts = {s: matches.count(s) for s in (MATCHED, UNMATCHED, AMBIGUOUS)}
    dist = matches.distance[matches.status == MATCHED]
    distance = (
        {"median": float(np.median(dist)), "p99": float(np.percentile(dist, 99)), "max": float(dist.max())}
        if len(dist)
        else {}
    )
    margins = matches.margin[(matches.status == MATCHED) & ~np.isnan(matches.margin)]
    summary = {
        "source": source,
        "method": method,
        "entries": len(table),
        **counts,
        "rows_with_votes": int(has.sum()),
        "mapping": mapping,
        "scheme": params.scheme,
        "distance": distance,
    }
    version = None
    report = None
    if not params.dry_run:
        with workspace.lock("fercurate votes import"):
            version = workspace.commit(
                out,
                stage=STAGE,
                parent=info,
                params={**asdict(params), "version": info.version, "mapping": mapping},
                extra=summary,
            )
        report_path = workspace.report_dir(version.version) / MATCHES_FILE
        frame = _match_report(table, matches, df)
        atomic_write(report_path, lambda tmp: frame.to_csv(tmp, index=False))
        report = str(report_path)
    if counts[UNMATCHED]:
        notes.append(f"{counts[UNMATCHED]} FER+ image(s) matched no row; see {MATCHES_FILE} in the report folder")
    if counts[AMBIGUOUS]:
        notes.append(f"{counts[AMBIGUOUS]} FER+ image(s) had only rows already taken by identical images: no votes")
    if params.dry_run:
        notes.append("dry run: no version written; rerun without --dry-run to apply")
    return VotesResult(
        version=version,
        parent=info.version,
        source=source,
        method=method,
        entries=len(table),
        matched=counts[MATCHED],
        unmatched=counts[UNMATCHED],
        ambiguous=counts[AMBIGUOUS],
        rows=len(out),
        rows_with_votes=int(has.sum()),
        mapping=mapping,
        scheme=params.scheme,
        by_majority={str(k): int(v) for k, v in majority.fillna("(none)").value_counts().sort_index().items()},
        majority_disagrees=disagree,
        distance={k: round(v, 3) for k, v in distance.items()},
        min_margin=round(float(margins.min()), 3) if len(margins) else None,
        report=report,
        notes=notes,
        seconds=time.perf_counter() - started,
    )


# -- reading ---------------------------------------------------------------------------------------
def recorded_mapping(workspace: Workspace, info: VersionInfo, classes: list[str]) -> dict[str, str | None]:
    """The FER+ -> dataset class mapping the votes of ``info`` were imported with.

    ``votes import`` records it in its version's params; versions after it inherit the votes, so the
    nearest import at or before ``info`` is the one that counts. Votes read by ``scan`` (the FER+
    layout) and versions without an import use the default mapping. Overrides naming a class the
    dataset no longer has (a later stage dropped it) are left out.
    """
    found = workspace.find_stage(STAGE, upto=info.version)
    recorded = (found.params.get("mapping") or {}) if found else {}
    return class_map(classes, {k: v for k, v in recorded.items() if v and v in classes})


def _is_new_csv(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.readline().strip().lower().startswith("usage,")


def _release(path: Path) -> tuple[VoteTable, dict[str, Path]]:
    """The votes and image folders of a FER+ release folder, or of one FER+ folder's ``label.csv``."""
    if path.is_file():
        usage = FERPLUS_FOLDERS.get(path.parent.name)
        if usage is None:
            raise DatasetError(
                f"{path} is not in a FER+ folder ({', '.join(FERPLUS_FOLDERS)}), so its Usage is unknown; "
                "pass the FER+ data folder instead"
            )
        folders = {usage: path.parent}
        table = read_release(folders) if path.name == "label.csv" else read_label_csv(path, usage)
        return table, folders
    folders = find_release(path)
    if not folders:
        raise DatasetError(
            f"{path} holds no FER+ folders ({', '.join(FERPLUS_FOLDERS)}); pass FER+'s fer2013new.csv, its "
            "data folder, or one label.csv"
        )
    return read_release(folders), folders


def _decode(folders: dict[str, Path], table: VoteTable, progress: Progress) -> np.ndarray:
    from fercurate.images import apply_batches, load_gray_files

    paths = [str(folders[u] / n) for u, n in zip(table.usages, table.names, strict=True)]
    progress.start("Decoding FER+ images", len(paths))
    parts = apply_batches(
        functools.partial(load_gray_files, size=48), paths, batch_size=1024, progress=progress.advance
    )
    return np.concatenate(parts) if parts else np.zeros((0, 48, 48), np.uint8)


def row_usage(df: pd.DataFrame) -> list[str]:
    """Each row's FER2013 Usage: from a Kaggle file name (``PublicTest_123.jpg``), else from its split."""
    names = df[Col.PATH].astype(str).str.rsplit("/", n=1).str[-1]
    prefix = names.str.split("_", n=1).str[0]
    known = prefix.isin(list(FERPLUS_FOLDERS.values()))
    from_split = df[Col.SPLIT_ORIGINAL].map(SPLIT_USAGE).fillna("Training")
    return prefix.where(known, from_split).tolist()


# -- matching --------------------------------------------------------------------------------------
def _by_pixels(
    workspace: Workspace,
    info: VersionInfo,
    df: pd.DataFrame,
    table: VoteTable,
    folders: dict[str, Path],
    params: VotesParams,
    progress: Progress,
) -> tuple[np.ndarray, Matches]:
    """Per vote entry, its row position in ``df`` (or -1), matched by pixels among the active rows."""
    query = _decode(folders, table, progress)
    act = np.flatnonzero((df[Col.STATUS] == ACTIVE).to_numpy())
    pixels = load_pixels(workspace, info, df.iloc[act], 48, progress)
    progress.start("Matching by pixels", None)
    matches = match_images(query, table.usages, pixels, row_usage(df.iloc[act]), params.max_distance, params.min_margin)
    rows = np.where(matches.row >= 0, act[np.maximum(matches.row, 0)], -1)
    return rows, Matches(row=rows, distance=matches.distance, margin=matches.margin, status=matches.status)


def _csv_rows(df: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Positions of the rows a FER2013 CSV scan wrote, in CSV row order, and the CSV's store folder."""
    paths = df[Col.PATH].astype(str)
    parts = paths.str.extract(r"^" + STORE_PREFIX + r"csv/(?P<stem>[^/]+)/(?P<index>\d+)\.png$")
    ok = parts["index"].notna()
    if not ok.any():
        raise DatasetError(
            "fer2013new.csv pairs with a version scanned from a FER2013 CSV (row order), and this version has "
            "no CSV rows; scan fer2013.csv first, or pass the FER+ data folder to match by pixels"
        )
    stems = parts.loc[ok, "stem"].unique()
    if len(stems) > 1:
        raise DatasetError(f"the version holds rows of several CSVs ({', '.join(stems)}); import into one at a time")
    pos = np.flatnonzero(ok.to_numpy())
    order = np.argsort(parts.loc[ok, "index"].astype(int).to_numpy(), kind="stable")
    return pos[order], str(stems[0])


def _by_row_order(
    workspace: Workspace,
    info: VersionInfo,
    df: pd.DataFrame,
    table: VoteTable,
    path: Path,
    params: VotesParams,
    progress: Progress,
    notes: list[str],
) -> tuple[np.ndarray, Matches, str]:
    """Pair ``fer2013new.csv`` lines with the CSV's rows in order (Usage must agree on every pair).

    Lines pair by position when both have the same count; with the CSV rebuilt from the images FER+
    kept, the named lines pair by position. When the vote file is a shorter subset, its named images
    are matched by pixels (the FER+ folders must sit beside it) and must come in the CSV's order.
    """
    csv_rows, _ = _csv_rows(df)
    named = np.array([bool(n) for n in table.names])
    usage = np.array(row_usage(df.iloc[csv_rows]), dtype=object)
    n = len(table)
    if n == len(csv_rows):
        lines = np.arange(n)
    elif int(named.sum()) == len(csv_rows):
        lines = np.flatnonzero(named)
        notes.append(f"{n - len(lines)} line(s) FER+ dropped (no image name) have no CSV row: left out")
    elif n < len(csv_rows):
        return _subset_by_pixels(workspace, info, df, table, path, csv_rows, params, progress, notes)
    else:
        raise DatasetError(
            f"{path} has {n} lines ({int(named.sum())} named) and the version's CSV has {len(csv_rows)} rows; "
            "they do not line up in order: pass the fer2013new.csv of this CSV, or FER+'s data folder to "
            "match by pixels"
        )
    table_usage = np.array(table.usages, dtype=object)[lines]
    wrong = np.flatnonzero(table_usage != usage)
    if len(wrong):
        k = int(wrong[0])
        raise DatasetError(
            f"{path} line {table.lines[lines[k]]}: Usage {table_usage[k]} but CSV row {k} is {usage[k]}; the "
            f"files do not line up ({len(wrong)} disagreement(s)); pass the fer2013new.csv of this CSV"
        )
    rows = np.full(n, -1, dtype=np.int64)
    rows[lines] = csv_rows
    status = np.full(n, UNMATCHED, dtype=object)
    status[lines] = MATCHED
    zero = np.where(rows >= 0, 0.0, np.nan)
    return rows, Matches(row=rows, distance=zero, margin=np.full(n, np.nan), status=status), BY_ROW


def _subset_by_pixels(
    workspace: Workspace,
    info: VersionInfo,
    df: pd.DataFrame,
    table: VoteTable,
    path: Path,
    csv_rows: np.ndarray,
    params: VotesParams,
    progress: Progress,
    notes: list[str],
) -> tuple[np.ndarray, Matches, str]:
    folders = find_release(path.parent)
    if not folders:
        raise DatasetError(
            f"{path} has {len(table)} lines, fewer than the version's {len(csv_rows)} CSV rows, so which rows "
            "they are cannot be told from the order alone; put FER+'s data folder (FER2013Train/ ...) beside "
            "it to match its images by pixels"
        )
    named = [i for i, name in enumerate(table.names) if name]
    for i in named:
        if not (folders.get(table.usages[i], Path("/nonexistent")) / table.names[i]).is_file():
            raise DatasetError(
                f"{path} line {table.lines[i]}: votes for image '{table.names[i]}', which is not in FER+'s "
                f"{table.usages[i]} folder"
            )
    sub = VoteTable(
        names=[table.names[i] for i in named],
        usages=[table.usages[i] for i in named],
        counts=table.counts[named],
        lines=[table.lines[i] for i in named],
        files=[table.files[i] for i in named],
    )
    query = _decode(folders, sub, progress)
    pixels = load_pixels(workspace, info, df.iloc[csv_rows], 48, progress)
    found = match_images(query, sub.usages, pixels, row_usage(df.iloc[csv_rows]), 0.0, 0.0)
    order = found.row[found.row >= 0]
    if np.any(np.diff(order) < 0):
        notes.append("the vote file's images are not in the CSV's row order; matched by pixels regardless")
    rows = np.full(len(table), -1, dtype=np.int64)
    status = np.full(len(table), UNMATCHED, dtype=object)
    distance = np.full(len(table), np.nan)
    margin = np.full(len(table), np.nan)
    idx = np.array(named, dtype=np.int64)
    rows[idx] = np.where(found.row >= 0, csv_rows[np.maximum(found.row, 0)], -1)
    status[idx], distance[idx], margin[idx] = found.status, found.distance, found.margin
    notes.append(f"{len(table) - len(named)} line(s) FER+ dropped (no image name) left out")
    return rows, Matches(row=rows, distance=distance, margin=margin, status=status), BY_PIXELS


# -- writing ---------------------------------------------------------------------------------------
def with_votes(
    df: pd.DataFrame,
    table: VoteTable,
    rows: np.ndarray,
    matches: Matches,
    method: str,
    mapping: dict[str, str | None],
    classes: list[str],
    scheme: str,
) -> pd.DataFrame:
    """``df`` with fresh vote columns: the matched entries' votes on their rows, nulls elsewhere."""
    out = df.drop(columns=[c for c in VOTE_COLUMNS if c in df.columns]).copy()
    n = len(out)
    hit = rows >= 0
    at = rows[hit]
    counts = table.counts[hit].astype(np.int64)
    for j, col in enumerate(VOTE_COUNT_COLUMNS):
        values = pd.array([pd.NA] * n, dtype="Int16")
        values[at] = counts[:, j]
        out[col] = values
    total = pd.array([pd.NA] * n, dtype="Int16")
    total[at] = counts.sum(axis=1)
    out[VoteCol.N] = total
    picked = scheme_labels(counts, mapping, classes, scheme, current=out[Col.LABEL].to_numpy()[at].tolist())
    out[VoteCol.MAJORITY] = _strings(n, at, picked.labels)
    out[VoteCol.AGREEMENT] = _floats(n, at, agreement(counts))
    out[VoteCol.ENTROPY] = _floats(n, at, entropy_bits(counts))
    out[VoteCol.IMAGE] = _strings(n, at, [name or None for name, h in zip(table.names, hit, strict=True) if h])
    out[VoteCol.MATCH] = _strings(n, at, [method] * len(at))
    out[VoteCol.MATCH_DISTANCE] = _floats(n, at, matches.distance[hit])
    out[VoteCol.MATCH_MARGIN] = _floats(n, at, matches.margin[hit])
    return out


def _strings(n: int, at: np.ndarray, values: list[str | None]) -> pd.Series:
    col = pd.Series([None] * n, dtype="string")
    col.iloc[at] = pd.array(values, dtype="string")
    return col


def _floats(n: int, at: np.ndarray, values: np.ndarray) -> np.ndarray:
    col = np.full(n, np.nan, dtype=np.float32)
    col[at] = values
    return col


def _match_report(table: VoteTable, matches: Matches, df: pd.DataFrame) -> pd.DataFrame:
    """One line per vote entry: where it came from, the row it went to, how sure, and its votes."""
    ids = df[Col.IMAGE_ID].to_numpy(dtype=object)
    paths = df[Col.PATH].to_numpy(dtype=object)
    hit = matches.row >= 0
    frame = pd.DataFrame(
        {
            "file": table.files,
            "line": table.lines,
            "name": table.names,
            "usage": table.usages,
            "status": matches.status,
            "image_id": np.where(hit, ids[np.maximum(matches.row, 0)], None),
            "path": np.where(hit, paths[np.maximum(matches.row, 0)], None),
            "distance": np.round(matches.distance, 3),
            "margin": np.round(matches.margin, 3),
        }
    )
    for j, cls in enumerate(FERPLUS_CLASSES):
        frame[cls] = table.counts[:, j]
    return frame


def vote_coverage(path: Path | str) -> dict[str, int] | None:
    """Active rows with votes, and active rows, of a version's Parquet file; None when it has no votes.

    Reads two columns only, so ``fercurate log`` stays fast on large versions.
    """
    import pyarrow.parquet as pq

    names = pq.ParquetFile(path).schema_arrow.names
    if VoteCol.N not in names:
        return None
    table = pq.read_table(path, columns=[Col.STATUS, VoteCol.N])
    active = table.column(Col.STATUS).to_numpy(zero_copy_only=False) == ACTIVE
    voted = ~table.column(VoteCol.N).is_null().to_numpy(zero_copy_only=False)
    return {"active_with_votes": int((active & voted).sum()), "active": int(active.sum())}


def fer2013new_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` in FER+'s ``fer2013new.csv`` layout (same order): Usage, Image name, the ten counts.

    Rows without votes get an empty name and zero counts (FER+ writes its dropped rows the same way,
    with their votes).
    """
    from fercurate.votes.ferplus import NEW_CSV_HEADER

    voted = rows[VoteCol.N].notna().to_numpy()
    frame = pd.DataFrame(
        {
            NEW_CSV_HEADER[0]: rows[Col.SPLIT].map(SPLIT_USAGE).to_numpy(),
            NEW_CSV_HEADER[1]: rows[VoteCol.IMAGE].astype("string").fillna("").to_numpy(),
        }
    )
    for name, col in zip(FERPLUS_CLASSES, VOTE_COUNT_COLUMNS, strict=True):
        frame[name] = np.where(voted, rows[col].fillna(0).astype("int64").to_numpy(), 0)
    return frame
