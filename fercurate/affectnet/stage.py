"""The merge-affectnet stage: read a version, plan, convert in rounds, write a version and its reports.

See :mod:`fercurate.affectnet` for what the stage does; the plan (:mod:`.plan`) is pure, so a dry run
returns it without converting or writing anything.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from fercurate.affectnet.convert import _box, convert_faces
from fercurate.affectnet.params import (
    ADDED_COLUMNS,
    BOX_COLUMNS,
    SOURCE_AFFECTNET,
    MergeParams,
    parse_target,
)
from fercurate.affectnet.plan import (
    MergePlan,
    _class_seed,
    allocate,
    plan_merge,
    planned_after,
)
from fercurate.affectnet.sources import SKIPPED_COLUMNS, Source, read_source, resolve_mapping
from fercurate.counts import class_by_split
from fercurate.dedup.params import DedupParams
from fercurate.engine import Engine
from fercurate.errors import DatasetError
from fercurate.manifest import (
    ACTIVE,
    SPLITS,
    Col,
    atomic_write,
    atomic_write_bytes,
)
from fercurate.progress import NullProgress, Progress
from fercurate.reports import merge_chart, nested, to_dict
from fercurate.workspace import PixelCache, VersionInfo, Workspace, load_pixels

#: Convert this many candidates per missing face in a round, so a few failures do not cost a round.
_ROUND_OVERSHOOT = 1.15
_ROUND_EXTRA = 4
_CONVERT_BATCH = 64


@dataclass(frozen=True)
class MergeResult:
    """The plan, what was done, and the version written (``None`` on a dry run).

    ``plan`` has one row per dataset class: ``before`` (active rows counted for balancing),
    ``target``, ``need``, ``available`` (usable candidates in the source), ``planned``
    (``min(need, available)``), ``examined`` (candidates converted), ``added`` and ``shortfall``.
    ``before`` / ``after`` are class x split tables of active rows with a ``total`` column.
    ``matched_as`` names the tolerances new faces were matched with against the dataset and each
    other: the newest dedup run's in the version's lineage (``dedup.lineage_tolerances``).
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
    matched_as: str = "dedup's defaults"  # whose tolerances looked for copies of dataset images
    seconds: float = 0.0

    @property
    def added(self) -> int:
        return int(self.plan["added"].sum())

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self, added=self.added)


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def merge_affectnet(
    workspace: Workspace, params: MergeParams, progress: Progress | None = None, engine: Engine | None = None
) -> MergeResult:
    """Add converted AffectNet faces to a manifest version until each class reaches its target.

    Raises:
        DatasetError: for an unreadable source, missing CSV columns, or a source with none of the
            dataset's classes.
        InputError: for bad options (target, fraction, splits, ratios, margin, ``--map``).
        WorkspaceError: for a missing version or a busy workspace.
    """
    progress = progress or NullProgress()
    started = time.perf_counter()
    goal = parse_target(params.target)
    source = read_source(params.source, params.csv)
    with nullcontext() if params.dry_run else workspace.lock("fercurate merge-affectnet"):
        info, df = workspace.read(params.version)
        size = params.image_size or _dataset_image_size(workspace, info)
        act = df[df[Col.STATUS] == ACTIVE]
        classes = sorted(act[Col.LABEL].unique().tolist())
        mapping = resolve_mapping(source.rows[Col.SOURCE_LABEL].tolist(), classes, params.mapping)
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
                f"({', '.join(classes)}); pass mapping to say which source class is which, e.g. "
                f"{next(iter(sorted(mapping)), 'surprised')}={classes[0] if classes else 'surprise'}",
                param="mapping",
            )
        plan = plan_merge(df, source, mapping, params, goal)
        notes = list(source.notes)
        before = class_by_split(df)
        from fercurate.dedup import lineage_tolerances

        tolerances, matched_as = lineage_tolerances(workspace, info.version)
        if params.dry_run:
            return replace(
                _dry_run_result(params, info, source, size, mapping, plan, before, notes, started),
                matched_as=matched_as,
            )

        accepted, rejected, examined = _convert_in_rounds(
            workspace, info, act, plan, size, params, tolerances, progress, engine or Engine()
        )
        skipped = pd.concat([plan.skipped, rejected], ignore_index=True)
        cands, classes = plan.candidates, plan.classes
        table = plan.table.copy()
        table["examined"] = pd.Series(examined)
        table["added"] = pd.Series({c: len(accepted[c]) for c in classes})
        table["shortfall"] = table["need"] - table["added"]
        for c in classes:
            if table.loc[c, "shortfall"] > 0:
                notes.append(
                    f"{c}: added {table.loc[c, 'added']} of the {table.loc[c, 'need']} needed; the source has no "
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
                    "plan": nested(table),
                    "skipped": _skip_counts(skipped),
                    "matched_as": matched_as,
                },
            },
        )
        with workspace.report(version.version) as report:
            skipped_path = report / "merge_skipped.parquet"
            frame = skipped.astype(object).reset_index(drop=True)
            atomic_write(skipped_path, lambda tmp: frame.to_parquet(tmp, index=False))
            after = class_by_split(merged)
            chart_path = report / "merge_chart.png"
            merge_chart(before, after, chart_path, f"merge-affectnet {info.version} -> {version.version}")
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
        plan=table,
        before=before,
        after=after,
        added_by_split={s: int((new[Col.SPLIT] == s).sum()) for s in SPLITS},
        skipped=_skip_counts(skipped),
        skipped_path=skipped_path,
        chart_path=chart_path,
        notes=notes,
        seconds=time.perf_counter() - started,
        matched_as=matched_as,
    )


