"""``fercurate dedup`` as a library function: hash, match, group, resolve, report, commit."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fercurate.dedup.cache import HashCache
from fercurate.dedup.hashers import HASHERS, to_hex
from fercurate.dedup.match import (
    KIND_EXACT,
    KIND_MIRROR,
    KIND_NEAR,
    KIND_RECROP,
    exact_groups,
    find_pairs,
    row_keys,
)
from fercurate.dedup.params import DedupParams, describe, matching_params
from fercurate.engine import Engine
from fercurate.manifest import ACTIVE, REMOVED, SPLITS, Col
from fercurate.progress import NullProgress, Progress
from fercurate.reports import to_dict
from fercurate.workspace import VersionInfo, Workspace, load_pixels, release_pages

#: Columns dedup writes (besides the hash column, named after the hasher).
DUP_GROUP = Col.DUP_GROUP
DUP_GROUP_SIZE = Col.DUP_GROUP_SIZE
DUP_KIND = Col.DUP_KIND
DUP_NEAREST = Col.DUP_NEAREST
DUP_SIMILARITY = Col.DUP_SIMILARITY
DUP_COLUMNS = (DUP_GROUP, DUP_GROUP_SIZE, DUP_KIND, DUP_NEAREST, DUP_SIMILARITY)
RELATED_GROUP = Col.RELATED_GROUP
RELATED_GROUP_SIZE = Col.RELATED_GROUP_SIZE

#: Split preference of the resolution rule: a train copy is kept over a val one over a test one.
SPLIT_RANK = {s: k for k, s in enumerate(SPLITS)}
#: How many cross-split pairs and groups the contact sheets show.
SHEET_PAIRS = 32
SHEET_GROUPS = 12
SHEET_GROUP_MEMBERS = 8


@dataclass
class DedupResult:
    """What dedup found and did; ``version`` is None for a dry run.

    ``leakage``: one entry per pair of splits, how many active images of each split have a duplicate
    in the other. ``conflicts``: the groups whose members carry different labels, with their label
    counts and what was done with them. ``related_*``: the related links (other frames of one
    sitting, never removed), their groups (frames and their duplicates), and the groups whose
    active members sit in more than one split.
    """

    version: VersionInfo | None
    parent: str
    dry_run: bool
    hasher: str
    active: int
    hashed: int
    hashes_cached: int
    pairs: int
    pairs_by_kind: dict[str, int]
    groups: int
    rows_in_groups: int
    largest_group: int
    removed: int
    leakage: list[dict[str, Any]]
    conflicts: list[dict[str, Any]]
    conflict_mode: str
    related_pairs: int
    related_groups: int
    rows_in_related_groups: int
    related_groups_across_splits: int
    reports: dict[str, str]
    params: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def dedup(
    workspace: Workspace, params: DedupParams, progress: Progress | None = None, engine: Engine | None = None
) -> DedupResult:
    """Find duplicate images in a version's active rows, group them and commit the resolved version.

    Hashes, features and pair checks run on ``engine`` (default: this machine); the search and the
    grouping run here.

    Raises:
        InputError: for an option out of its range.
        WorkspaceError: no workspace or version (run ``fercurate scan`` first), or a busy workspace.
    """
    progress = progress or NullProgress()
    engine = engine or Engine()
    started = time.perf_counter()
    workspace.require_versions()  # a clear "run fercurate scan first" before touching the disk
    with workspace.lock("fercurate dedup"):
        info, df = workspace.read(params.version)
        act = df[df[Col.STATUS] == ACTIVE].reset_index()  # "index": the row's label in df
        progress.start("Loading pixels", None)
        # memory-mapped: a million faces are 2.3 GB, which the driver need not hold as its own memory
        pixels = load_pixels(workspace, info, act, params.image_size, progress, mapped=True)
        hashes, hashed = _hashes(workspace, act, pixels, params, progress, engine)
        progress.start("Finding duplicates", None)
        # scan marks flat images invalid, so a flat active row is a file that no longer decodes;
        # matching it would make every such row a duplicate of the others
        flat = _flat_rows(pixels)
        readable = np.nonzero(~flat)[0]
        every = len(readable) == len(pixels)  # then no copy of what may be gigabytes of pixels
        keys = _row_keys(pixels)
        pairs, related = find_pairs(
            pixels if every else pixels[readable],
            params,
            hashes[readable],
            engine,
            related=params.related,
            keys=keys if every else keys[readable],
        )
        for table in (pairs, related):
            table["i"], table["j"] = readable[table["i"].to_numpy(int)], readable[table["j"].to_numpy(int)]
        release_pages(pixels)  # read whole by the search's passes; the rest reads the pairs' images
        groups = _group(act, pixels, pairs, keys)
        release_pages(pixels)
        related, related_groups = _related_groups(act, pairs, related)
        resolution, conflicts = _resolve(act, groups, params.conflicts)
        out = _new_manifest(df, act, hashes, groups, resolution, params.hasher, related_groups)
        removed = int(len(resolution))
        summary = {
            "pairs": len(pairs),
            "groups": int(groups[DUP_GROUP].nunique()) if len(groups) else 0,
            "removed": removed,
            "related_pairs": len(related),
        }
        version = None
        if not params.dry_run:
            version = workspace.commit(
                out,
                stage="dedup",
                parent=info,
                params={**asdict(params), "version": info.version},
                extra=summary,
            )
    progress.start("Writing reports", None)
    writing = workspace.report(version.version) if version is not None else nullcontext(_dry_run_dir(workspace, info))
    with writing as report_dir:
        reports = _write_reports(report_dir, act, pixels, pairs, groups, resolution, related)
    notes = []
    if flat.any():
        notes.append(f"{int(flat.sum())} active row(s) could not be read (flat pixels) and were left out")
    if params.dry_run:
        notes.append("dry run: no version written; rerun without --dry-run to apply")
    return DedupResult(
        version=version,
        parent=info.version,
        dry_run=params.dry_run,
        hasher=params.hasher,
        active=len(act),
        hashed=hashed,
        hashes_cached=len(act) - hashed,
        pairs=len(pairs),
        pairs_by_kind={k: int(v) for k, v in pairs["kind"].value_counts().sort_index().items()},
        groups=summary["groups"],
        rows_in_groups=len(groups),
        largest_group=int(groups[DUP_GROUP_SIZE].max()) if len(groups) else 0,
        removed=removed,
        leakage=_leakage(act, groups),
        conflicts=conflicts,
        conflict_mode=params.conflicts,
        related_pairs=len(related),
        related_groups=int(related_groups[RELATED_GROUP].nunique()) if len(related_groups) else 0,
        rows_in_related_groups=len(related_groups),
        related_groups_across_splits=_across_splits(act, related_groups, resolution),
        reports=reports,
        params={**asdict(params), "version": info.version},
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def lineage_tolerances(workspace: Workspace, version: str) -> tuple[DedupParams, str]:
    """The matching tolerances of the newest dedup run in ``version``'s lineage, and how to say so.

    Stages that look for a photo's copies after dedup ran (the benchmark's gold set, merge-affectnet's
    new faces) match as that run did: a dataset deduplicated with ``--photos`` has re-crops looked for
    too. Without a dedup run in the lineage, the defaults.

    Returns:
        The tolerances, and a phrase naming them ("v0001's dedup (--max-zoom 0.2 ...)" or "dedup's
        defaults") for reports.
    """
    runs = [i for i in workspace.lineage(version) if i.stage == "dedup"]
    if not runs:
        return DedupParams(), "dedup's defaults"
    tolerances = matching_params(runs[-1].params)
    return tolerances, f"{runs[-1].version}'s dedup ({describe(tolerances)})"


# -- hashes ----------------------------------------------------------------------------------------
def _hashes(
    workspace: Workspace,
    act: pd.DataFrame,
    pixels: np.ndarray,
    params: DedupParams,
    progress: Progress,
    engine: Engine,
) -> tuple[np.ndarray, int]:
    """The hasher's hash of every active row, from the cache where it has them; and how many were new."""
    cache = HashCache(workspace.cache_dir, params.hasher, params.image_size)
    shas = act[Col.SHA256].astype(str).tolist()
    hashes, missing = cache.get(shas)
    if missing:
        progress.start(f"Hashing ({params.hasher})", len(missing))
        todo = pixels if len(missing) == len(pixels) else pixels[missing]
        fresh = np.concatenate([np.zeros(0, np.uint64), *engine.map_images(HASHERS[params.hasher]().hash, todo)])
        hashes[missing] = fresh
        cache.add([shas[i] for i in missing], fresh)
        progress.advance(len(missing))
    return hashes, len(missing)


def _flat_rows(pixels: np.ndarray) -> np.ndarray:
    """Whether each image is flat (one value), a slice at a time over memory-mapped pixels (as
    :func:`_row_keys`)."""
    return _local_pass(_flat, pixels, np.bool_)


def _flat(pixels: np.ndarray) -> np.ndarray:
    return pixels.max(axis=(1, 2)) == pixels.min(axis=(1, 2))


def _local_pass(
    fn: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, dtype: Any, batch_size: int = 4096
) -> np.ndarray:
    """``fn`` of every image on the local engine, joined: a slice at a time over memory-mapped pixels,
    their pages dropped after each, so a million faces are never all resident."""
    return np.concatenate([np.zeros(0, dtype=dtype), *Engine().map_images(fn, pixels, batch_size=batch_size)])


# -- grouping --------------------------------------------------------------------------------------
def _row_keys(pixels: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """:func:`row_keys` of every image, on the local engine whatever ``--engine`` says (Python salts
    its ``hash`` per process, so all keys must come from this one); it goes a slice at a time over
    memory-mapped pixels and drops their pages after each, as every pass over them does."""
    return _local_pass(row_keys, pixels, np.int64, batch_size)


def _group(act: pd.DataFrame, pixels: np.ndarray, pairs: pd.DataFrame, keys: np.ndarray | None = None) -> pd.DataFrame:
    """The grouped rows: position in ``act``, group id and size, kind, nearest duplicate, similarity.

    Groups are the connected components of the duplicate pairs. A row's kind is ``exact`` when all
    its links are exact, ``near`` when one of them is near, else ``recrop`` or ``mirror``; its nearest duplicate is
    an identical image when it has one, else its most similar link (ties: the smaller image_id).
    Identical images share every link of the one they are identical to.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    columns = ["pos", *DUP_COLUMNS]
    n = len(act)
    if pairs.empty:
        return pd.DataFrame({c: [] for c in columns})
    i, j = pairs["i"].to_numpy(), pairs["j"].to_numpy()
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    ids = act[Col.IMAGE_ID].astype(str).to_numpy()
    sizes = np.bincount(component, minlength=n)
    members = np.nonzero(sizes[component] > 1)[0]
    frame = pd.DataFrame({"pos": members, "component": component[members], "image_id": ids[members]})
    first_id = frame.groupby("component")["image_id"].transform("min")
    frame[DUP_GROUP] = "g" + first_id
    frame[DUP_GROUP_SIZE] = sizes[frame["component"].to_numpy()]

    # identical images: their class is the first of them; the class's smallest image_id names it
    first = exact_groups(pixels, keys)
    cls = pd.DataFrame({"pos": np.arange(n), "cls": first, "image_id": ids})
    cls_min = cls.groupby("cls")["image_id"].min()
    cls_size = cls.groupby("cls").size()
    frame["cls"] = first[members]
    frame["twins"] = cls_size.reindex(frame["cls"]).to_numpy() - 1
    # the smallest image_id among a row's identical twins (itself excluded)
    ranked = cls[cls["pos"].isin(members)].sort_values(["cls", "image_id"], kind="stable")
    rank = ranked.groupby("cls").cumcount()
    smallest = ranked[rank == 0].set_index("cls")["image_id"]
    second = ranked[rank == 1].set_index("cls")["image_id"]
    mine_first = smallest.reindex(frame["cls"]).to_numpy(dtype=object)
    mine_second = second.reindex(frame["cls"]).to_numpy(dtype=object)
    frame["twin"] = np.where(frame["image_id"].to_numpy(dtype=object) == mine_first, mine_second, mine_first)

    # non-exact links, both directions, between classes
    near = pairs[pairs["kind"] != KIND_EXACT]
    links = pd.DataFrame(
        {
            "src": np.concatenate([first[near["i"]], first[near["j"]]]),
            "dst": np.concatenate([first[near["j"]], first[near["i"]]]),
            "similarity": np.tile(near["similarity"].to_numpy(), 2),
            "kind": np.tile(near["kind"].to_numpy(), 2),
        }
    )
    links["dst_id"] = cls_min.reindex(links["dst"]).to_numpy()
    best = links.sort_values(["src", "similarity", "dst_id"], ascending=[True, False, True], kind="stable")
    best = best.drop_duplicates("src").set_index("src")
    has_near = links[links["kind"] == KIND_NEAR].groupby("src").size()
    has_mirror = links[links["kind"] == KIND_MIRROR].groupby("src").size()
    has_recrop = links[links["kind"] == KIND_RECROP].groupby("src").size()

    def linked(counts: pd.Series) -> np.ndarray:
        return counts.reindex(frame["cls"]).fillna(0).to_numpy() > 0

    # a row's kind: near before recrop before mirror before exact (the closest link it has)
    near_kind = np.select(
        [linked(has_near), linked(has_recrop), linked(has_mirror)], [KIND_NEAR, KIND_RECROP, KIND_MIRROR], KIND_EXACT
    )
    frame[DUP_KIND] = near_kind
    has_twin = frame["twins"].to_numpy() > 0
    link = best.reindex(frame["cls"])
    frame[DUP_NEAREST] = np.where(has_twin, frame["twin"].to_numpy(dtype=object), link["dst_id"].to_numpy(dtype=object))
    frame[DUP_SIMILARITY] = np.where(has_twin, 1.0, link["similarity"].to_numpy(dtype=float))
    return frame[columns].sort_values("pos").reset_index(drop=True)


def _components(n: int, *tables: pd.DataFrame) -> np.ndarray:
    """The connected component of each of ``n`` positions, linked by the ``i``-``j`` rows of ``tables``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i = np.concatenate([np.zeros(0, np.int64), *(t["i"].to_numpy(np.int64) for t in tables)])
    j = np.concatenate([np.zeros(0, np.int64), *(t["j"].to_numpy(np.int64) for t in tables)])
    return connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)[1]


def _related_groups(act: pd.DataFrame, pairs: pd.DataFrame, related: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The related links between different duplicate groups, and the rows of each related group.

    A related group is a connected component of the duplicate and related links that holds a related
    link: the frames of one sitting together with their duplicates, kept or removed, so that the kept
    copy of each carries the group into ``split``. Its id is ``r`` + its smallest ``image_id``. A
    related link inside one duplicate group (its ends are copies of one photo already) is dropped.

    Returns:
        The related links kept, and ``pos``, ``related_group``, ``related_group_size`` per member.
    """
    columns = ["pos", RELATED_GROUP, RELATED_GROUP_SIZE]
    n = len(act)
    if related.empty:
        return related, pd.DataFrame({c: [] for c in columns})
    dup = _components(n, pairs)
    related = related[dup[related["i"].to_numpy(np.int64)] != dup[related["j"].to_numpy(np.int64)]]
    related = related.reset_index(drop=True)
    both = _components(n, pairs, related)
    linked = np.zeros(n, dtype=bool)
    linked[np.unique(both[related["i"].to_numpy(np.int64)])] = True
    members = np.nonzero(linked[both])[0]
    frame = pd.DataFrame(
        {"pos": members, "component": both[members], "image_id": act[Col.IMAGE_ID].astype(str).to_numpy()[members]}
    )
    frame[RELATED_GROUP] = "r" + frame.groupby("component")["image_id"].transform("min")
    frame[RELATED_GROUP_SIZE] = frame.groupby("component")["pos"].transform("size")
    return related, frame[columns].reset_index(drop=True)


def _across_splits(act: pd.DataFrame, related_groups: pd.DataFrame, resolution: pd.DataFrame) -> int:
    """Related groups whose members left active by the resolution sit in more than one split."""
    if related_groups.empty:
        return 0
    active = related_groups[~related_groups["pos"].isin(resolution["pos"])]
    splits = act[Col.SPLIT].astype(str).to_numpy()[active["pos"].to_numpy(np.int64)]
    return int((pd.Series(splits).groupby(active[RELATED_GROUP].to_numpy()).nunique() > 1).sum())


# -- resolution ------------------------------------------------------------------------------------
def _resolve(act: pd.DataFrame, groups: pd.DataFrame, mode: str) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Which grouped rows to remove (``pos``, ``reason``) and the label-conflict groups.

    The kept member of a group is the first by: its label is the group's strict-majority label, its
    split (train, val, test), the larger original image, the path. Conflict groups (more than one
    label) follow ``mode``; see :mod:`fercurate.dedup`.
    """
    if groups.empty:
        return pd.DataFrame({"pos": [], "reason": []}), []
    rows = act.iloc[groups["pos"].to_numpy()]
    m = pd.DataFrame(
        {
            "pos": groups["pos"].to_numpy(),
            "group": groups[DUP_GROUP].to_numpy(),
            "size": groups[DUP_GROUP_SIZE].to_numpy(),
            "image_id": rows[Col.IMAGE_ID].astype(str).to_numpy(),
            "label": rows[Col.LABEL].astype(str).to_numpy(),
            "split": rows[Col.SPLIT].astype(str).to_numpy(),
            "split_rank": rows[Col.SPLIT].map(SPLIT_RANK).fillna(len(SPLITS)).to_numpy(),
            "area": -(
                rows[Col.WIDTH].astype("Float64").fillna(0) * rows[Col.HEIGHT].astype("Float64").fillna(0)
            ).to_numpy(dtype=float),
            "path": rows[Col.PATH].astype(str).to_numpy(),
        }
    )
    counts = m.groupby(["group", "label"]).size().rename("n").reset_index()
    counts["size"] = counts["group"].map(m.groupby("group").size())
    n_labels = counts.groupby("group").size()
    majority = counts[counts["n"] * 2 > counts["size"]].set_index("group")["label"]
    top = counts["n"] == counts.groupby("group")["n"].transform("max")
    plurality = counts[top].groupby("group")["label"].apply(set)

    m["conflict"] = m["group"].map(n_labels).to_numpy() > 1
    m["majority"] = m["group"].map(majority)
    has_majority = m["majority"].notna()
    preferred = np.where(
        has_majority,
        m["label"] == m["majority"],
        [lbl in plurality.get(g, set()) for g, lbl in zip(m["group"], m["label"], strict=True)],
    )
    m["not_preferred"] = ~preferred
    order = m.sort_values(["group", "not_preferred", "split_rank", "area", "path"], kind="stable")
    keeper = order.drop_duplicates("group").set_index("group")["image_id"]
    m["keeper"] = m["group"].map(keeper)

    # what happens to each group
    remove_all = m["conflict"] & ~has_majority & (mode == "remove-all")
    keep_all = m["conflict"] & (mode == "keep-all")
    removed = m[~keep_all & (remove_all | (m["image_id"] != m["keeper"]))].copy()
    removed["reason"] = np.where(
        remove_all[removed.index], "duplicate_conflict:" + removed["group"], "duplicate_of:" + removed["keeper"]
    )

    conflicts = []
    for group, members in m[m["conflict"]].groupby("group", sort=True):
        labels = members["label"].value_counts()
        if mode == "keep-all":
            action = "kept all"
        elif remove_all[members.index].any():
            action = "removed all (no majority label)"
        else:
            kept = members[members["image_id"] == members["keeper"]].iloc[0]
            action = f"kept {kept['image_id']} ({kept['label']})"
        conflicts.append(
            {
                "group": group,
                "size": len(members),
                "labels": {str(k): int(v) for k, v in sorted(labels.items())},
                "splits": {str(k): int(v) for k, v in sorted(members["split"].value_counts().items())},
                "members": sorted(members["image_id"].tolist())[:50],
                "resolution": action,
            }
        )
    return removed[["pos", "reason"]].reset_index(drop=True), conflicts


def _new_manifest(
    df: pd.DataFrame,
    act: pd.DataFrame,
    hashes: np.ndarray,
    groups: pd.DataFrame,
    resolution: pd.DataFrame,
    hasher: str,
    related_groups: pd.DataFrame,
) -> pd.DataFrame:
    """The input manifest with the hash, dup and related columns set for active rows and duplicates removed."""
    out = df.copy()
    index = act["index"].to_numpy()
    hex_col = pd.Series(out[hasher] if hasher in out.columns else None, index=out.index, dtype=object)
    hex_col.loc[index] = to_hex(hashes)
    out[hasher] = hex_col
    for col in DUP_COLUMNS:
        out[col] = None
    if len(groups):
        labels = index[groups["pos"].to_numpy()]
        out.loc[labels, DUP_GROUP] = groups[DUP_GROUP].to_numpy()
        out.loc[labels, DUP_KIND] = groups[DUP_KIND].to_numpy()
        out.loc[labels, DUP_NEAREST] = groups[DUP_NEAREST].to_numpy()
        size = pd.Series(pd.NA, index=out.index, dtype="Int32")
        size.loc[labels] = groups[DUP_GROUP_SIZE].to_numpy()
        out[DUP_GROUP_SIZE] = size
        similarity = pd.Series(np.nan, index=out.index, dtype=float)
        similarity.loc[labels] = groups[DUP_SIMILARITY].to_numpy(dtype=float)
        out[DUP_SIMILARITY] = similarity
    else:
        out[DUP_GROUP_SIZE] = pd.Series(pd.NA, index=out.index, dtype="Int32")
        out[DUP_SIMILARITY] = np.nan
    for col in (DUP_GROUP, DUP_KIND, DUP_NEAREST):
        out[col] = out[col].astype(object)
    group = pd.Series(None, index=out.index, dtype=object)
    size = pd.Series(pd.NA, index=out.index, dtype="Int32")
    if len(related_groups):
        labels = index[related_groups["pos"].to_numpy(np.int64)]
        group.loc[labels] = related_groups[RELATED_GROUP].to_numpy()
        size.loc[labels] = related_groups[RELATED_GROUP_SIZE].to_numpy()
    out[RELATED_GROUP], out[RELATED_GROUP_SIZE] = group, size
    if len(resolution):
        labels = index[resolution["pos"].to_numpy()]
        out.loc[labels, Col.STATUS] = REMOVED
        out.loc[labels, Col.REASON] = resolution["reason"].to_numpy()
    return out


# -- leakage ---------------------------------------------------------------------------------------
def _leakage(act: pd.DataFrame, groups: pd.DataFrame) -> list[dict[str, Any]]:
    """For each pair of splits, the active images of each that have a duplicate in the other."""
    out = []
    if groups.empty:
        return [{"splits": f"{a}-{b}", a: 0, b: 0, "groups": 0} for a, b in _split_pairs()]
    member = pd.DataFrame(
        {"group": groups[DUP_GROUP].to_numpy(), "split": act[Col.SPLIT].to_numpy()[groups["pos"].to_numpy()]}
    )
    present = member.groupby("group")["split"].apply(set)
    member["present"] = member["group"].map(present)
    for a, b in _split_pairs():
        spans = present.map(lambda s, a=a, b=b: a in s and b in s)
        in_a = int(((member["split"] == a) & member["present"].map(lambda s, b=b: b in s)).sum())
        in_b = int(((member["split"] == b) & member["present"].map(lambda s, a=a: a in s)).sum())
        out.append({"splits": f"{a}-{b}", a: in_a, b: in_b, "groups": int(spans.sum())})
    return out


def _split_pairs() -> list[tuple[str, str]]:
    return [(a, b) for k, a in enumerate(SPLITS) for b in SPLITS[k + 1 :]]


# -- reports ---------------------------------------------------------------------------------------
def _dry_run_dir(workspace: Workspace, info: VersionInfo) -> Path:
    path = workspace.reports_dir / "dry-run" / f"dedup-{info.version}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_reports(
    folder: Path,
    act: pd.DataFrame,
    pixels: np.ndarray,
    pairs: pd.DataFrame,
    groups: pd.DataFrame,
    resolution: pd.DataFrame,
    related: pd.DataFrame,
) -> dict[str, str]:
    """The pairs and related tables and the contact sheets; returns their paths.

    Related links get a table of their own, with the pair table's columns (``kind`` ``related``)
    plus ``difference``: the pair table lists duplicates, and whoever reads it (to score dedup, to
    resolve pairs by hand) takes every row for the same photo; ``pd.concat`` of the two gives all links.
    """
    from fercurate.manifest import atomic_write

    table = _link_table(act, pairs)
    links = _link_table(act, related)
    links["difference"] = related["difference"].to_numpy(dtype=float)
    i, j = pairs["i"].to_numpy(), pairs["j"].to_numpy()
    paths = {
        "pairs": folder / "dedup_pairs.parquet",
        "related": folder / "dedup_related.parquet",
        "cross_split": folder / "dedup_cross_split.png",
        "groups": folder / "dedup_groups.png",
        "related_sheet": folder / "dedup_related.png",
    }
    atomic_write(paths["pairs"], lambda tmp: table.to_parquet(tmp, index=False))
    atomic_write(paths["related"], lambda tmp: links.to_parquet(tmp, index=False))
    sheet = _cross_split_sheet(table, pixels, i, j)
    atomic_write(paths["cross_split"], lambda tmp: sheet.save(tmp, format="PNG"))
    sheet = _groups_sheet(act, pixels, groups, resolution)
    atomic_write(paths["groups"], lambda tmp: sheet.save(tmp, format="PNG"))
    sheet = _related_sheet(links, pixels, related["i"].to_numpy(np.int64), related["j"].to_numpy(np.int64))
    atomic_write(paths["related_sheet"], lambda tmp: sheet.save(tmp, format="PNG"))
    return {k: str(v) for k, v in paths.items()}


def _link_table(act: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """The pair table's columns for the links ``pairs`` (``i``, ``j`` positions in ``act``)."""
    i, j = pairs["i"].to_numpy(np.int64), pairs["j"].to_numpy(np.int64)
    col = lambda name, pos: act[name].astype(str).to_numpy()[pos]  # noqa: E731
    return pd.DataFrame(
        {
            "image_id_a": col(Col.IMAGE_ID, i),
            "image_id_b": col(Col.IMAGE_ID, j),
            "split_a": col(Col.SPLIT, i),
            "split_b": col(Col.SPLIT, j),
            "label_a": col(Col.LABEL, i),
            "label_b": col(Col.LABEL, j),
            "hamming": pairs["hamming"].to_numpy(dtype=np.int64),
            "similarity": pairs["similarity"].to_numpy(dtype=float),
            "kind": pairs["kind"].astype(str).to_numpy(),
            "dy": pairs["dy"].to_numpy(dtype=np.int64),
            "dx": pairs["dx"].to_numpy(dtype=np.int64),
        }
    )


def _related_sheet(links: pd.DataFrame, pixels: np.ndarray, i: np.ndarray, j: np.ndarray) -> Any:
    """Related pairs side by side, the largest difference first (the ones worth a look)."""
    order = np.argsort(-links["difference"].to_numpy(), kind="stable")[:SHEET_PAIRS]
    title = f"Related frames (one sitting), largest difference first: {len(order)} of {len(links)}"
    return _pairs_sheet(links, pixels, i, j, order, "difference", title)


def _cross_split_sheet(table: pd.DataFrame, pixels: np.ndarray, i: np.ndarray, j: np.ndarray) -> Any:
    """Cross-split pairs side by side, least similar first (the ones worth a look)."""
    cross = np.nonzero(table["split_a"].to_numpy() != table["split_b"].to_numpy())[0]
    order = cross[np.argsort(table["similarity"].to_numpy()[cross], kind="stable")][:SHEET_PAIRS]
    title = f"Cross-split duplicate pairs, least similar first: {len(order)} of {len(cross)}"
    return _pairs_sheet(table, pixels, i, j, order, "similarity", title)


def _pairs_sheet(
    table: pd.DataFrame, pixels: np.ndarray, i: np.ndarray, j: np.ndarray, order: np.ndarray, value: str, title: str
) -> Any:
    """The pairs ``order`` of ``table`` side by side, captioned ``split/label <value>``."""
    from fercurate.images import contact_sheet

    images, captions, frames = [], [], []
    for k, p in enumerate(order):
        row = table.iloc[p]
        for pos, side in ((i[p], "a"), (j[p], "b")):
            images.append(pixels[pos])
            captions.append(f"{row[f'split_{side}']}/{row[f'label_{side}']} {row[value]:.3f}")
            frames.append(k)
    return contact_sheet(images, captions, columns=8, title=title, groups=frames or None)


def _groups_sheet(act: pd.DataFrame, pixels: np.ndarray, groups: pd.DataFrame, resolution: pd.DataFrame) -> Any:
    """The largest groups, one row each; the kept member's caption ends with '*'."""
    from fercurate.images import contact_sheet

    removed = set(resolution["pos"].tolist())
    sizes = groups.groupby(DUP_GROUP)[DUP_GROUP_SIZE].first().sort_values(ascending=False, kind="stable")
    chosen = sizes.index[:SHEET_GROUPS]
    width = int(min(SHEET_GROUP_MEMBERS, sizes.max())) if len(sizes) else 1
    images: list[np.ndarray] = []
    captions: list[str] = []
    frames: list[int] = []
    for k, gid in enumerate(chosen):
        members = groups[groups[DUP_GROUP] == gid]["pos"].to_numpy()[:width]
        for pos in members:
            images.append(pixels[pos])
            mark = "" if pos in removed else " *"
            captions.append(f"{act[Col.SPLIT].iloc[pos]}/{act[Col.LABEL].iloc[pos]}{mark}")
            frames.append(k)
        # blank tiles keep one group per row
        pad = width - len(members)
        images.extend([np.full(pixels.shape[1:], 255, np.uint8)] * pad)
        captions.extend([""] * pad)
        frames.extend([k] * pad)
    title = f"Largest duplicate groups ({len(chosen)} of {len(sizes)}); * = kept"
    return contact_sheet(images, captions, columns=width, title=title, groups=frames or None)
