"""Confident learning: which labels are probably wrong, given out-of-fold predicted probabilities.

Pure numpy, no torch, so the math is unit-testable on hand-built matrices. The method is
Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels" (JAIR
2021), as implemented by cleanlab's ``filter.find_label_issues``; the functions below follow
cleanlab 2.x step for step so that, given the same probabilities, they flag the same rows:

1. Per-class thresholds ``t_j``: the mean predicted probability of class ``j`` over the rows
   labelled ``j`` (the class's average self-confidence).
2. The confident joint ``C[i, j]``: rows labelled ``i`` whose only confident class (``p_j >= t_j``)
   is ``j`` (or, with several, the most probable), calibrated so each row sums to the class count.
3. A filter picks the rows to flag:

   * ``prune_by_noise_rate`` (cleanlab's default and ours): for every off-diagonal cell
     ``(given i, true j)`` of the calibrated joint, flag the ``round(C[i, j])`` rows labelled ``i``
     with the largest margin ``p_j - p_i``;
   * ``confident_learning``: flag the rows counted off the diagonal of the (uncalibrated) joint.

   Either way a row whose most probable class is its given label is never flagged.
4. A ranking orders the flags (1 minus a label-quality score, so higher means more likely wrong):
   ``self_confidence`` (``p_given``) or ``normalized_margin``
   (``(p_given - max_{k != given} p_k + 1) / 2``).

Why these defaults (measured in ``bench/bench_relabel.py``, figures in ``docs/relabel.md``):
``prune_by_noise_rate`` estimates how many rows of each (given, true) pair are wrong and flags only
that many, so on FER data, where most errors are one pair (sad labelled neutral and back), it
flags fewer correct-but-ambiguous rows than ``confident_learning`` at almost the same recall.
``self_confidence`` ranks the top of the queue at least as precisely as ``normalized_margin`` on
the demo and is the ranking cleanlab's own benchmarks favour for class-conditional noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fercurate.errors import InputError

#: Probabilities closer than this count as equal (cleanlab's ``FLOATING_POINT_COMPARISON``).
EPS = 1e-6
#: Threshold given to a class no row is labelled with: no probability reaches it.
ABSENT_CLASS_THRESHOLD = 2.0


# -- label-quality scores (higher = label more likely right) ---------------------------------------
class QualityScore:
    """A per-row label-quality score in [0, 1]; lower means the given label is more likely wrong."""

    name = ""

    def __call__(self, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class SelfConfidence(QualityScore):
    """The predicted probability of the given label."""

    name = "self_confidence"

    def __call__(self, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return probs[np.arange(len(labels)), labels].astype(np.float64)


class NormalizedMargin(QualityScore):
    """``(p_given - max_{k != given} p_k + 1) / 2``: low when another class clearly beats the label."""

    name = "normalized_margin"

    def __call__(self, probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        rows = np.arange(len(labels))
        given = probs[rows, labels].astype(np.float64)
        others = probs.astype(np.float64, copy=True)
        others[rows, labels] = -np.inf
        return (given - others.max(axis=1) + 1.0) / 2.0


#: Ranking methods by name (the CLI's ``--method`` choices).
RANKERS: dict[str, QualityScore] = {r.name: r for r in (SelfConfidence(), NormalizedMargin())}


# -- the confident joint ---------------------------------------------------------------------------
def confident_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class thresholds: the mean ``p_j`` over rows labelled ``j`` (2.0 for an absent class)."""
    k = probs.shape[1]
    out = np.full(k, ABSENT_CLASS_THRESHOLD)
    for j in range(k):
        rows = labels == j
        if rows.any():
            out[j] = probs[rows, j].mean()
    return np.clip(out, 2 * EPS, None)


