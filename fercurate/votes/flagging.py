"""Flags from annotator votes: a label they clearly reject is ``wrong``, a face they split on ``ambiguous``.

Per row with votes, with ``n`` votes in all (``unknown`` and ``NF`` included) pooled into bins as
for the schemes (one per dataset class, one per FER+ class the dataset lacks):

* ``support``: the share of the votes for the row's label;
* ``top``: the most-voted bin and its share.

A row is

* ``wrong`` when ``support <= max_support`` and another bin has at least ``min_majority`` of the
  votes (and more than half): the suggestion is that bin's class (none when it is no dataset
  class: ``NF``, ``unknown``, or an absent class, so a reviewer removes it);
* ``ambiguous`` when it is not wrong and no bin has a majority or the majority is another class;
* not flagged when the annotators' majority is its label.

The mislabel score that ranks the queue is ``1 - support``.

Combined with the model (``relabel-review flag`` where votes exist, the default): votes decide
rows that have them: a wrong or ambiguous row by votes is flagged with the votes' suggestion even
where the model is content, and a row whose label the annotators' majority confirms is not flagged
even where the model doubts it (ten people outvote one classifier's guess). Rows without votes keep
the model's flag (kind ``wrong``). The model's probabilities stay in ``prob_<class>``; a votes-only
run writes the vote shares there, so the review page and ``apply --auto-accept`` read the same
columns either way.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fercurate.errors import InputError
from fercurate.manifest import ACTIVE, VOTE_COUNT_COLUMNS, Col, VoteCol, atomic_write
from fercurate.votes.params import FERPLUS_CLASSES
from fercurate.votes.stage import recorded_mapping
from fercurate.votes.stats import mapped_votes

FLAG_KIND = VoteCol.FLAG_KIND
WRONG, AMBIGUOUS = "wrong", "ambiguous"
#: ``--votes`` of ``relabel-review flag``: combine where votes exist, votes alone, or ignore them.
VOTE_MODES: tuple[str, ...] = ("auto", "only", "off")
#: Defaults of the ``wrong`` rule: the label has at most MAX_SUPPORT of the votes and another class
#: at least MIN_MAJORITY. Tuned on FER2013 Training rows against a held-out half of the annotators
#: (bench/bench_votes.py; docs/votes.md): on five votes they mean "all five name one other class".
MAX_SUPPORT = 0.1
MIN_MAJORITY = 0.9


@dataclass(frozen=True)
class VoteFlags:
    """Per row: ``wrong`` / ``ambiguous`` / None, the suggested class (or None) and the mislabel score."""

    kind: np.ndarray
    suggested: np.ndarray
    score: np.ndarray
    shares: np.ndarray  # (N, len(classes)) vote shares per dataset class


def vote_flags(
    counts: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    mapping: dict[str, str | None],
    max_support: float = MAX_SUPPORT,
    min_majority: float = MIN_MAJORITY,
) -> VoteFlags:
    """Flag rows from their votes ``counts`` (N, 10) and given ``labels`` (class names)."""
    n = counts.sum(axis=1).astype(np.float64)
    unmapped = [j for j, c in enumerate(FERPLUS_CLASSES) if mapping.get(c) is None]
    bins = np.concatenate([mapped_votes(counts, mapping, classes), counts[:, unmapped]], axis=1).astype(np.float64)
    share = np.divide(bins, n[:, None], out=np.zeros_like(bins), where=n[:, None] > 0)
    index = {c: j for j, c in enumerate(classes)}
    given = np.array([index.get(str(label), -1) for label in labels], dtype=np.int64)
    support = np.where(given >= 0, share[np.arange(len(share)), np.maximum(given, 0)], 0.0)
    top = share.argmax(axis=1)
    top_share = share.max(axis=1)
    has = n > 0
    majority = top_share > 0.5
    wrong = has & majority & (top_share >= min_majority) & (top != given) & (support <= max_support)
    ambiguous = has & ~wrong & (~majority | (top != given))
    kind = np.full(len(counts), None, dtype=object)
    kind[wrong] = WRONG
    kind[ambiguous] = AMBIGUOUS
    suggested = np.full(len(counts), None, dtype=object)
    names = np.array([*classes, *[None] * len(unmapped)], dtype=object)
    suggested[wrong | ambiguous] = names[top[wrong | ambiguous]]
    suggested[ambiguous & (top == given)] = None
    score = np.where(has, 1.0 - support, np.nan)
    return VoteFlags(kind=kind, suggested=suggested, score=score, shares=share[:, : len(classes)])


def has_votes(df: pd.DataFrame) -> bool:
    """Whether ``df`` carries votes on any active row."""
    return VoteCol.N in df.columns and bool(df.loc[df[Col.STATUS] == ACTIVE, VoteCol.N].notna().any())


def _rows_flags(
    rows: pd.DataFrame, classes: list[str], mapping: dict[str, str | None], max_support: float, min_majority: float
) -> tuple[np.ndarray, VoteFlags]:
    """Which of ``rows`` have votes, and the flags of those rows."""
    voted = rows[VoteCol.N].notna().to_numpy() if VoteCol.N in rows.columns else np.zeros(len(rows), bool)
    counts = rows.loc[voted, list(VOTE_COUNT_COLUMNS)].astype("int64").to_numpy()
    labels = rows.loc[voted, Col.LABEL].astype(str).to_numpy()
    return voted, vote_flags(counts, labels, classes, mapping, max_support, min_majority)


def combine_with_model(
    out: pd.DataFrame,
    rows: pd.DataFrame,
    classes: list[str],
    workspace: Any,
    info: Any,
    max_support: float = MAX_SUPPORT,
    min_majority: float = MIN_MAJORITY,
) -> pd.DataFrame:
    """``out`` (a flagged manifest) with the votes' flags where rows have votes, and ``flag_kind``."""
    from fercurate.relabel.flag import FLAGGED, MISLABEL_SCORE, SUGGESTED_LABEL

    out = out.copy()
    kind = pd.Series([None] * len(out), dtype="string", index=out.index)
    model_flagged = out[FLAGGED].fillna(False).astype(bool)
    kind[model_flagged] = WRONG
    if has_votes(rows):
        voted, flags = _rows_flags(rows, classes, recorded_mapping(workspace, info, classes), max_support, min_majority)
        where = pd.Series(np.arange(len(out)), index=out[Col.IMAGE_ID].to_numpy())
        at = where.loc[rows.loc[voted, Col.IMAGE_ID].to_numpy()].to_numpy()
        flagged = out[FLAGGED].astype("boolean").to_numpy(copy=True)
        flagged[at] = flags.kind != None  # noqa: E711 - elementwise on an object array
        out[FLAGGED] = pd.array(flagged, dtype="boolean")
        suggested = out[SUGGESTED_LABEL].astype("string").to_numpy(copy=True)
        suggested[at] = pd.array(flags.suggested, dtype="string")
        out[SUGGESTED_LABEL] = pd.array(suggested, dtype="string")
        score = out[MISLABEL_SCORE].to_numpy(dtype=np.float64, copy=True)
        score[at] = flags.score
        out[MISLABEL_SCORE] = score
        kind.iloc[at] = pd.array(flags.kind, dtype="string")
    out[FLAG_KIND] = kind.to_numpy()
    return out