def _dataset_image_size(workspace: Workspace, info: VersionInfo) -> int:
    scan = workspace.find_stage("scan", info.version)
    for record in (info, scan):
        if record is not None and isinstance(record.extra.get("image_size"), int):
            return int(record.extra["image_size"])
    return 48


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
    plan: MergePlan,
    size: int,
    params: MergeParams,
    tolerances: DedupParams,
    progress: Progress,
    engine: Engine,
) -> tuple[dict[str, list[dict[str, Any]]], pd.DataFrame, dict[str, int]]:
    """Convert the plan's candidates class by class in seeded order until each need is met.

    A candidate is accepted when it converts, passes the quality checks, is not a near-duplicate of
    an active dataset image, nor of a face accepted before it (matched with ``tolerances``: a
    dataset deduplicated with ``--photos`` has re-crops of its images turned away too). Rounds
    convert a little more than the remaining need, so a few failures rarely cost another round.

    Returns:
        The accepted records per class (with ``index`` into ``cands``), the rejected rows and the
        number of candidates examined per class.
    """
    from fercurate.dedup import find_duplicate_pairs, match_against

    cands, order, needs = plan.candidates, plan.order, plan.needs
    accepted: dict[str, list[dict[str, Any]]] = {c: [] for c in order}
    examined = {c: 0 for c in order}
    rejected: list[dict[str, Any]] = []
    if not any(needs[c] > 0 and order[c] for c in order):
        return accepted, pd.DataFrame(rejected, columns=list(SKIPPED_COLUMNS)), examined
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
        parts = engine.map_batches(
            convert, items, batch_size=_CONVERT_BATCH, workers=params.workers, progress=progress.advance
        )
        records = [r for part in parts for r in part]
        ok = [k for k, r in enumerate(records) if r["ok"]]
        for k, r in enumerate(records):
            if not r["ok"]:
                rejected.append(_rejection(rows[batch[k]], r["reason"], r["detail"]))
        faces = (
            np.stack([np.frombuffer(records[k]["pixels"], np.uint8).reshape(size, size) for k in ok])
            if ok
            else (np.zeros((0, size, size), np.uint8))
        )
        query = _dedup_view(faces, size)
        of_dataset = _best_matches(match_against, query, dataset, tolerances)
        of_taken = _best_matches(match_against, query, np.stack(taken), tolerances) if taken else {}
        partners: dict[int, set[int]] = {}
        if len(query) > 1:
            for a, b in find_duplicate_pairs(query, tolerances)[["i", "j"]].itertuples(index=False):
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
    frame = pd.DataFrame(rejected, columns=list(SKIPPED_COLUMNS))
    return accepted, frame, examined


def _rejection(row: dict[str, Any], reason: str, detail: str | None) -> dict[str, Any]:
    return dict(zip(SKIPPED_COLUMNS, (row[Col.SOURCE_PATH], row[Col.SOURCE_LABEL], reason, detail), strict=True))


def _best_matches(
    match_against: Any, query: np.ndarray, reference: np.ndarray, tolerances: DedupParams
) -> dict[int, tuple[int, float]]:
    if len(query) == 0 or len(reference) == 0:
        return {}
    found = match_against(query, reference, tolerances)
    return {
        int(q): (int(r), float(s)) for q, r, s in found[["query", "reference", "similarity"]].itertuples(index=False)
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
        stem = "/".join(p for p in Path(os.path.splitext(row[Col.SOURCE_PATH])[0]).parts if p not in ("..", ".", "/"))
        # the sha in the name keeps stored files immutable: another margin or size is another file
        value, file = workspace.store_path(f"{SOURCE_AFFECTNET}/{stem}_{rec['sha256'][:10]}.png")
        if not file.exists():
            atomic_write_bytes(file, rec["png"])
        ids.append(row[Col.IMAGE_ID])
        paths.append(value)
        splits.append(split)
        labels.append(row["label"])
        shas.append(rec["sha256"])
        src_paths.append(row[Col.SOURCE_PATH])
        src_labels.append(row[Col.SOURCE_LABEL])
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
            Col.SOURCE_PATH: pd.Series(src_paths, dtype=object),
            Col.SOURCE_LABEL: pd.Series(src_labels, dtype=object),
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
    plan: MergePlan,
    before: pd.DataFrame,
    notes: list[str],
    started: float,
) -> MergeResult:
    """The plan alone: what would be added where, assuming every planned candidate is usable."""
    table = plan.table.copy()
    table["examined"] = 0
    table["added"] = 0
    table["shortfall"] = table["need"] - table["planned"]
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
        plan=table,
        before=before,
        after=planned_after(before, table, params),
        added_by_split={s: 0 for s in SPLITS},
        skipped=_skip_counts(plan.skipped),
        notes=notes,
        seconds=time.perf_counter() - started,
    )
