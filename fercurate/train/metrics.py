"""Evaluation metrics and the paired bootstrap used to compare two trained models.

numpy and scikit-learn only: this module must not import torch, so that reports can be computed
and re-rendered from saved predictions without loading the trainer. scikit-learn is imported
inside :func:`classification_metrics` to keep ``import fercurate.train`` fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fercurate.errors import InputError
from fercurate.reports import to_dict


@dataclass
class Metrics:
    """Test-set metrics of one model.

    Attributes:
        accuracy: Fraction of rows predicted correctly.
        macro_f1: Unweighted mean of the per-class F1 scores over all ``classes``.
        per_class: ``{class: {"precision", "recall", "f1", "support"}}``; a class never predicted
            (or never present) scores 0 rather than raising.
        confusion: ``confusion[i][j]`` = rows of true class ``i`` predicted as ``j``.
        classes: Class names in label order.
    """

    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    classes: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (builtin floats, ints, lists)."""
        return to_dict(self)


def _labels(y: Any, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise InputError(f"{name} must be 1-D class indices, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def classification_metrics(y_true: Any, y_pred: Any, classes: Sequence[str]) -> Metrics:
    """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        y_true: True class indices, ``(N,)``.
        y_pred: Predicted class indices, ``(N,)``.
        classes: Class names; indices run over ``range(len(classes))``.

    Returns:
        A :class:`Metrics`.

    Raises:
        InputError: Mismatched lengths, no rows, or indices outside the class list.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    k = len(classes)
    if t.shape != p.shape:
        raise InputError(f"y_true has {t.shape[0]} rows but y_pred has {p.shape[0]}")
    if t.size == 0:
        raise InputError("cannot compute metrics on zero rows")
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.min() < 0 or arr.max() >= k:
            raise InputError(
                f"{name} holds index {int(arr.min() if arr.min() < 0 else arr.max())}, outside "
                f"the {k} classes ({', '.join(classes)})"
            )
    labels = list(range(k))
    # labels= keeps every class in the report even when absent from both arrays; zero_division=0
    # scores such a class 0 instead of warning, which is what a curated-vs-raw report wants.
    precision, recall, f1, support = precision_recall_fscore_support(t, p, labels=labels, zero_division=0)
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    return Metrics(
        accuracy=float((t == p).mean()),
        macro_f1=float(np.mean(f1)),
        per_class=per_class,
        confusion=confusion_matrix(t, p, labels=labels).astype(int).tolist(),
        classes=list(classes),
    )


def paired_bootstrap_ci(
    correct_a: Any,
    correct_b: Any,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Accuracy difference ``b - a`` on the same test rows, with a paired bootstrap interval.

    Rows are resampled jointly (the same resampled rows score both models), so the interval
    reflects only the disagreement between the models, not test-set difficulty they share.

    Implementation: the per-row difference ``d = b - a`` takes only the values -1, 0 and 1, so
    the mean of a bootstrap resample depends only on how many of each value it drew, and those
    counts are exactly ``Multinomial(n, observed frequencies)``. Drawing the counts is the same
    distribution as drawing ``n`` row indices, with O(n_boot) memory and time instead of
    O(n_boot * n), and without a Python loop.

    Args:
        correct_a: bool ``(N,)``, row ``i`` correct under model A.
        correct_b: bool ``(N,)``, row ``i`` correct under model B.
        n_boot: Bootstrap resamples.
        seed: numpy seed; the same inputs and seed give the same interval.
        level: Two-sided confidence level of the percentile interval.

    Returns:
        ``(delta, lo, hi)``: observed accuracy of B minus A, and the interval bounds.

    Raises:
        InputError: Mismatched or empty inputs, ``n_boot < 1`` or ``level`` outside (0, 1).
    """
    a = np.asarray(correct_a)
    b = np.asarray(correct_b)
    if a.ndim != 1 or a.shape != b.shape:
        raise InputError(f"correct_a and correct_b must be 1-D and the same length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise InputError("cannot bootstrap an accuracy difference over zero rows")
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise InputError(f"need n_boot >= 1 and 0 < level < 1, got n_boot={n_boot}, level={level}")
    d = b.astype(bool).astype(np.int8) - a.astype(bool).astype(np.int8)
    n = d.size
    freq = np.array([(d == -1).sum(), (d == 0).sum(), (d == 1).sum()], dtype=np.float64) / n
    draws = np.random.default_rng(seed).multinomial(n, freq, size=n_boot)
    boot = (draws[:, 2] - draws[:, 0]) / n
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [tail, 1.0 - tail])
    return float(d.mean()), float(lo), float(hi)
