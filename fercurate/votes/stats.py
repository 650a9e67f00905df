"""Vote statistics and the label schemes: arrays of counts in, columns out (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fercurate.votes.params import FERPLUS_CLASSES, NON_EMOTION

#: Why a row's votes pick no label (the ``reason`` scan records for such rows).
NO_MAJORITY, TIE, UNKNOWN, NOT_A_FACE, OTHER_CLASS, NO_VOTES = (
    "no_majority",
    "tie",
    "unknown",
    "not_a_face",
    "not_a_dataset_class",
    "no_votes",
)


def class_map(classes: Sequence[str], overrides: dict[str, str] | None = None) -> dict[str, str | None]:
    """Each FER+ class -> the dataset class its votes count for, or None (unknown, NF, absent classes).

    Uses merge-affectnet's resolver, so ``--map`` means the same in both commands: names fold by
    default (``happiness`` -> ``happy``, ``anger`` -> ``angry``) and overrides win.

    Raises:
        InputError: for an override naming a class the dataset does not have.
    """
    from fercurate.affectnet.sources import resolve_mapping

    mapping = resolve_mapping(FERPLUS_CLASSES, list(classes), overrides)
    for cls in NON_EMOTION:
        if cls.lower() not in {k.lower() for k in (overrides or {})}:
            mapping[cls] = None  # "cannot tell" and "not a face" count for no class unless mapped
    return mapping


def mapped_votes(counts: np.ndarray, mapping: dict[str, str | None], classes: Sequence[str]) -> np.ndarray:
    """``(N, len(classes))`` vote totals per dataset class (FER+ classes mapped onto one class add up)."""
    out = np.zeros((len(counts), len(classes)), dtype=np.int32)
    for j, cls in enumerate(FERPLUS_CLASSES):
        target = mapping.get(cls)
        if target is not None:
            out[:, list(classes).index(target)] += counts[:, j]
    return out


def vote_distribution(counts: np.ndarray, mapping: dict[str, str | None], classes: Sequence[str]) -> np.ndarray:
    """The normalised votes over the dataset classes (rows with no such votes are all zero)."""
    mapped = mapped_votes(counts, mapping, classes).astype(np.float64)
    total = mapped.sum(axis=1, keepdims=True)
    return np.divide(mapped, total, out=np.zeros_like(mapped), where=total > 0)


def agreement(counts: np.ndarray) -> np.ndarray:
    """Share of the votes the most-voted FER+ class got (NaN for rows without votes)."""
    n = counts.sum(axis=1).astype(np.float64)
    return np.divide(counts.max(axis=1), n, out=np.full(len(n), np.nan), where=n > 0)


def entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Entropy of each row's vote distribution over the ten FER+ classes, in bits (NaN without votes)."""
    n = counts.sum(axis=1, keepdims=True).astype(np.float64)
    p = np.divide(counts, n, out=np.zeros(counts.shape), where=n > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    out = terms.sum(axis=1)
    out[n[:, 0] == 0] = np.nan
    return out


@dataclass(frozen=True)
class SchemeLabels:
    """The label each row's votes pick under a scheme: a dataset class, or None and why not."""

    labels: list[str | None]
    reasons: list[str | None]


def scheme_labels(
    counts: np.ndarray,
    mapping: dict[str, str | None],
    classes: Sequence[str],
    scheme: str,
    current: Sequence[str] | None = None,
) -> SchemeLabels:
    """The label the votes pick for each row under ``scheme``.

    Votes are first pooled into bins: one per dataset class (FER+ classes mapped onto it add up),
    and one per FER+ class that maps to no dataset class (``unknown``, ``NF``, and e.g. ``anger`` in
    a four-class set). Then:

    * ``majority``: the bin with more than half of all votes; none when no bin has it.
    * ``plurality``: the most-voted bin, with ``unknown`` and ``NF`` set aside as abstentions; a tie
      goes to the row's ``current`` label when it is among the tied, else to the first tied class
      in ``classes`` order.
    * ``drop``: the most-voted bin over all votes; none on a tie at the top.

    In every scheme a winning bin that is no dataset class (``unknown``, ``NF``, an absent class)
    picks no label.
    """
    classes = list(classes)
    unmapped = [c for c in FERPLUS_CLASSES if mapping.get(c) is None]
    bins = np.concatenate(
        [mapped_votes(counts, mapping, classes), counts[:, [FERPLUS_CLASSES.index(c) for c in unmapped]]], axis=1
    ).astype(np.int64)
    names = [*classes, *unmapped]
    n = bins.sum(axis=1)
    labels: list[str | None] = []
    reasons: list[str | None] = []
    abstain = np.array([name in NON_EMOTION for name in names])
    for i in range(len(bins)):
        row = bins[i]
        if n[i] == 0:
            labels.append(None)
            reasons.append(NO_VOTES)
            continue
        if scheme == "plurality":
            row = np.where(abstain, -1, row)
            top = row.max()
            if top <= 0:
                labels.append(None)
                reasons.append(_why(names[int(bins[i].argmax())]))
                continue
            tied = np.flatnonzero(row == top)
            pick = int(tied[0])
            if current is not None and current[i] in names and names.index(current[i]) in tied:
                pick = names.index(current[i])
        else:
            top = row.max()
            tied = np.flatnonzero(row == top)
            pick = int(tied[0])
            if scheme == "majority" and 2 * top <= n[i]:
                labels.append(None)
                reasons.append(NO_MAJORITY)
                continue
            if scheme == "drop" and len(tied) > 1:
                labels.append(None)
                reasons.append(TIE)
                continue
        if pick < len(classes):
            labels.append(classes[pick])
            reasons.append(None)
        else:
            labels.append(None)
            reasons.append(_why(names[pick]))
    return SchemeLabels(labels, reasons)


def _why(name: str) -> str:
    return {"unknown": UNKNOWN, "NF": NOT_A_FACE}.get(name, OTHER_CLASS)


def soft_targets(
    rows: pd.DataFrame, y: np.ndarray, classes: Sequence[str], mapping: dict[str, str | None] | None = None
) -> np.ndarray | None:
    """Training targets from votes: each row's normalised votes over ``classes`` (FER+ classes counted
    as ``mapping`` says, the default mapping when None), or the one-hot of its label ``y`` where it has
    no votes for any of them; None when no row has votes."""
    from fercurate.manifest import VOTE_COUNT_COLUMNS, VoteCol

    if VoteCol.N not in rows.columns or not rows[VoteCol.N].notna().any():
        return None
    counts = rows[list(VOTE_COUNT_COLUMNS)].fillna(0).astype("int64").to_numpy()
    dist = vote_distribution(counts, mapping if mapping is not None else class_map(classes), classes)
    none = dist.sum(axis=1) == 0
    dist[none] = np.eye(len(classes))[np.asarray(y)[none]]
    return dist.astype(np.float32)


def gold_against_votes(rows: pd.DataFrame, y: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, str]:
    """Gold labels with the annotators' majority (``vote_majority``) where a gold row has one, and a note
    saying how many labels that changed."""
    from fercurate.manifest import VoteCol

    out = np.asarray(y).copy()
    if VoteCol.MAJORITY not in rows.columns:
        return out, "gold scored against the labels: the gold rows have no annotator votes"
    majority = rows[VoteCol.MAJORITY].to_numpy(dtype=object)
    index = {c: j for j, c in enumerate(classes)}
    use = np.array([isinstance(m, str) and m in index for m in majority])
    out[use] = [index[m] for m in majority[use]]
    changed = int((out != np.asarray(y)).sum())
    note = (
        f"gold scored against the annotators' vote majority on {int(use.sum())} of {len(out)} gold images "
        f"(the label elsewhere); {changed} differ from the label"
    )
    return out, note
