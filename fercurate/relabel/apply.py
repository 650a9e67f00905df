"""``fercurate relabel-review apply``: turn the review's decisions into a new manifest version.

The standing decision per image (a replay of the decision log, see
:mod:`fercurate.relabel.decisions`) is applied to the chosen version:

* ``relabel`` sets ``label`` to the chosen class (``label_original`` keeps the scanned label) and
  appends ``relabel:<old>-><new> by human`` to ``reason``;
* ``remove`` sets ``status=removed`` with ``relabel_review:removed by human``;
* ``keep`` changes nothing.

``auto_accept=PRECISION`` also relabels, *by the model*, every flagged active row that has no
standing decision and whose suggestion is estimated right with probability at least ``PRECISION``
(the flag's ``p_suggested_true``: out-of-fold probabilities calibrated against the given labels,
capped by the fold models' fit of the suggestion, see :func:`fercurate.relabel.scoring.estimate_noise`),
so the accepted set's expected precision is at
least ``PRECISION`` too (``relabel:<old>-><new> by model``). The model's picks are recorded in the
new version (reason, params, counts and their expected precision), not in the decision log: the log
is what people decided, and the picks follow from the flag columns and ``PRECISION`` alone. The
estimate comes from the models alone and is not a measurement (:data:`AUTO_ACCEPT_CAVEAT`, said
with every apply that takes a row).

Every change is "make it so", never "toggle": a relabel to the label a row already has, or a removal
of a removed row, changes nothing, so applying the same log twice (or applying again to this
stage's own output) yields identical labels and statuses.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fercurate.errors import InputError
from fercurate.manifest import ACTIVE, REMOVED, Col
from fercurate.relabel.decisions import KEEP, RELABEL, REMOVE, DecisionLog, log_path
from fercurate.relabel.flag import FLAGGED, SUGGESTED_LABEL, classes_of
from fercurate.relabel.queue import P_SUGGESTED
from fercurate.reports import to_dict
from fercurate.workspace import VersionInfo, Workspace

STAGE = "relabel-apply"
REMOVED_REASON = "relabel_review:removed by {by}"

#: Said with every auto-accept that relabels a row: the precision estimate comes from the cross-fitted
#: models alone (docs/relabel.md, "Auto-accept confirmed by the fold models' fit": two cross-fittings
#: of real fer4 scored against FER+).
AUTO_ACCEPT_CAVEAT = (
    "the model's precision estimate is not a measurement: against FER+ annotators on real faces, rows "
    "taken at 0.7 were right 65-80% of the time, at 0.8 83-93% and at 0.9 90-100% (docs/relabel.md); "
    "check a sample of these relabels before training on them"
)


@dataclass(frozen=True)
class ApplyParams:
    """Options of ``fercurate relabel-review apply`` (the CLI's defaults point here).

    Attributes:
        version: version to apply the decisions to (default: latest).
        auto_accept: a precision in (0, 1]: relabel the flagged, undecided rows whose suggestion is
            estimated right with at least this probability (``p_suggested_true``).
    """

    version: str | None = None
    auto_accept: float | None = None
    accept_votes: int | None = None  # accept the annotators' majority where at least this many agree


@dataclass(frozen=True)
class ApplyResult:
    """What an apply changed and the version it wrote."""

    version: VersionInfo
    parent: str
    relabeled_by_human: int
    relabeled_by_model: int
    removed: int
    kept: int
    already_applied: int
    changes: dict[str, int]
    skipped: dict[str, int]
    decisions: int
    log: Path
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    relabeled_by_votes: int = 0
    auto_expected_precision: float | None = None

    @property
    def changed(self) -> int:
        return self.relabeled_by_human + self.relabeled_by_model + self.relabeled_by_votes + self.removed

    def to_dict(self) -> dict[str, Any]:
        return to_dict(
            self,
            changed=self.changed,
            auto_expected_precision=None
            if self.auto_expected_precision is None
            else round(self.auto_expected_precision, 4),
        )


def _with_reason(existing: Any, new: str) -> str:
    if existing is None or (isinstance(existing, float) and np.isnan(existing)) or existing is pd.NA or not existing:
        return new
    return f"{existing}; {new}"


def apply(workspace: Workspace, params: ApplyParams) -> ApplyResult:
    """Apply the decision log (and optionally the model's confident suggestions) as a new version.

    Raises:
        InputError: for an ``auto_accept`` outside (0, 1], or one asked of a version without flags, and
            when there is nothing to apply (no decision in the log and no ``auto_accept``).
        WorkspaceError: for a missing workspace or an unknown version.
    """
    started = time.perf_counter()
    if params.auto_accept is not None and not 0.0 < params.auto_accept <= 1.0:
        raise InputError(
            f"auto_accept {params.auto_accept} must be a precision in (0, 1], e.g. 0.9 "
            "(accept only suggestions estimated right at least 9 times in 10)",
            param="auto_accept",
        )
    log = DecisionLog(log_path(workspace.root))
    with workspace.lock("fercurate relabel-review apply"):
        info, df = workspace.read(params.version)
        if params.auto_accept is not None and SUGGESTED_LABEL not in df.columns:
            raise InputError(
                f"version {info.version} has no suggested labels for auto_accept; run "
                "`fercurate relabel-review flag` first (or apply a version that descends from a flag)",
                param="auto_accept",
            )
        if params.auto_accept is not None and P_SUGGESTED not in df.columns:
            raise InputError(
                f"version {info.version} was flagged without precision estimates ({P_SUGGESTED}); run "
                "`fercurate relabel-review flag` again (cached folds make it quick) before auto_accept",
                param="auto_accept",
            )
        out = df.copy()
        pos = pd.Series(np.arange(len(out)), index=out[Col.IMAGE_ID].to_numpy())
        labels = out[Col.LABEL].to_numpy(dtype=object).copy()
        statuses = out[Col.STATUS].to_numpy(dtype=object).copy()
        reasons = out[Col.REASON].to_numpy(dtype=object).copy()
        counts: Counter[str] = Counter()
        changes: Counter[str] = Counter()
        skipped: Counter[str] = Counter()

        decisions = log.current()
        if not decisions and params.auto_accept is None and params.accept_votes is None:
            raise InputError(
                f"the decision log {log.path} holds no decisions, so there is nothing to apply; review the "
                "flagged images with `fercurate relabel-review serve` first, or pass auto_accept P",
                param="auto_accept",
            )
        for image_id, dec in decisions.items():
            i = pos.get(image_id)
            if i is None:
                skipped["not_in_version"] += 1
                continue
            if dec.decision == KEEP:
                counts["kept"] += 1
            elif dec.decision == RELABEL:
                if statuses[i] != ACTIVE:
                    skipped["not_active"] += 1
                elif labels[i] == dec.label:
                    counts["already_applied"] += 1
                else:
                    change = f"{labels[i]}->{dec.label}"
                    reasons[i] = _with_reason(reasons[i], f"relabel:{change} by {dec.by}")
                    labels[i] = dec.label
                    counts[f"relabeled_by_{dec.by}"] += 1
                    changes[change] += 1
            elif dec.decision == REMOVE:
                if statuses[i] == REMOVED:
                    counts["already_applied"] += 1
                elif statuses[i] != ACTIVE:
                    skipped["not_active"] += 1
                else:
                    statuses[i] = REMOVED
                    reasons[i] = _with_reason(reasons[i], REMOVED_REASON.format(by=dec.by))
                    counts["removed"] += 1
                    changes["removed"] += 1

        accepted_p: list[float] = []
        if params.auto_accept is not None:
            for i in auto_candidates(out, set(decisions), params.auto_accept):
                accepted_p.append(float(out[P_SUGGESTED].iat[i]))
                new = str(out[SUGGESTED_LABEL].iat[i])
                change = f"{labels[i]}->{new}"
                reasons[i] = _with_reason(reasons[i], f"relabel:{change} by model")
                labels[i] = new
                counts["relabeled_by_model"] += 1
                changes[change] += 1

        if params.accept_votes is not None:  # the annotators' majority (fercurate.votes.flagging)
            from fercurate.votes.flagging import accept_candidates

            for i, new in accept_candidates(workspace, info, out, set(decisions), params.accept_votes):
                change = f"{labels[i]}->{new}"
                reasons[i] = _with_reason(reasons[i], f"relabel:{change} by votes")
                labels[i] = new
                counts["relabeled_by_votes"] += 1
                changes[change] += 1

        out[Col.LABEL] = labels
        out[Col.STATUS] = statuses
        out[Col.REASON] = pd.array(reasons, dtype="string")
        version = workspace.commit(
            out,
            stage=STAGE,
            parent=info,
            params={
                "version": info.version,
                "auto_accept": params.auto_accept,
                "accept_votes": params.accept_votes,
                "log": str(log.path),
            },
            extra={
                "changes": dict(changes),
                "counts": dict(counts),
                "skipped": dict(skipped),
                "auto_expected_precision": float(np.mean(accepted_p)) if accepted_p else None,
            },
        )
    return ApplyResult(
        version=version,
        parent=info.version,
        relabeled_by_human=counts["relabeled_by_human"],
        relabeled_by_model=counts["relabeled_by_model"],
        removed=counts["removed"],
        kept=counts["kept"],
        already_applied=counts["already_applied"],
        changes=dict(changes.most_common()),
        skipped=dict(skipped),
        decisions=len(decisions),
        log=log.path,
        seconds=time.perf_counter() - started,
        relabeled_by_votes=counts["relabeled_by_votes"],
        auto_expected_precision=float(np.mean(accepted_p)) if accepted_p else None,
        notes=[AUTO_ACCEPT_CAVEAT] if accepted_p else [],
    )


def auto_candidates(df: pd.DataFrame, decided: set[str], precision: float) -> list[int]:
    """Positions of flagged active rows without a decision whose suggestion is estimated right at ``precision``.

    What ``auto_accept`` relabels: the suggestion is another class of the dataset and its
    ``p_suggested_true`` reaches ``precision``. ``bench/bench_queue.py`` scores the same rows.
    """
    classes = set(classes_of(df))
    out = []
    flagged = df[FLAGGED].fillna(False).astype(bool).to_numpy()
    for i in np.flatnonzero(flagged & (df[Col.STATUS] == ACTIVE).to_numpy()):
        row = df.iloc[i]
        suggested = row[SUGGESTED_LABEL]
        if row[Col.IMAGE_ID] in decided or pd.isna(suggested) or suggested not in classes:
            continue
        if suggested != row[Col.LABEL] and float(row[P_SUGGESTED]) >= precision:
            out.append(int(i))
    return out