def accept_candidates(workspace: Any, info: Any, df: pd.DataFrame, decided: set[str], k: int) -> list[tuple[int, str]]:
    """``relabel-review apply --accept-votes K``: (position, new label) of every active row without a
    standing decision whose votes name a dataset class other than its label with at least ``k`` votes
    and more votes than any other class.

    Raises:
        InputError: for ``k`` below 1, or a version without votes.
    """
    if k < 1:
        raise InputError(f"accept_votes {k} must be 1 or more (of about 10 FER+ votes; e.g. 7)", param="accept_votes")
    if VoteCol.N not in df.columns:
        raise InputError(
            f"version {info.version} has no annotator votes for accept_votes; run `fercurate votes import` first",
            param="accept_votes",
        )
    active = (df[Col.STATUS] == ACTIVE).to_numpy() & df[VoteCol.N].notna().to_numpy()
    active &= ~df[Col.IMAGE_ID].isin(decided).to_numpy()
    at = np.flatnonzero(active)
    classes = sorted(df.loc[df[Col.STATUS] == ACTIVE, Col.LABEL].unique().tolist())
    counts = df.iloc[at][list(VOTE_COUNT_COLUMNS)].astype("int64").to_numpy()
    mapping = recorded_mapping(workspace, info, classes)
    unmapped = [j for j, c in enumerate(FERPLUS_CLASSES) if mapping.get(c) is None]
    bins = np.concatenate([mapped_votes(counts, mapping, classes), counts[:, unmapped]], axis=1)
    top = bins.argmax(axis=1)
    unique_top = (bins == bins.max(axis=1, keepdims=True)).sum(axis=1) == 1
    labels = df[Col.LABEL].to_numpy(dtype=object)
    out = []
    for row, t, votes, single in zip(at, top, bins.max(axis=1), unique_top, strict=True):
        if single and t < len(classes) and votes >= k and classes[t] != labels[row]:
            out.append((int(row), classes[t]))
    return out


