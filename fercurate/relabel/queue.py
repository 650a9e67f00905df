"""The review queue: how many labels are wrong, how far a person should review, how sure each rank is.

``flag`` ranks the flagged rows by their mislabel score. This module sizes the part of that queue a
person is asked to review (the *budget*) and says, at every rank, the precision the reviewer can
expect: the mean, over the top ``k``, of each row's calibrated probability that its given label is
wrong (:func:`fercurate.relabel.scoring.estimate_noise`). Rows past the budget stay flagged in the
manifest (``in_budget`` false), so a larger ``--budget`` later (a cached re-flag) reaches them.

Columns written on every active row (null elsewhere), declared in the schema
(:data:`fercurate.manifest.COLUMNS`) and in ``docs/manifest.md``:

* ``p_label_wrong``: calibrated probability that the given label is wrong;
* ``p_suggested_true``: calibrated probability that the suggested label is the true one (what
  ``apply --auto-accept PRECISION`` compares with the precision asked for);
* ``queue_rank``: 1 for the flag most likely wrong, 2 for the next, ...; null on rows not flagged;
* ``in_budget``: whether the flagged row is within the review budget (the page shows these).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fercurate.errors import InputError
from fercurate.manifest import Col
from fercurate.relabel.scoring import LabelScores, NoiseEstimate, expected_precision

P_WRONG = Col.P_LABEL_WRONG
P_SUGGESTED = Col.P_SUGGESTED_TRUE
QUEUE_RANK = Col.QUEUE_RANK
IN_BUDGET = Col.IN_BUDGET
QUEUE_COLUMNS = (P_WRONG, P_SUGGESTED, QUEUE_RANK, IN_BUDGET)
PRECISION_PNG = "queue_precision.png"

#: The default budget never exceeds this many images: at 2-3 s a decision, under an hour of review.
BUDGET_CAP = 1000
#: ... nor goes past the rank where the expected precision of the queue so far falls below this:
#: beyond it a reviewer would spend most of the time confirming labels that were right.
BUDGET_MIN_PRECISION = 0.5
#: ... but a queue this short is always offered (up to the number of flags): about 5 minutes of
#: review, and the estimate can read low. The top 100 measured 0.83-0.85 against FER+ over three
#: cross-fittings of real fer4, expected 0.21-0.37 before the anchors widened (0.63-0.75 since),
#: and 0.65 on the demo (expected 0.69). A floor of 20 once left real fer4 a queue of 20
#: (docs/relabel.md).
BUDGET_MIN = 100
#: Ranks reported in the precision table (those past the queue's end are left out).
REPORT_RANKS = (10, 25, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


@dataclass(frozen=True)
class QueuePlan:
    """The ranked flags, the review budget and the expected precision at every rank.

    Attributes:
        order: row indices of the flagged rows, most likely wrong first.
        budget: how many of them (from the top) the reviewer is asked to decide.
        precision: (len(order),) expected precision of the top ``k``, at index ``k - 1``.
        estimated_wrong: the confident joint's estimate of how many labels are wrong in all.
        default_budget: whether ``budget`` was sized from the estimate (no ``--budget``).
    """

    order: np.ndarray
    budget: int
    precision: np.ndarray
    estimated_wrong: int
    default_budget: bool

    def precision_at(self, k: int) -> float:
        """Expected precision of the top ``k`` (``k`` capped at the queue's length; 1.0 when empty)."""
        if not len(self.precision) or k <= 0:
            return 1.0
        return float(self.precision[min(k, len(self.precision)) - 1])

    def table(self) -> list[dict[str, float | int]]:
        """Expected precision and expected wrong labels found at the report ranks, the budget and the end."""
        n = len(self.order)
        ranks = sorted({k for k in REPORT_RANKS if k < n} | ({self.budget} if self.budget else set()) | {n} - {0})
        return [
            {
                "rank": k,
                "expected_precision": round(self.precision_at(k), 4),
                "expected_wrong_found": round(self.precision_at(k) * k, 1),
            }
            for k in ranks
        ]


def default_budget(estimated_wrong: int, precision: np.ndarray) -> int:
    """The review budget when none is given: the estimated number of wrong labels, capped.

    Capped by :data:`BUDGET_CAP` and by the last rank at which the queue's expected precision is
    still at least :data:`BUDGET_MIN_PRECISION` (a weak model's confident joint over-counts the
    wrong labels; the precision cap keeps the queue worth a person's time), but never under
    :data:`BUDGET_MIN`, and never over the number of flags.
    """
    good = np.flatnonzero(np.asarray(precision) >= BUDGET_MIN_PRECISION)
    by_precision = int(good[-1]) + 1 if len(good) else 0
    sized = max(BUDGET_MIN, min(estimated_wrong, BUDGET_CAP, by_precision))
    return int(min(sized, len(precision)))


def plan_queue(scores: LabelScores, noise: NoiseEstimate, budget: int | None = None) -> QueuePlan:
    """Rank the flags by score, size the budget and estimate the precision at every rank.

    Raises:
        InputError: for a negative budget.
    """
    if budget is not None and budget < 0:
        raise InputError(
            f"budget {budget} must be 0 or more (default: sized from the estimated wrong labels)", param="budget"
        )
    order = scores.ranked()
    precision = expected_precision(noise.p_wrong[order])
    chosen = default_budget(noise.wrong_total, precision) if budget is None else min(budget, len(order))
    return QueuePlan(
        order=order,
        budget=int(chosen),
        precision=precision,
        estimated_wrong=noise.wrong_total,
        default_budget=budget is None,
    )


def queue_columns(n_rows: int, noise: NoiseEstimate, plan: QueuePlan) -> dict[str, np.ndarray]:
    """The queue columns for the ``n_rows`` scored rows (in their order), ready to place in a manifest."""
    rank = np.full(n_rows, np.nan)
    rank[plan.order] = np.arange(1, len(plan.order) + 1)
    in_budget = np.zeros(n_rows, dtype=bool)
    in_budget[plan.order[: plan.budget]] = True
    return {P_WRONG: noise.p_wrong, P_SUGGESTED: noise.p_suggested, QUEUE_RANK: rank, IN_BUDGET: in_budget}


def place_columns(out: pd.DataFrame, has: np.ndarray, idx: np.ndarray, columns: dict[str, np.ndarray]) -> None:
    """Write per-scored-row ``columns`` into ``out`` (rows where ``has``, from positions ``idx``); nulls elsewhere."""
    for name, values in columns.items():
        if values.dtype == bool:
            col = pd.array([pd.NA] * len(out), dtype="boolean")
            col[has] = values[idx]
        elif name == QUEUE_RANK:
            col = pd.array([pd.NA] * len(out), dtype="Int32")
            ranks = values[idx]
            known = ~np.isnan(ranks)
            where = np.flatnonzero(has)[known]
            col[where] = ranks[known].astype(np.int32)
        else:
            col = np.full(len(out), np.nan)
            col[has] = values[idx]
        out[name] = col


def precision_plot(plan: QueuePlan, title: str) -> bytes:
    """PNG: expected precision of the top k against k, the budget marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        k = np.arange(1, len(plan.precision) + 1)
        if len(k):
            ax.plot(k, plan.precision, color="#1f6feb", label="expected precision of the top k")
        if plan.budget:
            ax.axvline(plan.budget, color="#cf222e", linestyle="--", label=f"review budget ({plan.budget})")
        ax.set_xlabel("rank k in the review queue")
        ax.set_ylabel("expected precision (share of wrong labels)")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.set_title(title, fontsize=10)
        if len(k) or plan.budget:
            ax.legend(loc="lower left", fontsize=9)
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
