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

   * ``predicted_neq_given`` (``flag``'s default): every row whose most probable class is not its
     label;
   * ``prune_by_noise_rate`` (cleanlab's default, and :func:`score_labels`'s): for every
     off-diagonal cell ``(given i, true j)`` of the calibrated joint, flag the ``round(C[i, j])``
     rows labelled ``i`` with the largest margin ``p_j - p_i``;
   * ``confident_learning``: flag the rows counted off the diagonal of the (uncalibrated) joint.

   Whichever filter, a row whose most probable class is its given label is never flagged.
4. A ranking orders the flags (1 minus a label-quality score, so higher means more likely wrong):
   ``self_confidence`` (``p_given``) or ``normalized_margin``
   (``(p_given - max_{k != given} p_k + 1) / 2``).

Why these defaults (measured in ``bench/bench_relabel.py``, figures in ``docs/relabel.md``): on
real FER2013 scored against FER+ (``flag``'s default filter), the wrong labels are ambiguous faces
rather than random flips, about one in six, and ``prune_by_noise_rate``'s estimate of how many
there are cuts the flagged set where the next rows are still wrong about 4 times in 10:
``predicted_neq_given`` flags all of them and reaches F1 0.467 against 0.431 on the FER2013
``Training`` rows (the tuning rows). On the demo's planted flips the noise-rate filter is ahead
(F1 0.39 against 0.36), and it stays cleanlab's default and this module's. The filters rank alike:
the others flag subsets of ``predicted_neq_given``'s rows, in the same order.
``normalized_margin`` (``flag``'s default ranking) ranks the top of the queue more precisely than
``self_confidence`` on real faces; ``self_confidence`` is cleanlab's default.
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


def filter_predicted_neq_given(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Flag every row whose most probable class is not its label (``thresholds`` are not used)."""
    return ~argmax_is_given(probs, labels)


#: Filters by name (the ``filter_by`` choices).
FILTERS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "predicted_neq_given": filter_predicted_neq_given,
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
    rank_probs: np.ndarray | None = None,
) -> LabelScores:
    """Find the likely label errors of a dataset from out-of-fold probabilities.

    Args:
        probs: (N, K) predicted probabilities, each row from a model that did not train on it.
        labels: (N,) given class indices in ``[0, K)``.
        method: ranking, a key of :data:`RANKERS`.
        filter_by: which rows to flag, a key of :data:`FILTERS`.
        rank_probs: (N, K) probabilities the ranking (``score``) is read from instead of
            ``probs``; the thresholds, the joint, the flags and the suggestions stay ``probs``'s.
            ``relabel-review flag`` ranks with the out-of-fold probabilities blended with the fold
            models' fit of each row while training (:func:`blend_fit`).

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
    rank_probs = probs if rank_probs is None else np.asarray(rank_probs, dtype=np.float64)
    if rank_probs.shape != probs.shape:
        raise InputError(f"rank_probs has shape {rank_probs.shape}; need the probabilities' {probs.shape}")
    thresholds = confident_thresholds(probs, labels)
    flagged = FILTERS[filter_by](probs, labels, thresholds) & ~argmax_is_given(probs, labels)
    return LabelScores(
        thresholds=thresholds,
        joint=confident_joint(probs, labels, thresholds),
        score=1.0 - RANKERS[method](rank_probs, labels),
        suggested=suggest_labels(probs, labels, thresholds, flagged),
        flagged=flagged,
    )


def blend_fit(probs: np.ndarray, fit: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * probs + weight * fit``, and ``probs`` alone on rows without a fit (NaN).

    ``fit`` is how the cross-fitted models fit each row's label while training on it (the mean
    softmax over its training batches late in the schedule; ``train(record_from=...)``). A right
    label is learned early and fitted well; a wrong one is fitted late and poorly, against what
    the similar faces teach (the area-under-the-margin idea: Pleiss et al., NeurIPS 2020). That
    is evidence the held-out prediction does not have: on real FER2013 the blend ranks the top
    of the queue more precisely (docs/relabel.md). Trained on the row, the fit leans to the given
    label, so the flags, the suggestions and the queue's estimates stay with the out-of-fold
    probabilities; the fit only ranks, and caps what ``--auto-accept`` reads (:func:`estimate_noise`).
    """
    probs = np.asarray(probs, dtype=np.float64)
    fit = np.asarray(fit, dtype=np.float64)
    has = ~np.isnan(fit).any(axis=1, keepdims=True)
    return np.where(has, (1.0 - weight) * probs + weight * np.nan_to_num(fit), probs)


# -- how many labels are wrong, and how sure each flag is ------------------------------------------
#: Bounds of the temperature fitted to the out-of-fold probabilities (see :func:`fit_temperature`).
TEMPERATURE_BOUNDS = (0.05, 20.0)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` that makes ``softmax(log p / T)`` best predict the given labels (least NLL).

    Cross-fitted probabilities come from models that never saw the row, so they can be calibrated
    against the given labels themselves (temperature scaling, Guo et al. 2017); most labels are right,
    and the few wrong ones are what the model should not believe anyway. ``T > 1`` softens an
    over-confident model, ``T < 1`` sharpens a timid one; the ranking of a row's classes is unchanged.
    """
    from scipy.optimize import minimize_scalar

    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None))
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, labels]))

    lo, hi = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    best = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(best.x))


