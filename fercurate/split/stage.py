"""``fercurate split``: re-assign active rows to train / val / test, stratified and group-safe.

Each split's class proportions should match the whole (within :data:`TOLERANCE_PP` percentage points
for every class with at least :data:`MIN_CLASS_ROWS` images), and every group of connected rows (a
``dup_group`` from dedup, and any ``--group-by`` column such as a subject id) stays inside one split,
so a re-split never brings near-duplicate leakage back.

The default strategy has two parts (see ``docs/split.md`` for why and for measurements):

1. rows that share a group with other rows are placed by scikit-learn's
   :class:`~sklearn.model_selection.StratifiedGroupKFold`, its folds mapped onto the splits;
2. singleton rows (most of a FER dataset) fill, per stratum, exactly the counts that are still missing
   from each split's target. This is what makes the proportions exact to a row, and it is fast:
   ``StratifiedGroupKFold`` alone takes about 28 s on 35,000 singletons and is only as fine as its
   folds.

The stratum of a row is its class, or class and source when the rows come from more than one source.
Non-active rows keep their split; ``split_original`` is never changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fercurate.counts import split_tables
from fercurate.errors import InputError
from fercurate.manifest import ACTIVE, SPLITS, Col
from fercurate.progress import NullProgress, Progress
from fercurate.reports import nested, split_chart, to_dict
from fercurate.split.params import (
    MIN_CLASS_ROWS,
    TEST,
    TOLERANCE_PP,
    TRAIN,
    VAL,
    SplitParams,
    normalise_ratios,
)
from fercurate.split.strategies import Assignment, assign, group_columns
from fercurate.workspace import VersionInfo, Workspace

CHART_NAME = "split_chart.png"


@dataclass
class SplitResult:
    """What a split did and the version it wrote.

    ``before`` / ``after`` count active rows by class (rows, plus ``all``) and split (columns, plus
    ``total``); ``before_pct`` / ``after_pct`` give each class's share of its split in percent (row
    ``all``: each split's share of all active rows). ``deviation_pp`` is ``after_pct`` minus the class's
    share of the whole, per class and split, in percentage points.
    """

    version: VersionInfo
    parent: str
    ratios: tuple[float, float, float]
    seed: int
    strategy: str
    keep_test: bool
    group_by: tuple[str, ...]
    rows_active: int
    before: pd.DataFrame
    after: pd.DataFrame
    before_pct: pd.DataFrame
    after_pct: pd.DataFrame
    deviation_pp: pd.DataFrame
    max_deviation_pp: float
    max_deviation_pp_before: float
    size_deviation_pp: float
    moved: int
    moves: dict[str, int]
    pulled_into_test: int
    groups: int
    rows_in_groups: int
    largest_group: int
    chart: Path | None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def within_tolerance(self) -> bool:
        return bool(self.max_deviation_pp <= TOLERANCE_PP)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(
            self,
            drop=("before_pct", "after_pct"),
            max_deviation_pp=round(self.max_deviation_pp, 3),
            max_deviation_pp_before=round(self.max_deviation_pp_before, 3),
            size_deviation_pp=round(self.size_deviation_pp, 3),
            tolerance_pp=TOLERANCE_PP,
            within_tolerance=self.within_tolerance,
            before={"counts": nested(self.before), "percent": nested(self.before_pct, 2)},
            after={"counts": nested(self.after), "percent": nested(self.after_pct, 2)},
            deviation_pp=nested(self.deviation_pp, 3),
        )


def deviations(pct: pd.DataFrame) -> pd.DataFrame:
    """Each class's share of each split minus its share of the whole, in percentage points."""
    classes = pct.drop(index="all")
    return classes[list(SPLITS)].sub(classes["total"], axis=0)


def max_deviation(counts: pd.DataFrame, dev: pd.DataFrame, splits: tuple[str, ...] = SPLITS) -> float:
    """The largest absolute deviation over classes with >= MIN_CLASS_ROWS images (all, if none has)."""
    totals = counts.drop(index="all")["total"]
    rows = totals.index[totals >= MIN_CLASS_ROWS]
    if len(rows) == 0:
        rows = totals.index
    values = dev.loc[rows, list(splits)].abs().to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else 0.0


