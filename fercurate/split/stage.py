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

import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fercurate.errors import InputError
from fercurate.manifest import ACTIVE, SPLITS, Col
from fercurate.progress import NullProgress, Progress
from fercurate.workspace import VersionInfo, Workspace

#: The grouping column dedup writes; used whenever a manifest has it.
DUP_GROUP = "dup_group"
#: The promise: each split's class shares within this many percentage points of the whole ...
TOLERANCE_PP = 1.0
#: ... for every class with at least this many active images.
MIN_CLASS_ROWS = 100
#: The most folds StratifiedGroupKFold gets; its run time grows with groups x folds x folds.
MAX_FOLDS = 20
RATIOS_HINT = "needs three numbers train/val/test summing to 100, e.g. 80/10/10"
CHART_NAME = "split_chart.png"

TRAIN, VAL, TEST = SPLITS


@dataclass(frozen=True)
class SplitParams:
    """Options of ``fercurate split`` (the CLI's defaults point here)."""

    version: str | None = None
    ratios: tuple[float, float, float] = (80.0, 10.0, 10.0)
    seed: int = 0
    group_by: tuple[str, ...] = ()
    keep_test: bool = False
    strategy: str = "stratified-group"


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
        return {
            "version": self.version.version,
            "path": self.version.path,
            "parent": self.parent,
            "ratios": list(self.ratios),
            "seed": self.seed,
            "strategy": self.strategy,
            "keep_test": self.keep_test,
            "group_by": list(self.group_by),
            "rows_active": self.rows_active,
            "moved": self.moved,
            "moves": self.moves,
            "pulled_into_test": self.pulled_into_test,
            "groups": self.groups,
            "rows_in_groups": self.rows_in_groups,
            "largest_group": self.largest_group,
            "max_deviation_pp": round(self.max_deviation_pp, 3),
            "max_deviation_pp_before": round(self.max_deviation_pp_before, 3),
            "size_deviation_pp": round(self.size_deviation_pp, 3),
            "tolerance_pp": TOLERANCE_PP,
            "within_tolerance": self.within_tolerance,
            "before": {"counts": _nested(self.before), "percent": _nested(self.before_pct, 2)},
            "after": {"counts": _nested(self.after), "percent": _nested(self.after_pct, 2)},
            "deviation_pp": _nested(self.deviation_pp, 3),
            "chart": str(self.chart) if self.chart else None,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


# -- ratios ----------------------------------------------------------------------------------------
def parse_ratios(text: str) -> tuple[float, float, float]:
    """Read ``80/10/10``, ``80,10,10`` or ``0.8/0.1/0.1`` as percentages summing to 100.

    Raises:
        InputError: naming the bad value and the accepted form.
    """
    parts = [p for p in re.split(r"[/,]", text.strip())]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise InputError(f"--ratios '{text}' {RATIOS_HINT}") from None
    return normalise_ratios(values, text)


def normalise_ratios(values: tuple[float, ...], shown: str | None = None) -> tuple[float, float, float]:
    """Check train/val/test ratios (percentages or fractions) and return them as percentages.

    Val and test may be 0 (that split ends up empty); train must be above 0.

    Raises:
        InputError: for a wrong count, a negative or non-finite value, a zero train ratio, or a sum
            that is neither 100 nor 1.
    """
    shown = shown if shown is not None else "/".join(f"{v:g}" for v in values)
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise InputError(f"--ratios '{shown}' {RATIOS_HINT}")
    if any(v < 0 for v in values):
        raise InputError(f"--ratios '{shown}' has a negative value; it {RATIOS_HINT}")
    total = sum(values)
    if abs(total - 1.0) <= 1e-4:
        scale = 100.0 / total
    elif abs(total - 100.0) <= 1e-2:
        scale = 100.0 / total
    else:
        raise InputError(f"--ratios '{shown}' sums to {total:g}; it {RATIOS_HINT} (or fractions summing to 1)")
    if values[0] <= 0:
        raise InputError(
            f"--ratios '{shown}' leaves train empty; train must be above 0 and val or test may be 0, "
            "e.g. 80/10/10 or 90/10/0"
        )
    train, val, test = (v * scale for v in values)
    return (train, val, test)


# -- groups ----------------------------------------------------------------------------------------
def group_columns(df: pd.DataFrame, group_by: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The columns whose shared values tie rows together: ``dup_group`` when present, then ``group_by``.

    Raises:
        InputError: for a ``group_by`` column the manifest does not have, listing the ones it has.
    """
    missing = [c for c in group_by if c not in df.columns]
    if missing:
        raise InputError(
            f"--group-by column '{missing[0]}' is not in the manifest; columns: {', '.join(map(str, df.columns))}"
        )
    cols = [DUP_GROUP] if DUP_GROUP in df.columns else []
    return list(dict.fromkeys([*cols, *group_by]))


def connected_groups(df: pd.DataFrame, group_cols: list[str]) -> np.ndarray:
    """A component id per row: rows sharing a non-null value in any group column are connected.

    Sharing is transitive across columns (A and B share a dup_group, B and C a subject: A, B and C
    are one component). Rows with no group value are their own component. Ids are 0..n-1 in order
    of first appearance.
    """
    n = len(df)
    if n == 0 or not group_cols:
        return np.arange(n)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows_list, keys_list = [], []
    offset = n  # key nodes follow the row nodes; each column gets its own key space
    for col in group_cols:
        codes, uniques = pd.factorize(df[col], use_na_sentinel=True)
        has = codes >= 0
        rows_list.append(np.flatnonzero(has))
        keys_list.append(codes[has] + offset)
        offset += len(uniques)
    r = np.concatenate(rows_list)
    k = np.concatenate(keys_list)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, k)), shape=(offset, offset))
    _, labels = connected_components(graph, directed=False)
    # renumber by first appearance so ids do not depend on scipy's numbering
    return np.asarray(pd.factorize(labels[:n])[0], dtype=np.int64)


# -- strategies ------------------------------------------------------------------------------------
class SplitStrategy:
    """Assigns rows to splits; subclasses are registered in :data:`STRATEGIES`."""

    name = ""
    description = ""

    def assign(
        self, classes: np.ndarray, sources: np.ndarray, groups: np.ndarray, ratios: np.ndarray, seed: int
    ) -> np.ndarray:
        """The split index (0 train, 1 val, 2 test) of every row.

        Args:
            classes: class code per row (0..K-1).
            sources: source code per row (all 0 when there is one source).
            groups: group id per row; rows of one group must get one split.
            ratios: three fractions summing to 1 (zeros allowed for val and test).
            seed: random seed; the same inputs and seed give the same answer.
        """
        raise NotImplementedError


class StratifiedGroupStrategy(SplitStrategy):
    """Groups by StratifiedGroupKFold, then singletons fill each stratum's targets exactly."""

    name = "stratified-group"
    description = "class-stratified, groups kept whole (StratifiedGroupKFold + exact singleton fill)"

    def assign(
        self, classes: np.ndarray, sources: np.ndarray, groups: np.ndarray, ratios: np.ndarray, seed: int
    ) -> np.ndarray:
        n = len(classes)
        out = np.full(n, -1, dtype=np.int64)
        if n == 0:
            return out
        # a stratum is a (class, source) pair
        pairs = classes.astype(np.int64) * (int(sources.max()) + 1) + sources
        strata, uniques = pd.factorize(pairs, sort=True)
        n_sources = int(sources.max()) + 1
        targets = stratum_targets(
            np.bincount(strata, minlength=len(uniques)), ratios, uniques // n_sources, uniques % n_sources
        )
        sizes = np.bincount(groups)
        multi = sizes[groups] > 1
        rng = np.random.default_rng(seed)
        if multi.any():
            out[multi] = _place_groups(strata[multi], groups[multi], ratios, seed, rng)
        placed = np.zeros_like(targets)
        np.add.at(placed, (out[multi], strata[multi]), 1)
        single = np.flatnonzero(~multi)
        single = single[rng.permutation(len(single))]
        for c in range(len(uniques)):
            rows = single[strata[single] == c]
            if len(rows) == 0:
                continue
            want = targets[:, c] - placed[:, c]
            if (want < 0).any():
                # groups overfilled a split for this stratum: share the singletons among the others
                want = _largest_remainder(np.clip(want, 0, None), len(rows), ratios > 0)
            out[rows] = np.repeat(np.arange(len(ratios)), want)
        return out


class RandomGroupStrategy(SplitStrategy):
    """Whole groups in random order, cut at the ratios: the unstratified baseline."""

    name = "random-group"
    description = "unstratified baseline: shuffled whole groups cut at the ratios"

    def assign(
        self, classes: np.ndarray, sources: np.ndarray, groups: np.ndarray, ratios: np.ndarray, seed: int
    ) -> np.ndarray:
        n = len(groups)
        if n == 0:
            return np.full(0, -1, dtype=np.int64)
        sizes = np.bincount(groups)
        order = np.random.default_rng(seed).permutation(len(sizes))
        ends = np.cumsum(sizes[order])
        bounds = np.cumsum(ratios)[:-1] * n
        split_of_group = np.empty(len(sizes), dtype=np.int64)
        # a group goes to the split its middle row falls into
        split_of_group[order] = np.searchsorted(bounds, ends - sizes[order] / 2.0)
        return split_of_group[groups]


STRATEGIES: dict[str, SplitStrategy] = {s.name: s for s in (StratifiedGroupStrategy(), RandomGroupStrategy())}


def stratum_targets(
    n_per_stratum: np.ndarray,
    ratios: np.ndarray,
    stratum_class: np.ndarray | None = None,
    stratum_source: np.ndarray | None = None,
) -> np.ndarray:
    """Integer row targets (splits x strata): rows sum to the split sizes, columns to the strata.

    Split sizes are the ratios rounded by largest remainder. Rounding is nested so that what the
    promise is about comes first: split x class counts are rounded as a whole (each split's class
    shares as close to the whole's as integers allow), then each class's per-split counts are shared
    among its sources, leaning against the rounding each source has collected so far.
    """
    n = np.asarray(n_per_stratum, dtype=np.int64)
    total = int(n.sum())
    if total == 0:
        return np.zeros((len(ratios), len(n)), dtype=np.int64)
    sizes = _largest_remainder(ratios, total, ratios > 0)
    if stratum_class is None:
        return _matrix_round(sizes, n)
    source = np.zeros(len(n), dtype=np.int64) if stratum_source is None else np.asarray(stratum_source)
    klass = np.asarray(stratum_class)
    class_ids, class_of = np.unique(klass, return_inverse=True)
    by_class = _matrix_round(sizes, np.bincount(class_of, weights=n).astype(np.int64))
    targets = np.zeros((len(ratios), len(n)), dtype=np.int64)
    debt = np.zeros((len(ratios), int(source.max()) + 1))
    for k in range(len(class_ids)):
        members = np.flatnonzero(class_of == k)
        ideal = by_class[:, k][:, None] * n[members][None, :] / max(int(n[members].sum()), 1)
        sub = _matrix_round(by_class[:, k], n[members], bias=debt[:, source[members]])
        targets[:, members] = sub
        np.add.at(debt.T, source[members], (ideal - sub).T)
    return targets


def _matrix_round(rows: np.ndarray, cols: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Integers near ``rows[s] * cols[c] / total`` whose rows and columns sum exactly to the margins.

    Cells are floored; the units each margin still needs go to the cells with the largest remainder
    (plus ``bias``), then to any cell both margins still need.
    """
    total = int(cols.sum())
    out = np.zeros((len(rows), len(cols)), dtype=np.int64)
    if total == 0:
        return out
    ideal = rows[:, None] * cols[None, :] / total
    out = np.floor(ideal + 1e-9).astype(np.int64)
    row_left = rows - out.sum(axis=1)
    col_left = cols - out.sum(axis=0)
    priority = ideal - out + (bias if bias is not None else 0.0)
    for flat in np.argsort(-priority, axis=None, kind="stable"):
        s, c = divmod(int(flat), len(cols))
        if row_left[s] > 0 and col_left[c] > 0:
            out[s, c] += 1
            row_left[s] -= 1
            col_left[c] -= 1
    for row in np.flatnonzero(row_left > 0):
        while row_left[row] > 0:
            c = int(np.argmax(col_left))
            out[row, c] += 1
            row_left[row] -= 1
            col_left[c] -= 1
    return out


def _largest_remainder(weights: np.ndarray, total: int, allowed: np.ndarray) -> np.ndarray:
    """``total`` split into integers proportional to ``weights`` (only where ``allowed``)."""
    w = np.where(allowed, weights, 0).astype(float)
    if w.sum() <= 0:
        w = allowed.astype(float)
    ideal = w / w.sum() * total
    out = np.floor(ideal).astype(np.int64)
    left = total - int(out.sum())
    if left > 0:
        out[np.argsort(-(ideal - out), kind="stable")[:left]] += 1
    return out


def fold_plan(ratios: np.ndarray, max_folds: int) -> tuple[int, np.ndarray]:
    """How many folds to cut and how many go to each split.

    The smallest fold count (2..max_folds) that represents the ratios exactly (80/10/10 -> 10 folds,
    8/1/1); else the one with the smallest rounding error. Singletons make up what folds cannot.
    """
    candidates = range(2, max(2, max_folds) + 1)
    # the fraction of the data each split is off by when its share is rounded to whole folds
    errors = [float(np.abs(ratios * k - np.round(ratios * k)).max()) / k for k in candidates]
    for k, err in zip(candidates, errors, strict=True):
        if err < 1e-9:
            return k, np.round(ratios * k).astype(np.int64)
    k = candidates[int(np.argmin(errors))]
    return k, _largest_remainder(ratios, k, ratios > 0)


def _place_groups(
    strata: np.ndarray, groups: np.ndarray, ratios: np.ndarray, seed: int, rng: np.random.Generator
) -> np.ndarray:
    """Split index for the rows of multi-row groups, by StratifiedGroupKFold folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    _, stratum_counts = np.unique(strata, return_counts=True)
    # StratifiedGroupKFold needs at least as many groups, and some stratum with as many rows, as folds
    cap = min(MAX_FOLDS, n_groups, int(stratum_counts.max()))
    if cap < 2:
        return np.full(len(strata), int(np.argmax(ratios)), dtype=np.int64)
    k, per_split = fold_plan(ratios, cap)
    split_of_fold = rng.permutation(np.repeat(np.arange(len(ratios)), per_split))
    folds = np.empty(len(strata), dtype=np.int64)
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only n members"
        for fold, (_, test_index) in enumerate(sgkf.split(np.zeros(len(strata)), strata, groups)):
            folds[test_index] = fold
    return split_of_fold[folds]


# -- the assignment ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Assignment:
    """New splits for a manifest and what it took."""

    split: pd.Series
    pulled_into_test: int
    groups: int
    rows_in_groups: int
    largest_group: int


def assign(
    df: pd.DataFrame,
    ratios: tuple[float, ...],
    seed: int = 0,
    group_cols: tuple[str, ...] | list[str] = (),
    keep_test: bool = False,
    strategy: str = StratifiedGroupStrategy.name,
) -> Assignment:
    """Compute new splits for the active rows of ``df`` (see :func:`assign_splits`), with diagnostics.

    Raises:
        InputError: for bad ratios, an unknown group column or strategy.
    """
    pct = normalise_ratios(tuple(ratios))
    if strategy not in STRATEGIES:
        raise InputError(f"--strategy '{strategy}' is not one of: {', '.join(STRATEGIES)}")
    cols = group_columns(df, tuple(group_cols))
    new = df[Col.SPLIT].copy()
    # work in image_id order so the answer does not depend on the row order of the file
    positions = np.flatnonzero((df[Col.STATUS] == ACTIVE).to_numpy())
    positions = positions[np.argsort(df[Col.IMAGE_ID].to_numpy(dtype=object)[positions], kind="stable")]
    act = df.iloc[positions]
    if act.empty:
        return Assignment(new, 0, 0, 0, 0)
    groups = connected_groups(act, cols)
    sizes = np.bincount(groups)
    classes = pd.factorize(act[Col.LABEL].astype(str), sort=True)[0]
    sources = pd.factorize(act[Col.SOURCE].astype(str), sort=True)[0]
    current = act[Col.SPLIT].to_numpy(dtype=object)
    result = np.full(len(act), -1, dtype=np.int64)
    pulled = 0
    frac = np.array(pct) / 100.0
    if keep_test:
        in_test = np.zeros(len(sizes), dtype=bool)
        in_test[groups[current == TEST]] = True
        fixed = in_test[groups]
        # a group with any member in the kept test split goes to test whole: leakage is worse than a
        # few extra test rows
        pulled = int((fixed & (current != TEST)).sum())
        result[fixed] = SPLITS.index(TEST)
        frac = np.array([frac[0], frac[1], 0.0]) / (frac[0] + frac[1])
    else:
        fixed = np.zeros(len(act), dtype=bool)
    pool = np.flatnonzero(~fixed)
    if len(pool):
        pool_groups = pd.factorize(groups[pool])[0]
        pool_classes = pd.factorize(classes[pool], sort=True)[0]
        pool_sources = pd.factorize(sources[pool], sort=True)[0]
        result[pool] = STRATEGIES[strategy].assign(pool_classes, pool_sources, pool_groups, frac, seed)
    new.iloc[positions] = np.asarray(SPLITS, dtype=object)[result]
    return Assignment(
        split=new,
        pulled_into_test=pulled,
        groups=int((sizes > 1).sum()),
        rows_in_groups=int(sizes[sizes > 1].sum()),
        largest_group=int(sizes.max()),
    )


def assign_splits(
    df: pd.DataFrame,
    ratios: tuple[float, ...],
    seed: int = 0,
    group_cols: tuple[str, ...] | list[str] = (),
    keep_test: bool = False,
) -> pd.Series:
    """The new split of every row of a manifest frame (index aligned with ``df``).

    Active rows are re-assigned to train/val/test by ``ratios`` (percentages or fractions), stratified
    by class (and source, when there is more than one), with every group of rows connected through
    ``dup_group`` or ``group_cols`` kept in one split. Removed and invalid rows keep their split.
    With ``keep_test`` the active test rows (and every group touching them) stay in test and the rest
    is split train/val in the train:val proportion of ``ratios``.

    Raises:
        InputError: for bad ratios or an unknown group column.
    """
    return assign(df, ratios, seed, group_cols, keep_test).split


# -- reporting -------------------------------------------------------------------------------------
def split_tables(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Active rows by class and split: counts, and each class's share of its split in percent.

    Both frames have a row ``all`` and a column ``total``; in the percent frame, row ``all`` holds each
    split's share of all active rows.
    """
    act = df[df[Col.STATUS] == ACTIVE]
    counts = pd.crosstab(act[Col.LABEL].astype(str), act[Col.SPLIT].astype(str))
    counts = counts.reindex(columns=list(SPLITS), fill_value=0).astype(np.int64)
    counts.index.name = "class"
    counts.columns.name = None
    counts["total"] = counts.sum(axis=1)
    counts.loc["all"] = counts.sum(axis=0)
    sizes = counts.loc["all"].replace(0, np.nan)
    pct = counts.div(sizes, axis=1) * 100.0
    pct.loc["all"] = counts.loc["all"] / max(int(counts.loc["all", "total"]), 1) * 100.0
    return counts, pct


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


def write_chart(before: pd.DataFrame, after: pd.DataFrame, path: Path, title: str) -> Path:
    """A PNG of grouped bars: rows per class before and after, one panel per split."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = [c for c in after.index if c != "all"]
    fig = Figure(figsize=(4.2 * len(SPLITS), 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(SPLITS), sharey=False)
    x = np.arange(len(classes))
    width = 0.4
    for ax, split_name in zip(axes, SPLITS, strict=True):
        b = before.reindex(classes)[split_name].fillna(0).to_numpy()
        a = after.reindex(classes)[split_name].fillna(0).to_numpy()
        ax.bar(x - width / 2, b, width, label="before", color="#9e9e9e")
        ax.bar(x + width / 2, a, width, label="after", color="#1f77b4")
        share_b = before.loc["all", split_name] / max(before.loc["all", "total"], 1) * 100
        share_a = after.loc["all", split_name] / max(after.loc["all", "total"], 1) * 100
        ax.set_title(f"{split_name}: {share_b:.1f}% -> {share_a:.1f}% of rows")
        ax.set_xticks(x)
        ax.set_xticklabels(classes, rotation=45, ha="right")
        ax.set_ylabel("images")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    return path


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
    if params.strategy not in STRATEGIES:
        raise InputError(f"--strategy '{params.strategy}' is not one of: {', '.join(STRATEGIES)}")
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
        chart = write_chart(
            before,
            after,
            workspace.report_dir(version.version) / CHART_NAME,
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
        notes.append(f"no '{DUP_GROUP}' column (dedup has not run) and no --group-by: every row is its own group")
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


def _nested(frame: pd.DataFrame, digits: int | None = None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for idx, row in frame.iterrows():
        cells: dict[str, Any] = {}
        for k, v in row.items():
            if pd.isna(v):
                cells[str(k)] = None
            elif digits is None:
                cells[str(k)] = int(v)
            else:
                cells[str(k)] = round(float(v), digits)
        out[str(idx)] = cells
    return out
