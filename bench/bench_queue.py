"""Expected vs measured precision of the review queue, and of --auto-accept, against known truth.

Reads a flagged version (its ``prob_<class>`` columns), recomputes the queue's estimates from them
(so a version flagged by an older fercurate works too), ranking and flagging with the options that
flag recorded, and compares with the truth:

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
from pathlib import Path

import numpy as np
import pandas as pd

from fercurate.errors import FercurateError
from fercurate.manifest import ACTIVE, Col
from fercurate.relabel.apply import auto_candidates
from fercurate.relabel.flag import SUGGESTED_LABEL, FlagParams, classes_of, prob_column
from fercurate.relabel.queue import P_SUGGESTED, QUEUE_RANK, REPORT_RANKS
from fercurate.relabel.scoring import estimate_noise, expected_precision, score_labels
from fercurate.workspace import Workspace

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
    # rank and flag as that flag did (its recorded options; the flag's defaults for older versions)
    method = info.params.get("method") or FlagParams.method
    filter_by = info.params.get("filter_by") or FlagParams.filter_by
    scores = score_labels(probs, labels, method=method, filter_by=filter_by)
    noise = estimate_noise(probs, labels, scores)

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

    # the version's own queue order (queue_rank), which may rank with more than the probabilities
    # (flag's blend of the fold models' fit); older versions without it: the probabilities' order
    order = scores.ranked()
    if QUEUE_RANK in rows.columns:
        rank = rows[QUEUE_RANK].to_numpy(dtype=np.float64)
        order = order[np.argsort(rank[order], kind="stable")]
    order = order[known[order]]  # rows without truth leave the queue for measuring
    est = expected_precision(noise.p_wrong[order])
    real = np.cumsum(wrong[order]) / np.arange(1, len(order) + 1)
    ranks = [k for k in (*REPORT_RANKS, len(order)) if 0 < k <= len(order)]
    # what apply --auto-accept acts on: on a version with its own estimate (flag also caps it by the
    # fold models' fit, which the manifest does not keep), apply's own choice of rows; older
    # versions: the recomputed estimate and suggestions
    own = P_SUGGESTED in rows.columns
    if own:
        p_suggested = rows[P_SUGGESTED].to_numpy(dtype=np.float64)
        suggested = rows[SUGGESTED_LABEL].to_numpy(dtype=object)
    else:
        p_suggested = noise.p_suggested
        suggested = np.asarray(classes, dtype=object)[scores.suggested]
    right = np.array([t == s for t, s in zip(true_arr, suggested, strict=True)])
    auto = {}
    for target in (0.5, 0.7, 0.8, 0.9, 0.95):
        if own:
            chosen = np.zeros(len(rows), dtype=bool)
            chosen[auto_candidates(rows, set(), target)] = True
        else:
            chosen = scores.flagged & (suggested != given) & (p_suggested >= target)
        take = chosen & known
        auto[str(target)] = {
            "accepted": int(take.sum()),
            "expected_precision": round(float(p_suggested[take].mean()), 4) if take.any() else None,
            "measured_precision": round(float(right[take].mean()), 4) if take.any() else None,
        }
    out = {
        "version": info.version,
        "rows": len(rows),
        "rows_with_truth": int(known.sum()),
        "wrong_labels_in_truth": int(wrong[known].sum()),
        "oof_accuracy": round(float((probs.argmax(axis=1) == labels).mean()), 4),
        "ranked_by": f"{method}, fit_weight {info.params.get('fit_weight', 0.0)}",
        "filter": filter_by,
        "flagged": int(scores.flagged.sum()),
        "estimated_wrong_confident_joint": noise.wrong_total,
        "expected_wrong": round(noise.expected_wrong, 1),
        "temperature": round(noise.temperature, 4),
        "anchor_share": noise.anchor_share,
        "precision_at": {
            str(k): {"expected": round(float(est[k - 1]), 4), "measured": round(float(real[k - 1]), 4)} for k in ranks
        },
        "auto_accept": auto,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