def top_label_calibrate(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Recalibrate each row's top probability, per predicted class, to how often it is the given label.

    Top-label calibration (Gupta and Ramdas, ICLR 2022): for each class ``c``, an isotonic
    regression over the rows whose most probable class is ``c`` of "``c`` is the given label" on
    ``p_c``; the row's other classes share what is left in their old proportions. One temperature
    calibrates a model on average, so it sharpens a model that is timid on its easy classes and
    then over-states its confidence on the hard ones (on the demo: sure of happy and surprise,
    torn on sad and neutral). Against given labels that are sometimes wrong this errs low (a right
    prediction on a wrongly labelled row counts as a miss): the safe direction.
    """
    from sklearn.isotonic import IsotonicRegression

    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    top = probs.argmax(axis=1)
    rows = np.arange(len(labels))
    conf = probs[rows, top]
    new_conf = conf.copy()
    for c in range(k):
        mine = top == c
        if mine.sum() < 2:
            continue
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        new_conf[mine] = iso.fit(conf[mine], (labels[mine] == c).astype(np.float64)).predict(conf[mine])
    new_conf = np.clip(new_conf, 1.0 / k, 1.0)
    rest = 1.0 - conf
    scale = np.where(rest > 1e-12, (1.0 - new_conf) / np.clip(rest, 1e-12, None), 0.0)
    out = probs * scale[:, None]
    out[rows, top] = new_conf
    empty = rest <= 1e-12  # the top class held all the mass: spread the remainder evenly
    if empty.any():
        out[empty] = ((1.0 - new_conf[empty]) / max(k - 1, 1))[:, None]
        out[empty, top[empty]] = new_conf[empty]
    return out


def temperature_scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / temperature)`` row by row."""
    z = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class NoiseEstimate:
    """How many labels are wrong, and how likely each given label (and each suggestion) is right.

    Attributes:
        joint: (K, K) calibrated confident joint: estimated row counts by given label (rows) and
            true label (columns); the same as cleanlab's ``estimate_joint`` times N.
        channel: (K, K) ``P(given i | true j)`` from the anchor points (:func:`anchor_channel`)
            that ``p_wrong`` was read with.
        temperature: the temperature fitted to the out-of-fold probabilities.
        p_wrong: (N,) calibrated probability that the given label is wrong.
        p_suggested: (N,) calibrated probability that the suggested label is the true one.
        anchor_share: the share of rows taken as anchors for ``channel`` (:func:`estimate_noise`).
    """

    joint: np.ndarray
    channel: np.ndarray
    temperature: float
    p_wrong: np.ndarray
    p_suggested: np.ndarray
    anchor_share: float

    @property
    def expected_wrong(self) -> float:
        """Expected number of wrong labels by the per-row probabilities (sum of ``p_wrong``)."""
        return float(self.p_wrong.sum())

    @property
    def wrong_total(self) -> int:
        """Estimated number of wrong labels: the off-diagonal sum of the joint."""
        return int(round(off_diagonal(self.joint)))

    def wrong_by_pair(self, classes: list[str]) -> dict[str, int]:
        """Estimated wrong labels per ``"given->true"`` pair, largest first (empty pairs left out)."""
        pairs = {
            f"{classes[i]}->{classes[j]}": int(round(float(self.joint[i, j])))
            for i in range(len(classes))
            for j in range(len(classes))
            if i != j and round(float(self.joint[i, j])) > 0
        }
        return dict(sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0])))


