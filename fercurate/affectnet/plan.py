"""The merge plan, a pure function of the manifest, the source and the options (no I/O).

:func:`plan_merge` decides the target of every class, what each class lacks, and the seeded order in
which its candidates will be tried; a dry run is this plan and nothing else. :func:`allocate` and
:func:`planned_after` say where the planned faces would go.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fercurate.affectnet.params import SOURCE_AFFECTNET, MergeParams
from fercurate.affectnet.sources import Source
from fercurate.counts import largest_remainder
from fercurate.manifest import ACTIVE, SPLITS, Col, image_id_for


@dataclass(frozen=True)
class MergePlan:
    """What a merge will try: per class, its target and need, and the candidates in seeded order.

    ``table`` has one row per dataset class: ``before`` (active rows counted for balancing),
    ``target``, ``need``, ``available`` (usable candidates) and ``planned`` (``min(need, available)``).
    ``order[c]`` lists row numbers of ``candidates`` of class ``c`` in the order they will be tried.
    """

    classes: list[str]
    candidates: pd.DataFrame
    skipped: pd.DataFrame
    table: pd.DataFrame
    order: dict[str, list[int]]

    @property
    def needs(self) -> dict[str, int]:
        return {c: int(self.table.loc[c, "need"]) for c in self.classes}


def plan_merge(
    df: pd.DataFrame, source: Source, mapping: dict[str, str | None], params: MergeParams, goal: int | None
) -> MergePlan:
    """The plan for merging ``source`` into the manifest ``df`` (``goal``: the parsed ``params.target``)."""
    act = df[df[Col.STATUS] == ACTIVE]
    classes = sorted(act[Col.LABEL].unique().tolist())
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
    table = pd.DataFrame(
        {
            "before": counts,
            "target": targets,
            "need": needs,
            "available": {c: len(order[c]) for c in classes},
        }
    )
    table["planned"] = table[["need", "available"]].min(axis=1)
    table.index.name = "class"
    return MergePlan(classes=classes, candidates=cands, skipped=skipped, table=table, order=order)


def planned_after(before: pd.DataFrame, table: pd.DataFrame, params: MergeParams) -> pd.DataFrame:
    """The class x split table of active rows a merge would leave, if every planned face is usable."""
    after = before.drop(columns="total").copy()
    for s in SPLITS:
        if s not in after.columns:
            after[s] = 0
    after = after.reindex(index=table.index, fill_value=0)[list(SPLITS)]
    for c, n in table["planned"].items():
        parts = [n, 0, 0] if params.splits == "train" else allocate(int(n), params.ratios)
        for s, k in zip(SPLITS, parts, strict=True):
            after.loc[c, s] += k
    after["total"] = after.sum(axis=1)
    return after


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
    return [int(k) for k in largest_remainder(n, tuple(float(r) for r in ratios))]


def _class_seed(seed: int, name: str) -> list[int]:
    # a per-class stream that does not depend on which other classes exist
    return [seed, int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")]


def _candidates(
    source: Source, mapping: dict[str, str | None], existing_ids: set[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The usable rows of the source with their dataset class, and the rows dropped on the way."""
    rows = source.rows.copy()
    rows["label"] = rows[Col.SOURCE_LABEL].map(mapping).astype(object)
    rows[Col.IMAGE_ID] = [image_id_for(f"{SOURCE_AFFECTNET}:{p}") for p in rows[Col.SOURCE_PATH]]
    reason = pd.Series([None] * len(rows), dtype=object, index=rows.index)
    reason[rows[Col.IMAGE_ID].duplicated()] = "repeated_row"
    reason[rows[Col.IMAGE_ID].isin(existing_ids) & reason.isna()] = "already_in_dataset"
    reason[rows["label"].isna() & reason.isna()] = "unmapped_class"
    drop = reason.notna()
    dropped = pd.DataFrame(
        {
            Col.SOURCE_PATH: rows.loc[drop, Col.SOURCE_PATH],
            Col.SOURCE_LABEL: rows.loc[drop, Col.SOURCE_LABEL],
            "reason": reason[drop],
            "detail": [
                f"class '{s}' is not in the dataset" if r == "unmapped_class" else None
                for s, r in zip(rows.loc[drop, Col.SOURCE_LABEL], reason[drop], strict=True)
            ],
        }
    )
    skipped = pd.concat([source.skipped, dropped], ignore_index=True) if len(dropped) else source.skipped
    # sort so the seeded order does not depend on the order of CSV rows or of directory listings
    kept = rows[~drop].sort_values(Col.SOURCE_PATH, kind="stable").reset_index(drop=True)
    return kept, skipped