def confident_guess(probs: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's confident class and whether it has one.

    A class is confident for a row when ``p_j >= t_j``; with several, the row's most probable class
    is taken (as cleanlab does); with none, the row has no confident class.

    Returns:
        ``(guess, has_confident)``: int class per row (meaningless where ``has_confident`` is False)
        and a boolean mask.
    """
    confident = probs >= thresholds - EPS
    n_confident = confident.sum(axis=1)
    guess = np.where(n_confident > 1, probs.argmax(axis=1), confident.argmax(axis=1))
    return guess, n_confident > 0


def confident_joint(
    probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, *, calibrate: bool = True
) -> np.ndarray:
    """The (K, K) confident joint: ``C[given, true]`` counts of rows confidently in ``true``.

    The diagonal is at least 1. Calibrated, each row sums to the number of rows with that given
    label and the whole matrix to N (rounded to whole rows), so it estimates the joint counts of
    given and true labels.
    """
    k = probs.shape[1]
    guess, has = confident_guess(probs, thresholds)
    # built as the transpose of a (true, given) matrix, as cleanlab builds it: the memory layout
    # decides numpy's summation order, and so the last bits of the calibration below
    true_given = np.zeros((k, k), dtype=np.int64)
    np.add.at(true_given, (guess[has], labels[has]), 1)
    joint = true_given.T
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))
    if not calibrate:
        return joint.astype(np.float64)
    counts = np.bincount(labels, minlength=k)
    # computed in cleanlab's operation order (on the transpose), so that float rounding, and so the
    # rounding to whole rows below, comes out the same as cleanlab's on the same probabilities
    calibrated = (joint.T / np.clip(joint.sum(axis=1), 1e-100, None) * counts).T
    calibrated = calibrated / np.clip(np.sum(calibrated), 1e-100, None) * counts.sum()
    return np.apply_along_axis(_round_preserving_sum, 1, calibrated).astype(np.float64)


# -- filters: which rows to flag -------------------------------------------------------------------
def _round_preserving_sum(values: np.ndarray) -> np.ndarray:
    """Round floats to ints keeping their (rounded) sum, adjusting the largest remainders first."""
    ints = values.round()
    target = values.sum().round()
    total = ints.sum().round()
    while abs(total - target) > EPS:
        diff = np.round(target - total)
        step = -1 if diff < 0 else 1
        changes = min(int(abs(diff)), len(values))
        for i in np.argsort(values - ints)[::-step][:changes]:
            ints[i] += step
        total = ints.sum().round()
    return ints.astype(int)


def prune_counts(joint: np.ndarray, min_per_class: int = 1) -> np.ndarray:
    """How many rows to flag per (given, true) pair: ``out[true, given]``, transposed like cleanlab.

    Keeps at least ``min_per_class`` rows per given class by raising the diagonal and taking the
    difference evenly off that column's non-zero noise cells, then rounds preserving row totals.
    """
    mat = joint.T.astype(np.float64, copy=True)
    diagonal = mat.diagonal().copy()
    new_diagonal = np.maximum(diagonal, min_per_class)
    raised = new_diagonal - diagonal
    nonzero_noise = np.maximum(np.count_nonzero(mat, axis=0) - 1.0, 1.0)
    mat = mat - raised / nonzero_noise
    mat[mat < 0] = 0
    np.fill_diagonal(mat, new_diagonal)
    mat = mat.astype(int).astype(np.float64)  # cleanlab truncates here (its frac_noise step)
    return np.apply_along_axis(_round_preserving_sum, 1, mat)


def filter_prune_by_noise_rate(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Flag, per (given i, true j) pair, the estimated number of wrong rows with the largest ``p_j - p_i``."""
    k = probs.shape[1]
    counts = prune_counts(confident_joint(probs, labels, thresholds))
    mask = np.zeros(len(labels), dtype=bool)
    for given in range(k):
        rows = np.flatnonzero(labels == given)
        if len(rows) <= 1:
            continue  # cleanlab leaves a class with a single row alone
        for true in range(k):
            n = int(counts[true, given])
            if true == given or n <= 0:
                continue
            margin = probs[rows, true] - probs[rows, given]
            mask[rows[np.argsort(-margin)[:n]]] = True
    return mask


def filter_confident_learning(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Flag the rows counted off the diagonal of the confident joint."""
    guess, has = confident_guess(probs, thresholds)
    return has & (guess != labels)


#: Filters by name (the ``filter_by`` choices).
FILTERS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "prune_by_noise_rate": filter_prune_by_noise_rate,
    "confident_learning": filter_confident_learning,
}


def argmax_is_given(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rows whose most probable class is the given label (a tie within EPS goes to the label)."""
    nudged = probs.astype(np.float64, copy=True)
    nudged[np.arange(len(labels)), labels] += EPS
    return nudged.argmax(axis=1) == labels


# -- the whole method ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelScores:
    """Confident learning's verdict on every row.

    Attributes:
        thresholds: (K,) per-class confidence thresholds.
        joint: (K, K) calibrated confident joint, rows = given label, columns = estimated true label.
        score: (N,) mislabel score in [0, 1]: 1 minus the ranking's label-quality score.
        suggested: (N,) the most likely true class (never the given label on a flagged row).
        flagged: (N,) whether the row is a likely label error.
    """

    thresholds: np.ndarray
    joint: np.ndarray
    score: np.ndarray
    suggested: np.ndarray
    flagged: np.ndarray

    def ranked(self) -> np.ndarray:
        """Indices of the flagged rows, most likely wrong first (ties keep row order)."""
        idx = np.flatnonzero(self.flagged)
        return idx[np.argsort(-self.score[idx], kind="stable")]


def suggest_labels(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """The most probable confident class per row (most probable class if none is confident).

    On a flagged row whose suggestion would be the given label (the label is confident, the row's
    top class is not), the most probable other class is suggested instead: a flag says "not this".
    """
    confident = probs >= thresholds - EPS
    masked = np.where(confident, probs, -np.inf)
    suggested = np.where(confident.any(axis=1), masked.argmax(axis=1), probs.argmax(axis=1))
    same = flagged & (suggested == labels)
    if same.any():
        others = probs[same].astype(np.float64, copy=True)
        others[np.arange(int(same.sum())), labels[same]] = -np.inf
        suggested[same] = others.argmax(axis=1)
    return suggested


def score_labels(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    method: str = "self_confidence",
    filter_by: str = "prune_by_noise_rate",
) -> LabelScores:
    """Find the likely label errors of a dataset from out-of-fold probabilities.

    Args:
        probs: (N, K) predicted probabilities, each row from a model that did not train on it.
        labels: (N,) given class indices in ``[0, K)``.
        method: ranking, a key of :data:`RANKERS`.
        filter_by: which rows to flag, a key of :data:`FILTERS`.

    Raises:
        InputError: for an unknown method or filter, or mis-shaped inputs.
    """
    if method not in RANKERS:
        raise InputError(f"unknown ranking method '{method}'; choose one of: {', '.join(RANKERS)}")
    if filter_by not in FILTERS:
        raise InputError(f"unknown filter '{filter_by}'; choose one of: {', '.join(FILTERS)}")
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or probs.shape[1] < 2 or labels.shape != (probs.shape[0],):
        raise InputError(f"need (N, K>=2) probabilities and N labels, got {probs.shape} and {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise InputError(f"labels must be class indices in [0, {probs.shape[1] - 1}]")
    thresholds = confident_thresholds(probs, labels)
    flagged = FILTERS[filter_by](probs, labels, thresholds) & ~argmax_is_given(probs, labels)
    return LabelScores(
        thresholds=thresholds,
        joint=confident_joint(probs, labels, thresholds),
        score=1.0 - RANKERS[method](probs, labels),
        suggested=suggest_labels(probs, labels, thresholds, flagged),
        flagged=flagged,
    )