# -- the stage -------------------------------------------------------------------------------------
def split(workspace: Workspace, params: SplitParams, progress: Progress | None = None) -> SplitResult:
    """Re-split a version's active rows and commit the result as a new version.

    Raises:
        InputError: for bad ratios, an unknown ``group_by`` column or strategy, or a version with no
            active rows.
        WorkspaceError: for an unknown version or a locked workspace.
    """
    progress = progress or NullProgress()
    started = time.perf_counter()
    pct = normalise_ratios(tuple(params.ratios))
    with workspace.lock("fercurate split"):
        progress.start("Assigning splits", None)
        info, df = workspace.read(params.version)
        if not (df[Col.STATUS] == ACTIVE).any():
            raise InputError(f"version {info.version} has no active rows; there is nothing to split")
        cols = group_columns(df, params.group_by)
        done = assign(df, pct, params.seed, cols, params.keep_test, params.strategy)
        new_df = df.copy()
        new_df[Col.SPLIT] = done.split.astype(df[Col.SPLIT].dtype)
        is_active = new_df[Col.STATUS] == ACTIVE
        changed = is_active & (df[Col.SPLIT] != new_df[Col.SPLIT])
        moves = (
            (df.loc[changed, Col.SPLIT].astype(str) + "->" + new_df.loc[changed, Col.SPLIT].astype(str))
            .value_counts()
            .to_dict()
        )
        before, before_pct = split_tables(df)
        after, after_pct = split_tables(new_df)
        dev = deviations(after_pct)
        assigned = (TRAIN, VAL) if params.keep_test else SPLITS
        max_dev = max_deviation(after, dev, assigned)
        max_dev_before = max_deviation(before, deviations(before_pct))
        target = dict(zip(SPLITS, pct, strict=True))
        if params.keep_test:
            rest = 100.0 - after_pct.loc["all", TEST]
            target = {TRAIN: rest * pct[0] / (pct[0] + pct[1]), VAL: rest * pct[1] / (pct[0] + pct[1])}
        size_dev = max(abs(float(after_pct.loc["all", s]) - t) for s, t in target.items())
        notes = _notes(params, done, after, max_dev, cols)
        version = workspace.commit(
            new_df,
            stage="split",
            parent=info,
            params={
                "version": info.version,
                "ratios": list(pct),
                "seed": params.seed,
                "group_by": list(params.group_by),
                "group_columns": cols,
                "keep_test": params.keep_test,
                "strategy": params.strategy,
            },
            extra={
                "moved": int(changed.sum()),
                "max_deviation_pp": round(max_dev, 3),
                "size_deviation_pp": round(size_dev, 3),
                "pulled_into_test": done.pulled_into_test,
            },
        )
        with workspace.report(version.version) as report:
            chart = split_chart(
                before,
                after,
                report / CHART_NAME,
                f"{info.version} -> {version.version}: split {'/'.join(f'{p:g}' for p in pct)} seed {params.seed}",
            )
    return SplitResult(
        version=version,
        parent=info.version,
        ratios=pct,
        seed=params.seed,
        strategy=params.strategy,
        keep_test=params.keep_test,
        group_by=tuple(params.group_by),
        rows_active=int(is_active.sum()),
        before=before,
        after=after,
        before_pct=before_pct,
        after_pct=after_pct,
        deviation_pp=dev,
        max_deviation_pp=max_dev,
        max_deviation_pp_before=max_dev_before,
        size_deviation_pp=size_dev,
        moved=int(changed.sum()),
        moves={str(k): int(v) for k, v in moves.items()},
        pulled_into_test=done.pulled_into_test,
        groups=done.groups,
        rows_in_groups=done.rows_in_groups,
        largest_group=done.largest_group,
        chart=chart,
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def _notes(params: SplitParams, done: Assignment, after: pd.DataFrame, max_dev: float, cols: list[str]) -> list[str]:
    notes = []
    if not cols:
        notes.append(f"no '{Col.DUP_GROUP}' column (dedup has not run) and no --group-by: every row is its own group")
    if params.keep_test and after.loc["all", TEST] == 0:
        notes.append("--keep-test but the version has no active test rows: test stays empty")
    if done.pulled_into_test:
        notes.append(f"{done.pulled_into_test} row(s) joined the kept test split because their group has a test member")
    smallest = min(
        (after.loc["all", s] for s in SPLITS if after.loc["all", s] > 0), default=int(after.loc["all", "total"])
    )
    if done.largest_group > max(1, smallest // 2):
        notes.append(
            f"the largest group holds {done.largest_group} rows, more than half the smallest split "
            f"({smallest}); groups this big limit how closely the ratios can be met"
        )
    if max_dev > TOLERANCE_PP:
        notes.append(
            f"a class share is off by {max_dev:.2f} pp (> {TOLERANCE_PP:g} pp); one image is "
            f"{100 / max(smallest, 1):.2f} pp of the smallest split ({smallest} rows), and big groups or "
            "--keep-test also limit the balance"
        )
    return notes
