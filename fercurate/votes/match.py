"""Matching FER+ images to manifest rows by their pixels (pure: arrays in, arrays out).

FER+ ships PNGs of FER2013's pixels; a FER2013 CSV holds the same pixels (they match exactly once
decoded), while the Kaggle folder layout holds JPEG re-encodings (they differ by about 1-2 grey
levels RMS). Each FER+ image is matched to a row *of the same Usage* by RMS grey-level difference,
found through a k-d tree over 16x16-block means (a 3x3 grid: JPEG noise averages out, and a k-d tree
stays fast in 9 dimensions) and confirmed on the full pixels.

FER2013 holds the same photo more than once, so an image often has several equally near rows: the
rows within ``min_margin`` of the nearest (only the identical ones when the nearest is identical)
are its *tied* rows, re-encodings of the same pixels. FER+ images take their tied rows one to one,
nearest first (then file order), so two FER+ copies of a photo never share one row. Statuses:

* ``matched``: nearest distance within ``max_distance`` and a tied row still free; ``margin`` is how
  much further the nearest row outside the tie is (NaN when none of the candidates checked is);
* ``ambiguous``: within ``max_distance`` but every tied row is taken by another FER+ image;
* ``unmatched``: no row within ``max_distance``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MATCHED, AMBIGUOUS, UNMATCHED = "matched", "ambiguous", "unmatched"
#: Candidates checked on full pixels per FER+ image (nearest by block means first).
NEIGHBOURS = 6
BLOCK = 16


@dataclass(frozen=True)
class Matches:
    """Per FER+ image: its row (-1 when none), the RMS distance to it, the margin, and the status."""

    row: np.ndarray
    distance: np.ndarray
    margin: np.ndarray
    status: np.ndarray

    def count(self, status: str) -> int:
        return int((self.status == status).sum())


def block_means(pixels: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """``(N, (side / block)**2)`` float32 means of ``block`` x ``block`` tiles (JPEG noise averages out)."""
    n, h, w = pixels.shape
    hb, wb = h // block, w // block
    tiles = pixels[:, : hb * block, : wb * block].reshape(n, hb, block, wb, block)
    return tiles.mean(axis=(2, 4), dtype=np.float32).reshape(n, hb * wb)


def rms(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """RMS grey-level difference between paired images ``a[i]`` and ``b[i]`` (in chunks: small temporaries)."""
    a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
    out = np.empty(len(a2), dtype=np.float64)
    for start in range(0, len(a2), chunk):
        diff = a2[start : start + chunk].astype(np.int32) - b2[start : start + chunk]
        out[start : start + chunk] = np.einsum("ij,ij->i", diff, diff)
    return np.sqrt(out / max(a2.shape[1], 1))


def _unique_images(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of one image per identical-pixel group, and each image's group number."""
    flat = np.ascontiguousarray(pixels.reshape(len(pixels), -1))
    keys = flat.view(np.dtype((np.void, flat.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first, inverse.ravel()


def match_images(
    query: np.ndarray,
    query_usage: Sequence[str],
    rows: np.ndarray,
    row_usage: Sequence[str],
    max_distance: float,
    min_margin: float,
) -> Matches:
    """Match every ``query`` image (FER+) to at most one of ``rows`` (manifest pixels) of its Usage."""
    m = len(query)
    out_row = np.full(m, -1, dtype=np.int64)
    out_dist = np.full(m, np.nan, dtype=np.float64)
    out_margin = np.full(m, np.nan, dtype=np.float64)
    status = np.full(m, UNMATCHED, dtype=object)
    q_usage = np.asarray(query_usage, dtype=object)
    r_usage = np.asarray(row_usage, dtype=object)
    for usage in dict.fromkeys(query_usage):
        q_idx = np.flatnonzero(q_usage == usage)
        r_idx = np.flatnonzero(r_usage == usage)
        if len(r_idx) == 0:
            continue
        near, dist = _candidates(query[q_idx], rows[r_idx])
        members = _members(rows[r_idx], r_idx)
        d0 = dist[:, 0]
        out_dist[q_idx] = d0
        taken: set[int] = set()
        for j in sorted(np.flatnonzero(d0 <= max_distance), key=lambda j: (d0[j], j)):
            tie = min_margin if d0[j] > 0 else 0.0
            tied = dist[j] <= d0[j] + tie
            outside = dist[j][~tied]
            out_margin[q_idx[j]] = outside[0] - d0[j] if len(outside) else np.nan
            free = [row for g in near[j][tied] for row in members[int(g)] if row not in taken]
            if free:
                out_row[q_idx[j]] = free[0]
                taken.add(free[0])
                status[q_idx[j]] = MATCHED
            else:
                status[q_idx[j]] = AMBIGUOUS
    return Matches(row=out_row, distance=out_dist, margin=out_margin, status=status)


def _candidates(query: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the nearest distinct row images (as group numbers) and their RMS distances, nearest first."""
    from scipy.spatial import cKDTree

    first, _ = _unique_images(rows)
    uniq = rows[first]
    k = min(NEIGHBOURS, len(uniq))
    _, near = cKDTree(block_means(uniq)).query(block_means(query), k=k, workers=-1)
    near = np.asarray(near).reshape(len(query), k)
    dist = np.stack([rms(query, uniq[near[:, c]]) for c in range(k)], axis=1)
    order = np.argsort(dist, axis=1, kind="stable")
    return np.take_along_axis(near, order, axis=1), np.take_along_axis(dist, order, axis=1)


def _members(rows: np.ndarray, index: np.ndarray) -> dict[int, list[int]]:
    """Identical-pixel group number -> the ``index`` values of its rows, in order."""
    _, group = _unique_images(rows)
    members: dict[int, list[int]] = {}
    for pos, g in enumerate(group.tolist()):
        members.setdefault(g, []).append(int(index[pos]))
    return members
