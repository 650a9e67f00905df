"""The split's kernels: groups of connected rows, per-stratum targets, and the registry of strategies.

Pure functions of a manifest frame and the options; :data:`STRATEGIES` maps each ``--strategy`` name to
its :class:`SplitStrategy` (the CLI's choices are its keys).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fercurate.counts import largest_remainder, matrix_round
from fercurate.errors import InputError
from fercurate.manifest import ACTIVE, SPLITS, Col
from fercurate.split.params import MAX_FOLDS, TEST, normalise_ratios

# -- groups ----------------------------------------------------------------------------------------
#: Short names ``--group-by`` accepts for the group columns stages write.
GROUP_ALIASES: dict[str, str] = {"related": Col.RELATED_GROUP, "duplicates": Col.DUP_GROUP}


def group_columns(df: pd.DataFrame, group_by: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The columns whose shared values tie rows together: ``dup_group`` when present, then ``group_by``.

    ``group_by`` may name a column or an alias of :data:`GROUP_ALIASES` (``related``: dedup's
    ``related_group``, other frames of one sitting).

    Raises:
        InputError: for a ``group_by`` column the manifest does not have, listing the ones it has.
    """
    group_by = [GROUP_ALIASES.get(c, c) for c in group_by]
    if Col.RELATED_GROUP in group_by and Col.RELATED_GROUP not in df.columns:
        raise InputError(
            f"group_by 'related' needs the '{Col.RELATED_GROUP}' column, which this version lacks; "
            "run fercurate dedup (with --related, the default) first",
            param="group_by",
        )
    missing = [c for c in group_by if c not in df.columns]
    if missing:
        raise InputError(
            f"group_by column '{missing[0]}' is not in the manifest; columns: {', '.join(map(str, df.columns))}",
            param="group_by",
        )
    cols = [Col.DUP_GROUP] if Col.DUP_GROUP in df.columns else []
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
                want = largest_remainder(len(rows), np.clip(want, 0, None), ratios > 0)
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
    sizes = largest_remainder(total, ratios, ratios > 0)
    if stratum_class is None:
        return matrix_round(sizes, n)
    source = np.zeros(len(n), dtype=np.int64) if stratum_source is None else np.asarray(stratum_source)
    klass = np.asarray(stratum_class)
    class_ids, class_of = np.unique(klass, return_inverse=True)
    by_class = matrix_round(sizes, np.bincount(class_of, weights=n).astype(np.int64))
    targets = np.zeros((len(ratios), len(n)), dtype=np.int64)
    debt = np.zeros((len(ratios), int(source.max()) + 1))
    for k in range(len(class_ids)):
        members = np.flatnonzero(class_of == k)
        ideal = by_class[:, k][:, None] * n[members][None, :] / max(int(n[members].sum()), 1)
        sub = matrix_round(by_class[:, k], n[members], bias=debt[:, source[members]])
        targets[:, members] = sub
        np.add.at(debt.T, source[members], (ideal - sub).T)
    return targets


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
    return k, largest_remainder(k, ratios, ratios > 0)


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
        raise InputError(f"strategy '{strategy}' is not one of: {', '.join(STRATEGIES)}", param="strategy")
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
