"""Pure scoring helpers of the real-data runner (``bench/real/run.py``): arrays and tables in, figures out.

Kept apart from the runner so that ``tests/test_bench_real.py`` can check them on tiny synthetic
inputs; nothing here reads files or runs fercurate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

#: FER+ vote columns mapped onto fercurate's class names (contempt, unknown and NF map to nothing).
FERPLUS_TO_CLASS = {
    "neutral": "neutral",
    "happiness": "happy",
    "surprise": "surprise",
    "sadness": "sad",
    "anger": "angry",
    "disgust": "disgust",
    "fear": "fear",
}
#: Similarity bands (lower edges, best first) in which dedup recall is reported, as in the dedup issue.
SIMILARITY_BANDS = (0.99, 0.97, 0.95, 0.92, 0.90)


def annotator_class(votes: pd.DataFrame, min_agree: int = 6) -> pd.Series:
    """The class at least ``min_agree`` annotators chose, or None where no class reached it.

    Args:
        votes: one row per image, with (a subset of) the FER+ vote columns as counts.
        min_agree: votes a class needs (6 of 10 by default).
    """
    cols = [c for c in FERPLUS_TO_CLASS if c in votes.columns]
    counts = votes[cols].to_numpy()
    best = counts.argmax(axis=1)
    top = counts[np.arange(len(counts)), best]
    names = np.array([FERPLUS_TO_CLASS[c] for c in cols], dtype=object)
    return pd.Series(np.where(top >= min_agree, names[best], None), index=votes.index, dtype=object)


def mislabelled(given: Sequence[str], annotators: Sequence[str | None]) -> np.ndarray:
    """True where the annotators agree on a class other than the given label."""
    return np.array([a is not None and a != g for g, a in zip(given, annotators, strict=True)], dtype=bool)


def precision_at(truth_in_rank_order: np.ndarray, ks: Iterable[int]) -> dict[int, float | None]:
    """Share of true items among the first k of a ranking (None when the ranking is empty).

    When the ranking holds fewer than k items, the share is taken over all of them.
    """
    truth = np.asarray(truth_in_rank_order, dtype=bool)
    return {k: (float(truth[:k].mean()) if len(truth) else None) for k in ks}


def set_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of a predicted set against a true set (boolean masks over the same rows)."""
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    hit = int((predicted & truth).sum())
    precision = hit / predicted.sum() if predicted.any() else 0.0
    recall = hit / truth.sum() if truth.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def band_of(similarity: float | None, bands: Sequence[float] = SIMILARITY_BANDS) -> str:
    """The band label of a similarity: '0.99+', '0.97-0.99', ..., '<0.90', or 'unknown'."""
    if similarity is None or not np.isfinite(similarity):
        return "unknown"
    if similarity >= bands[0]:
        return f"{bands[0]:.2f}+"
    for hi, lo in zip(bands, bands[1:], strict=False):
        if similarity >= lo:
            return f"{lo:.2f}-{hi:.2f}"
    return f"<{bands[-1]:.2f}"


def components(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Union-find over pairs: each item mapped to a representative of its connected group."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: root(x) for x in list(parent)}


def pair_scores(found: pd.DataFrame, truth: pd.DataFrame, universe: set[str]) -> dict:
    """Precision and recall of duplicate pairs found, against same-photo pairs established by hand.

    Args:
        found: pairs reported by dedup, columns ``a``, ``b`` (item keys) and ``kind``.
        truth: same-photo pairs, columns ``a``, ``b``, ``kind`` and optionally ``similarity`` (for bands).
        universe: the items the truth covers; pairs (found or true) with an item outside it are
            left out of the counts, but found pairs through such items still join groups.

    A truth pair counts as found when dedup put both in one group (its reported pairs, joined
    transitively), since dedup removes by group. A reported pair counts as right when its two items
    are in one group of the truth (truth pairs joined transitively), so a truth table that lists a
    group by a chain of pairs is not held against dedup.

    Returns:
        ``precision``, ``recall``, ``found_pairs``, ``truth_pairs``, ``precision_by_kind`` (kind as
        dedup reported it), ``recall_by_kind`` (kind as the truth says), ``recall_by_band``; each of
        the last three maps a name to ``{"n": pairs, "value": share}``.
    """
    truth = truth[truth["a"].isin(universe) & truth["b"].isin(universe)]
    # groups from every reported pair (a group may be joined through an image outside the universe)
    found_group = components(zip(found["a"], found["b"], strict=True))
    found = found[found["a"].isin(universe) & found["b"].isin(universe)]
    truth_group = components(zip(truth["a"], truth["b"], strict=True))

    def together(groups: dict[str, str], a: str, b: str) -> bool:
        return a in groups and b in groups and groups[a] == groups[b]

    right = np.array([together(truth_group, a, b) for a, b in zip(found["a"], found["b"], strict=True)], dtype=bool)
    hit = np.array([together(found_group, a, b) for a, b in zip(truth["a"], truth["b"], strict=True)], dtype=bool)

    def by(keys: Iterable[str], mask: np.ndarray) -> dict[str, dict]:
        frame = pd.DataFrame({"key": list(keys), "ok": mask})
        return {str(k): {"n": int(len(g)), "value": float(g["ok"].mean())} for k, g in frame.groupby("key", sort=True)}

    bands = truth["similarity"].map(band_of) if "similarity" in truth.columns else ["unknown"] * len(truth)
    return {
        "precision": float(right.mean()) if len(right) else None,
        "recall": float(hit.mean()) if len(hit) else None,
        "found_pairs": int(len(found)),
        "truth_pairs": int(len(truth)),
        "precision_by_kind": by(found["kind"], right),
        "recall_by_kind": by(truth["kind"], hit),
        "recall_by_band": by(bands, hit),
    }