def off_diagonal(joint: np.ndarray) -> float:
    """The rows a ``(K, K)`` joint counts as labelled otherwise than they truly are."""
    return float(joint.sum() - np.trace(joint))


#: The share of rows with the highest ``p_j`` taken as surely of class ``j`` (anchor points) ...
ANCHOR_SHARE = 0.01
#: ... and never fewer rows than this (small datasets).
MIN_ANCHORS = 10
#: For the queue's ``p_wrong`` the share is widened through these while the confident joint counts
#: more than JOINT_OVERCOUNT times the wrong labels the channel gives (:func:`estimate_noise`) ...
ANCHOR_SHARES = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2)
#: ... the confident joint's over-count where the truth is known and the channel holds: 2.15 on
#: the simulated class-conditional set of the tests, 2.24 and 2.40 on two demos (docs/relabel.md).
JOINT_OVERCOUNT = 2.2
#: Anchors of which at least this share carry their class's label are trusted fully (see anchor_channel).
MAJORITY = 0.5


#: Cohen's kappa (model vs given labels) from which a model's noise estimate is trusted in full.
SKILLED_KAPPA = 0.5


def model_skill(probs: np.ndarray, labels: np.ndarray) -> float:
    """How far the out-of-fold predictions beat chance, in [0, 1]: Cohen's kappa over ``SKILLED_KAPPA``.

    Kappa is agreement with the given labels beyond what the class shares alone give (0 at chance,
    1 when every prediction matches). A model near chance cannot tell a wrong label from its own
    mistake, so its noise estimate is shrunk towards none (see :func:`anchor_channel`).
    """
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    observed = float((pred == labels).mean()) if len(labels) else 0.0
    chance = float(np.dot(np.bincount(pred, minlength=k), np.bincount(labels, minlength=k))) / max(len(labels), 1) ** 2
    kappa = (observed - chance) / max(1.0 - chance, 1e-12)
    return float(np.clip(kappa / SKILLED_KAPPA, 0.0, 1.0))


