"""Compiled multi-index hashing: every pair of 64-bit hashes within a Hamming radius.

The probing loop of multi-index hashing (for each hash, each chunk, each mask of the chunk's
sub-radius: walk one bucket and check every member on all 64 bits) is a triple loop over data that
numpy can only express by materialising every candidate, several arrays of 8 bytes each. Compiled
with numba the same loop checks a candidate in about a nanosecond with nothing materialised, which is
what makes a generous radius over a million hashes affordable (~1e10 checks at radius 12).

Imported only for searches large enough to pay numba's import and cached-code load (about 0.4 s);
the compiled code is cached next to this file (``cache=True``), so only the first run anywhere
compiles (a few seconds).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

#: Slots the per-block output starts with; doubled whenever it fills.
_START_CAPACITY = 1 << 12


@intrinsic
def _popcount(typingctx, x):  # type: ignore[no-untyped-def]  # noqa: ARG001 (numba's signature)
    """The CPU's population count of a uint64 (LLVM ``ctpop``)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]  # noqa: ARG001
        return builder.ctpop(args[0])

    return sig, codegen


@njit(cache=True, nogil=True)
def _grow(a: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    out = np.empty(2 * len(a), dtype=a.dtype)
    out[: len(a)] = a
    return out


@njit(cache=True, nogil=True)
def probe_block(
    chunk: int,
    lo: int,
    hi: int,
    queries: np.ndarray,
    self_join: bool,
    radius: int,
    shifts: np.ndarray,
    key_masks: np.ndarray,
    sub_radii: np.ndarray,
    bucket_starts: np.ndarray,
    sorted_hashes: np.ndarray,
    order: np.ndarray,
    masks: np.ndarray,
    mask_starts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """The pairs queries ``lo:hi`` find through chunk ``chunk``'s table.

    Chunk ``c`` is ``(hash >> shifts[c]) & key_masks[c]`` (uint64 arrays) and is probed with the
    masks ``masks[mask_starts[c] : mask_starts[c + 1]]``. ``sorted_hashes[chunk]`` holds the
    database sorted by the chunk's value, ``order[chunk]`` their positions, and bucket ``b`` is
    ``bucket_starts[chunk, b] : bucket_starts[chunk, b + 1]``. A pair close on an earlier chunk too
    is left to that chunk, so every pair is reported once.

    In a self-join the queries are the sorted database itself (``lo:hi`` are sorted positions) and
    only buckets at or above the query's own are probed (within its own bucket, only the members
    after it): each unordered pair is checked once. Pairs come out as ``(smaller, larger)``.
    """
    shift, key_mask = shifts[chunk], key_masks[chunk]
    m0, m1 = mask_starts[chunk], mask_starts[chunk + 1]
    db = sorted_hashes[chunk]
    pos = order[chunk]
    starts = bucket_starts[chunk]
    out_q = np.empty(_START_CAPACITY, dtype=np.int64)
    out_d = np.empty(_START_CAPACITY, dtype=np.int64)
    out_dist = np.empty(_START_CAPACITY, dtype=np.uint8)
    found = 0
    for a in range(lo, hi):
        h = db[a] if self_join else queries[a]
        key = (h >> shift) & key_mask
        for mi in range(m0, m1):
            bucket = key ^ masks[mi]
            first, last = starts[bucket], starts[bucket + 1]
            if self_join:
                if bucket < key:
                    continue
                if bucket == key:
                    first = a + 1
            for p in range(first, last):
                x = h ^ db[p]
                d = np.int64(_popcount(x))  # type: ignore[call-arg]
                if d > radius:
                    continue
                seen = False
                for c in range(chunk):
                    if np.int64(_popcount((x >> shifts[c]) & key_masks[c])) <= sub_radii[c]:  # type: ignore[call-arg]
                        seen = True
                        break
                if seen:
                    continue
                if found == len(out_q):
                    out_q, out_d, out_dist = _grow(out_q), _grow(out_d), _grow(out_dist)
                i, j = (pos[a], pos[p]) if self_join else (a, pos[p])
                if self_join and j < i:
                    i, j = j, i
                out_q[found], out_d[found], out_dist[found] = i, j, d
                found += 1
    return out_q[:found], out_d[:found], out_dist[:found]
