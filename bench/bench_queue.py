"""Expected vs measured precision of the review queue, and of --auto-accept, against known truth.

Reads a flagged version's review queue as the version holds it (its order, estimates and
suggestions, and the rows ``apply --auto-accept`` would take); for a version flagged by an older
fercurate, without those columns, recomputes them from its ``prob_<class>`` columns with the options
that flag recorded. Compares with the truth:

* a demo workspace: ``--demo DEST`` (``DEST/truth.parquet``; wrong = given label != true label);
* real FER: ``--index fer4_index.csv --votes ferplus_votes.csv`` (bench/real's files): a label is
  wrong when at least ``--agree`` (6) of the 10 FER+ annotators agree on another class; rows
  without votes are left out.

    python bench/bench_queue.py WORKSPACE --demo /tmp/queue/d
    python bench/bench_queue.py WORKSPACE --version v0002 --index fer4_index.csv --votes ferplus_votes.csv

Prints one JSON object: estimated and measured precision at the report ranks, and for each
auto-accept precision the number accepted, their expected and their measured precision.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fercurate.errors import FercurateError
from fercurate.manifest import ACTIVE, Col
from fercurate.relabel.apply import auto_candidates
from fercurate.relabel.flag import SUGGESTED_LABEL, FlagParams, classes_of, prob_column
from fercurate.relabel.queue import P_SUGGESTED, P_WRONG, QUEUE_RANK, REPORT_RANKS
from fercurate.relabel.scoring import estimate_noise, expected_precision, score_labels
from fercurate.workspace import VersionInfo, Workspace

#: FER+ vote columns and the fercurate class each counts for.
FERPLUS = {"neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad",
           "anger": "angry", "disgust": "disgust", "fear": "fear", "contempt": "contempt",
           "unknown": "unknown", "NF": "not_a_face"}  # fmt: skip


def demo_truth(dest: Path) -> pd.DataFrame:
    """``path -> true_label`` from a demo's truth file."""
    truth = pd.read_parquet(dest / "truth.parquet")
    return truth[["path", "true_label"]].dropna()