def flag_by_votes(workspace: Any, params: Any, progress: Any = None) -> Any:
    """``relabel-review flag --votes only``: flags from votes alone, no model trained.

    Writes a ``relabel-flag`` version like the model's (``prob_<class>`` hold the vote shares), so the
    review page and ``apply`` work on it unchanged.

    Raises:
        InputError: when the version has no votes (run ``fercurate votes import`` first).
    """
    from fercurate.manifest import atomic_write_text
    from fercurate.relabel.flag import (
        FLAGGED,
        HTML_FILE,
        MISLABEL_SCORE,
        PNG_FILE,
        QUEUE_FILE,
        STAGE,
        SUGGESTED_LABEL,
        FlagResult,
        _top_per_class,
        flag_columns,
        flagged_html,
        flagged_sheet,
        prob_column,
        review_queue,
    )
    from fercurate.workspace import load_pixels

    started = time.perf_counter()
    info, df = workspace.read(params.version)
    if not has_votes(df):
        raise InputError(
            f"version {info.version} has no annotator votes for votes=only; run `fercurate votes import` first",
            param="votes",
        )
    act = df[df[Col.STATUS] == ACTIVE]
    classes = sorted(act[Col.LABEL].unique().tolist())
    mapping = recorded_mapping(workspace, info, classes)
    voted, flags = _rows_flags(act, classes, mapping, params.max_support, params.min_majority)
    out = df.drop(columns=[c for c in (*flag_columns(df), FLAG_KIND) if c in df.columns]).copy()
    pos = pd.Series(np.arange(len(out)), index=out[Col.IMAGE_ID].to_numpy())
    at = pos.loc[act.loc[voted, Col.IMAGE_ID].to_numpy()].to_numpy()
    for j, cls in enumerate(classes):
        col = np.full(len(out), np.nan)
        col[at] = flags.shares[:, j]
        out[prob_column(cls)] = col
    score = np.full(len(out), np.nan)
    score[at] = flags.score
    out[MISLABEL_SCORE] = score
    suggested = np.full(len(out), None, dtype=object)
    suggested[at] = flags.suggested
    out[SUGGESTED_LABEL] = pd.array(suggested, dtype="string")
    flagged = pd.array([pd.NA] * len(out), dtype="boolean")
    flagged[at] = flags.kind != None  # noqa: E711 - elementwise on an object array
    out[FLAGGED] = flagged
    kind = np.full(len(out), None, dtype=object)
    kind[at] = flags.kind
    out[FLAG_KIND] = pd.array(kind, dtype="string")
    kinds = Counter(k for k in flags.kind if k is not None)
    pairs = Counter(
        f"{g}->{s if s is not None else '(none)'}"
        for g, s, k in zip(act.loc[voted, Col.LABEL], flags.suggested, flags.kind, strict=True)
        if k == WRONG
    )
    with workspace.lock("fercurate relabel-review flag"):
        version = workspace.commit(
            out,
            stage=STAGE,
            parent=info,
            params={
                "version": info.version,
                "votes": "only",
                "max_support": params.max_support,
                "min_majority": params.min_majority,
                "classes": classes,
            },
            extra={"classes": classes, "flagged": int(sum(kinds.values())), "kinds": dict(kinds), "votes": "only"},
        )
    report = workspace.report_dir(version.version)
    queue = review_queue(out, classes)
    atomic_write(report / QUEUE_FILE, lambda tmp: queue.to_parquet(tmp, index=False))
    top = _top_per_class(queue, params.top_per_class)
    shown = top[Col.IMAGE_ID].tolist()
    rows = out.set_index(Col.IMAGE_ID).loc[shown].reset_index()
    pixels_arr = load_pixels(workspace, info, rows, 48, progress) if len(rows) else np.zeros((0, 48, 48), np.uint8)
    pixels = {iid: pixels_arr[i] for i, iid in enumerate(shown)}
    atomic_write_text(report / HTML_FILE, flagged_html(top, classes, pixels, version.version))
    sheet = flagged_sheet(top, pixels, f"{version.version}: top flagged by votes per given class")
    atomic_write(report / PNG_FILE, lambda tmp: sheet.save(tmp, format="PNG"))
    return FlagResult(
        version=version,
        parent=info.version,
        rows=len(act),
        flagged=int(sum(kinds.values())),
        classes=classes,
        thresholds={},
        oof_accuracy=float("nan"),
        by_pair=dict(pairs.most_common()),
        folds_trained=0,
        folds_cached=0,
        queue_path=report / QUEUE_FILE,
        html_path=report / HTML_FILE,
        png_path=report / PNG_FILE,
        config_hash="",
        cache_key="",
        seconds=time.perf_counter() - started,
        notes=[f"votes only: {kinds.get(WRONG, 0)} wrong, {kinds.get(AMBIGUOUS, 0)} ambiguous; no model trained"],
    )
