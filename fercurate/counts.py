"""Counting rows by class and split, and rounding shares to whole rows (split, merge-affectnet, history).

Both the class-by-split table and the two rounding rules are used by more than one stage; they live
here, once, so a stage's report and its plan count the same way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fercurate.manifest import ACTIVE, SPLITS, Col


def largest_remainder(
    total: int, weights: np.ndarray | list[float] | tuple[float, ...], allowed: np.ndarray | None = None
) -> np.ndarray:
    """``total`` split into whole parts proportional to ``weights`` (largest remainder, ties to the first).

    Parts outside ``allowed`` (a boolean mask) get nothing; when no allowed part has weight, the allowed
    parts share equally.
    """
    w = np.asarray(weights, dtype=float)
    if allowed is not None:
        w = np.where(allowed, w, 0.0)
        if w.sum() <= 0:
            w = allowed.astype(float)
    ideal = total * w / w.sum()
    out = np.floor(ideal).astype(np.int64)
    left = total - int(out.sum())
    if left > 0:
        out[np.argsort(-(ideal - out), kind="stable")[:left]] += 1
    return out


def matrix_round(rows: np.ndarray, cols: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """Integers near ``rows[s] * cols[c] / total`` whose rows and columns sum exactly to the margins.

    Cells are floored; the units each margin still needs go to the cells with the largest remainder
    (plus ``bias``), then to any cell both margins still need.
    """
    total = int(cols.sum())
    out = np.zeros((len(rows), len(cols)), dtype=np.int64)
    if total == 0:
        return out
    ideal = rows[:, None] * cols[None, :] / total
    out = np.floor(ideal + 1e-9).astype(np.int64)
    row_left = rows - out.sum(axis=1)
    col_left = cols - out.sum(axis=0)
    priority = ideal - out + (bias if bias is not None else 0.0)
    for flat in np.argsort(-priority, axis=None, kind="stable"):
        s, c = divmod(int(flat), len(cols))
        if row_left[s] > 0 and col_left[c] > 0:
            out[s, c] += 1
            row_left[s] -= 1
            col_left[c] -= 1
    for row in np.flatnonzero(row_left > 0):
        while row_left[row] > 0:
            c = int(np.argmax(col_left))
            out[row, c] += 1
            row_left[row] -= 1
            col_left[c] -= 1
    return out


def class_by_split(df: pd.DataFrame, *, every_split: bool = False) -> pd.DataFrame:
    """Active rows counted by class (rows) and split (columns, in train/val/test order), with a ``total`` column.

    Args:
        df: a manifest.
        every_split: keep a column for every split, empty or not; else only the splits that have rows.
    """
    act = df[df[Col.STATUS] == ACTIVE]
    table = pd.crosstab(act[Col.LABEL].astype(str), act[Col.SPLIT].astype(str))
    columns = list(SPLITS) if every_split else [s for s in SPLITS if s in table.columns]
    table = table.reindex(columns=columns, fill_value=0).astype(np.int64)
    table["total"] = table.sum(axis=1)
    return table


def split_tables(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Active rows by class and split: counts, and each class's share of its split in percent.

    Both frames have a row ``all`` and a column ``total``; in the percent frame, row ``all`` holds each
    split's share of all active rows.
    """
    counts = class_by_split(df, every_split=True)
    counts.index.name = "class"
    counts.columns.name = None
    counts.loc["all"] = counts.sum(axis=0)
    sizes = counts.loc["all"].replace(0, np.nan)
    pct = counts.div(sizes, axis=1) * 100.0
    pct.loc["all"] = counts.loc["all"] / max(int(counts.loc["all", "total"]), 1) * 100.0
    return counts, pct