def ferplus_truth(index: Path, votes: Path, agree: int) -> pd.DataFrame:
    """``path -> true_label`` from FER+ votes: the class at least ``agree`` annotators chose, else None."""
    idx = pd.read_csv(index)
    v = pd.read_csv(votes)
    counts = v[list(FERPLUS)].to_numpy()
    top = counts.argmax(axis=1)
    names = np.array([FERPLUS[c] for c in FERPLUS], dtype=object)
    v["true_label"] = np.where(counts.max(axis=1) >= agree, names[top], None)
    out = idx.merge(v[["source", "true_label"]], on="source", how="inner")
    return out[["path", "true_label"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--version", default=None, help="flagged version (default: latest)")
    ap.add_argument("--demo", type=Path, default=None)
    ap.add_argument("--index", type=Path, default=None)
    ap.add_argument("--votes", type=Path, default=None)
    ap.add_argument("--agree", type=int, default=6)
    args = ap.parse_args()
    truth_files = [args.demo / "truth.parquet"] if args.demo is not None else [args.index, args.votes]
    if None in truth_files:
        sys.exit("bench_queue needs a truth: --demo DEST, or --index fer4_index.csv --votes ferplus_votes.csv")
    missing = [str(f) for f in truth_files if not f.exists()]
    if missing:
        sys.exit(f"no such truth file: {', '.join(missing)} (bench/real/prepare.py writes the real ones)")

    try:
        info, df = Workspace(args.workspace).read(args.version)
    except FercurateError as exc:  # a missing workspace or an unknown version: its one line, exit 1
        sys.exit(str(exc))
    rows = df[df[Col.STATUS] == ACTIVE].sort_values(Col.IMAGE_ID, kind="stable").reset_index(drop=True)
    classes = classes_of(rows)
    probs = rows[[prob_column(c) for c in classes]].to_numpy(dtype=np.float64)
    labels = np.array([classes.index(c) for c in rows[Col.LABEL]], dtype=np.int64)
    queue = stored_queue(rows, info) if P_SUGGESTED in rows.columns else recomputed_queue(rows, info, probs, labels)

    if args.demo is not None:
        truth = demo_truth(args.demo)
        votes_only = False
    else:
        truth = ferplus_truth(args.index, args.votes, args.agree)
        votes_only = True
    true = rows[[Col.PATH]].merge(truth, left_on=Col.PATH, right_on="path", how="left")["true_label"]
    known = true.notna().to_numpy() if not votes_only else rows[Col.PATH].isin(set(truth["path"])).to_numpy()
    true_arr = true.to_numpy(dtype=object)
    given = rows[Col.LABEL].to_numpy(dtype=object)
    # wrong: the truth names another class (FER+: at least --agree annotators agree on it)
    wrong = np.array([t is not None and not pd.isna(t) and t != g for t, g in zip(true_arr, given, strict=True)])

    order = queue.order[known[queue.order]]  # rows without truth leave the queue for measuring
    est = expected_precision(queue.p_wrong[order])
    real = np.cumsum(wrong[order]) / np.arange(1, len(order) + 1)
    ranks = [k for k in (*REPORT_RANKS, len(order)) if 0 < k <= len(order)]
    right = np.array([t == s for t, s in zip(true_arr, queue.suggested, strict=True)])
    auto = {}
    for target in (0.5, 0.7, 0.8, 0.9, 0.95):
        take = queue.accepted(target) & known
        auto[str(target)] = {
            "accepted": int(take.sum()),
            "expected_precision": round(float(queue.p_suggested[take].mean()), 4) if take.any() else None,
            "measured_precision": round(float(right[take].mean()), 4) if take.any() else None,
        }
    out = {
        "version": info.version,
        "rows": len(rows),
        "rows_with_truth": int(known.sum()),
        "wrong_labels_in_truth": int(wrong[known].sum()),
        "oof_accuracy": round(float((probs.argmax(axis=1) == labels).mean()), 4),
        "ranked_by": f"{queue.method}, fit_weight {info.params.get('fit_weight', 0.0)}",
        "filter": queue.filter_by,
        **queue.figures,
        "precision_at": {
            str(k): {"expected": round(float(est[k - 1]), 4), "measured": round(float(real[k - 1]), 4)} for k in ranks
        },
        "auto_accept": auto,
    }
    print(json.dumps(out, indent=1))


@dataclass
class Queue:
    """What a flagged version's review queue says, per active row (in ``rows``' order)."""

    method: str
    filter_by: str
    order: np.ndarray  # the queued rows, first to review first
    p_wrong: np.ndarray
    p_suggested: np.ndarray
    suggested: np.ndarray  # class names
    accepted: Callable[[float], np.ndarray]  # rows apply --auto-accept would relabel at a precision
    figures: dict[str, Any]  # the estimates reported beside the measurements


def stored_queue(rows: pd.DataFrame, info: VersionInfo) -> Queue:
    """The queue as the version holds it (what serve shows and apply acts on): its queue_rank order
    (flag ranks with the fold models' fit too, which the manifest does not keep), its estimates,
    and apply's own choice of auto-accepted rows."""

    def accepted(precision: float) -> np.ndarray:
        chosen = np.zeros(len(rows), dtype=bool)
        chosen[auto_candidates(rows, set(), precision)] = True
        return chosen

    rank = rows[QUEUE_RANK].to_numpy(dtype=np.float64)
    queued = np.flatnonzero(~np.isnan(rank))
    extra = info.extra
    return Queue(
        method=info.params.get("method") or FlagParams.method,
        filter_by=info.params.get("filter_by") or FlagParams.filter_by,
        order=queued[np.argsort(rank[queued], kind="stable")],
        p_wrong=rows[P_WRONG].to_numpy(dtype=np.float64),
        p_suggested=rows[P_SUGGESTED].to_numpy(dtype=np.float64),
        suggested=rows[SUGGESTED_LABEL].to_numpy(dtype=object),
        accepted=accepted,
        figures={
            "flagged": extra["flagged"],
            "estimated_wrong_confident_joint": extra["estimated_wrong"],
            "expected_wrong": round(extra["expected_wrong"], 1),
            "temperature": round(extra["temperature"], 4),
            "anchor_share": extra["anchor_share"],
        },
    )


def recomputed_queue(rows: pd.DataFrame, info: VersionInfo, probs: np.ndarray, labels: np.ndarray) -> Queue:
    """The queue of a version flagged before the queue's columns were stored, recomputed from its
    probabilities with the options that flag recorded (the flag's defaults where it recorded none)."""
    classes = classes_of(rows)
    method = info.params.get("method") or FlagParams.method
    filter_by = info.params.get("filter_by") or FlagParams.filter_by
    scores = score_labels(probs, labels, method=method, filter_by=filter_by)
    noise = estimate_noise(probs, labels, scores)
    suggested = np.asarray(classes, dtype=object)[scores.suggested]
    other = scores.flagged & (scores.suggested != labels)
    return Queue(
        method=method,
        filter_by=filter_by,
        order=scores.ranked(),
        p_wrong=noise.p_wrong,
        p_suggested=noise.p_suggested,
        suggested=suggested,
        accepted=lambda precision: other & (noise.p_suggested >= precision),
        figures={
            "flagged": int(scores.flagged.sum()),
            "estimated_wrong_confident_joint": noise.wrong_total,
            "expected_wrong": round(noise.expected_wrong, 1),
            "temperature": round(noise.temperature, 4),
            "anchor_share": noise.anchor_share,
        },
    )


if __name__ == "__main__":
    main()