def anchor_channel(probs: np.ndarray, labels: np.ndarray, share: float = ANCHOR_SHARE) -> np.ndarray:
    """``T[i, j] = P(given label i | true label j)`` estimated from anchor points, shrunk to trust.

    The anchors of class ``j`` are the rows most surely of class ``j`` (the ``share`` of rows with
    the highest ``p_j``, at least :data:`MIN_ANCHORS`); column ``j`` is how their *given* labels
    are spread: among images that surely are ``j``, the share filed under ``i`` (anchor points:
    Patrini et al., CVPR 2017; Xia et al., NeurIPS 2019). Counting the anchors' given labels, not
    averaging the model's probabilities on them, keeps an over-confident model from inventing noise.
    The confident joint is not used here: when many images are ambiguous it counts the model's doubt
    as label noise and, with a weak model, over-states the noise two-fold and more.

    Anchors are only as sure as the model: a model at chance has "anchors" no surer of ``j`` than
    any row, whose labels are spread like the whole dataset's, and taken at face value they would
    say three labels in four are wrong. So each column is shrunk towards "labels of ``j`` are right"
    by how far its anchors stand out: ``w_j = clip((a_j - m_j) / (0.5 - m_j), 0, 1)``, with ``a_j``
    the share of anchors labelled ``j`` and ``m_j`` the share of all rows. Anchors mostly labelled
    ``j`` are taken as they are (annotators file a class's images under it more often than not);
    a model at chance estimates no noise, hence no confident flags: the safe direction for a
    reviewer's budget and for ``--auto-accept``. The whole channel is shrunk the same way by the
    model's skill (:func:`model_skill`): a model that barely beats chance has anchors in name only.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k = probs.shape[1]
    channel = np.eye(k)
    prior = np.bincount(labels, minlength=k) / max(len(labels), 1)
    skill = model_skill(probs, labels)
    n_anchors = min(len(probs), max(MIN_ANCHORS, int(np.ceil(share * len(probs)))))
    for j in range(k):
        if not n_anchors:
            continue
        # the n surest rows, and every row tied with the last of them (a sharp model gives many ties)
        cutoff = np.partition(probs[:, j], len(probs) - n_anchors)[len(probs) - n_anchors]
        top = probs[:, j] >= cutoff - EPS
        spread = np.bincount(labels[top], minlength=k) / int(top.sum())
        # full trust once the anchors are mostly labelled j; a linear ramp from "like any row"
        ramp = MAJORITY - prior[j]
        trust = float(np.clip((spread[j] - prior[j]) / ramp, 0.0, 1.0)) if ramp > 1e-6 else float(spread[j] > prior[j])
        trust *= skill
        channel[:, j] = trust * spread + (1.0 - trust) * channel[:, j]
    return channel


def true_class_posterior(probs: np.ndarray, labels: np.ndarray, channel: np.ndarray) -> np.ndarray:
    """``P(true class = j | image, given label)`` per row, under class-conditional noise.

    ``probs`` (calibrated out-of-fold probabilities of the *given* label, since the models learned
    from given labels) are ``T @ p_true``: solve for the true-class probabilities ``p_true`` (clipped
    at 0, renormalised), then weigh each class by how often annotators file it under the given
    label: ``P(j | x, given i) ∝ T[i, j] * p_true_j``. The given label is evidence: where the model
    is torn between two classes, the annotator's choice of one of them tips the balance.
    """
    probs = np.asarray(probs, dtype=np.float64)
    p_true = np.clip(probs @ np.linalg.pinv(channel).T, 0.0, None)
    total = p_true.sum(axis=1, keepdims=True)
    p_true = np.where(total > 0, p_true / np.clip(total, 1e-12, None), probs)
    post = channel[labels] * p_true
    norm = post.sum(axis=1, keepdims=True)
    # a row whose recovered true-class probabilities miss every class its label is filed under
    # (only with a degenerate channel) falls back to the model's own probabilities
    return np.where(norm > 1e-12, post / np.clip(norm, 1e-12, None), probs)


def estimate_noise(
    probs: np.ndarray, labels: np.ndarray, scores: LabelScores, fit: np.ndarray | None = None
) -> NoiseEstimate:
    """Count the wrong labels (confident joint) and give each row calibrated probabilities.

    The count comes from confident learning's calibrated joint (Northcutt et al. 2021, cleanlab's
    ``estimate_joint``). The per-row probabilities: the out-of-fold probabilities, temperature-scaled
    against the given labels (:func:`fit_temperature`), combined with the noise channel of the
    anchor points (:func:`anchor_channel`, :func:`true_class_posterior`):
    ``p_wrong = 1 - P(true = given | x, given)``, ``p_suggested = P(true = suggested | x, given)``.

    The two counts bracket the truth: the confident joint counts the model's doubt as noise (about
    twice the wrong labels where noise is class-conditional), and the 1% anchors, the clearest faces
    of each class, see only noise that strikes every face of a class alike. On real faces wrong
    labels sit on the ambiguous ones: there the anchors count five to seven times fewer than the
    joint, and the queue's expected precision read 0.21-0.37 at rank 100 against 0.83-0.85
    measured. So ``p_wrong`` is read with anchors widened through :data:`ANCHOR_SHARES` until the
    joint counts at most :data:`JOINT_OVERCOUNT` times what the channel gives, when the model is
    skilled (:func:`model_skill` 1: a weaker one's joint mostly counts its own doubt). ``p_suggested``,
    which ``apply --auto-accept`` acts on with nobody looking, keeps the 1% anchors (the wider
    reading takes more real rows at no better precision); for a suggestion other than the given
    label it never exceeds ``p_wrong``, and with ``fit`` (the fold models' fit of each row while
    training on it, :func:`blend_fit`; NaN where none trained on it) never the fit's probability of
    the suggestion either. A model taught the given label that still gives the row to another class
    is a third view; without it ``--auto-accept`` took suggestions at an estimated 0.85-0.90 that
    were right 0.59-0.74 of the time on the demo and on real FER2013; with it the rows taken at
    0.7-0.9 were right at least as often as asked in 14 of 15 measurements (docs/relabel.md,
    "Auto-accept confirmed by the fold models' fit").
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k = probs.shape[1] if probs.ndim == 2 else 0
    if not len(labels):
        empty = np.zeros(0)
        return NoiseEstimate(scores.joint, np.eye(k), 1.0, empty, empty, ANCHOR_SHARE)
    temperature = fit_temperature(probs, labels)
    calibrated = top_label_calibrate(temperature_scale(probs, temperature), labels)
    rows = np.arange(len(labels))
    # a suggestion is taken as right only as far as both views agree: the posterior (1% anchors),
    # and the model itself (calibrated, it says how often annotators would file this image under it)
    share, channel = ANCHOR_SHARE, anchor_channel(calibrated, labels, share=ANCHOR_SHARE)
    clearest = true_class_posterior(calibrated, labels, channel)
    p_suggested = np.minimum(clearest[rows, scores.suggested], calibrated[rows, scores.suggested])
    if fit is not None:
        fit_suggested = np.asarray(fit, dtype=np.float64)[rows, scores.suggested]
        p_suggested = np.fmin(p_suggested, fit_suggested)  # fmin keeps p_suggested where the fit is NaN
    p_wrong = 1.0 - clearest[rows, labels]
    joint_wrong = off_diagonal(scores.joint)
    # a weaker model's joint counts its own doubt as noise (five times the truth on the demo at
    # out-of-fold accuracy 0.48): it brackets nothing, and the 1% anchors stay
    wider = [s for s in ANCHOR_SHARES if s > ANCHOR_SHARE] if model_skill(probs, labels) >= 1.0 else []
    for next_share in wider:
        if joint_wrong <= JOINT_OVERCOUNT * p_wrong.sum():
            break
        share, channel = next_share, anchor_channel(calibrated, labels, share=next_share)
        p_wrong = 1.0 - true_class_posterior(calibrated, labels, channel)[rows, labels]
    return NoiseEstimate(
        joint=scores.joint,
        channel=channel,
        temperature=temperature,
        p_wrong=p_wrong,
        # a suggestion other than the given label is right only if the given label is wrong
        p_suggested=np.where(scores.suggested != labels, np.minimum(p_suggested, p_wrong), p_suggested),
        anchor_share=share,
    )


def expected_precision(p_wrong_ranked: np.ndarray) -> np.ndarray:
    """Expected precision of the top ``k`` of a ranked queue, for every ``k`` (the running mean)."""
    p = np.asarray(p_wrong_ranked, dtype=np.float64)
    return np.cumsum(p) / np.arange(1, len(p) + 1) if len(p) else p
