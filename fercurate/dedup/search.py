"""Finding every pair of 64-bit hashes within a Hamming radius, without a Python loop over pairs.

Two exact strategies, picked by an estimate of their cost:

* **blockwise brute force** (numpy): XOR a block of query hashes against all database hashes and count
  bits with ``np.bitwise_count``; the block size bounds the memory. Cost grows as queries x database;
  it wins up to a few tens of thousands of hashes at any radius, and needs no compiled code.
* **multi-index hashing** (Norouzi et al., 2012), its probing loop compiled with numba
  (:mod:`fercurate.dedup._mih`): cut the 64 bits into ``m`` chunks. Two hashes within radius ``r``
  must agree within radius ``r_k`` on at least one chunk ``k`` whenever ``sum(r_k + 1) > r``
  (the general pigeonhole principle), so each chunk gets a table of the database sorted by the
  chunk's value, and each query probes its own chunk value XOR every mask of at most ``r_k`` bits.
  Every member of a probed bucket is checked on all 64 bits; a pair close on several chunks is
  reported by the first. Cost grows with the number of probes and with how full the probed buckets
  are: for a million random hashes at radius 12, 4 chunks of 16 bits at sub-radii 3/2/2/2 check
  about 1e10 candidates instead of brute force's 5e11 pairs.

Both return the same pairs, in the same order. Memory stays bounded: queries go through in blocks,
spread over one thread per CPU (numpy and the compiled loop release the GIL), and an optional
``keep`` filter drops pairs block by block, so only the survivors of a cheap second test are held.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Bytes of scratch memory a brute-force block may use (the XOR buffer dominates: 8 bytes a pair);
#: small enough to stay in cache, and one block per thread at a time.
_BRUTE_BLOCK_BYTES = 4 << 20
#: Multi-index hashing cuts each chunk's queries into about this many blocks, of at most
#: ``_MIH_BLOCK_MAX`` queries, run on one thread per CPU. Each block's pairs go through ``keep`` as
#: soon as it finishes, so memory holds at most one block's unfiltered pairs per thread.
_MIH_BLOCKS = 64
_MIH_BLOCK_MAX = 4096
#: Slab of probe keys the numpy engine materialises at once (bounds its scratch memory).
_PROBE_SLAB = 1 << 21
#: CPU nanoseconds per pair checked by numpy brute force (the engines' costs are with ``plan_mih``).
_COST_BRUTE = 4.5
#: Queries and database hashes sampled to count how full the probed buckets are.
_PLAN_SAMPLE = 256
_PLAN_DB_SAMPLE = 20_000
#: Below this many pair checks brute force is cheap enough not to plan anything else.
_BRUTE_ALWAYS = 1e8


#: A filter on found pairs: (query positions, database positions) -> boolean mask of those to keep.
Keep = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class HammingPairs:
    """Pairs of positions ``(query, database)`` within the radius, with their distances."""

    query: np.ndarray  # int64
    database: np.ndarray  # int64
    distance: np.ndarray  # uint8

    def __len__(self) -> int:
        return len(self.query)


def hamming_pairs(
    queries: np.ndarray,
    radius: int,
    database: np.ndarray | None = None,
    *,
    strategy: str = "auto",
    keep: Keep | None = None,
) -> HammingPairs:
    """Every pair of hashes within Hamming distance ``radius``.

    Args:
        queries: ``(N,)`` uint64 hashes.
        radius: largest Hamming distance kept (0-64).
        database: ``(M,)`` uint64 hashes to search; None searches ``queries`` against themselves and
            returns each unordered pair once, with ``query < database``.
        strategy: ``auto`` (the cheapest by :func:`plan_mih`'s estimate), ``brute``, ``mih`` (multi-index
            hashing, compiled) or ``mih-numpy`` (the same in plain numpy).
        keep: a further filter ``keep(query_positions, database_positions) -> bool mask``, applied to
            each block of pairs as it is found, so memory holds only the pairs it keeps (a generous
            radius over a large set can find far more pairs than survive a cheap second test).

    Returns:
        The pairs as positions into ``queries`` and ``database`` (or ``queries`` again).
    """
    q = np.ascontiguousarray(queries, dtype=np.uint64)
    self_join = database is None
    db = q if database is None else np.ascontiguousarray(database, dtype=np.uint64)
    if len(q) == 0 or len(db) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return HammingPairs(empty, empty.copy(), np.zeros(0, dtype=np.uint8))
    if strategy == "auto":
        brute = _COST_BRUTE * len(q) * len(db) / (2 if self_join else 1)
        plan = plan_mih(q, db, radius, budget=brute, self_join=self_join) if brute > _BRUTE_ALWAYS else None
        if plan is None:
            return _brute(q, db, radius, self_join, keep)
    elif strategy == "brute":
        return _brute(q, db, radius, self_join, keep)
    elif strategy in ("mih", "mih-numpy"):
        compiled = strategy == "mih"
        plan = plan_mih(q, db, radius, self_join=self_join, compiled=compiled) or _fallback_plan(radius, compiled)
    else:
        raise ValueError(f"unknown strategy {strategy!r}; use auto, brute, mih or mih-numpy")
    return (_mih_compiled if plan.compiled else _mih_numpy)(q, db, radius, self_join, plan, keep)


# -- brute force -----------------------------------------------------------------------------------
def _brute(q: np.ndarray, db: np.ndarray, radius: int, self_join: bool, keep: Keep | None) -> HammingPairs:
    """Blocks of query rows against the database, spread over threads (numpy releases the GIL)."""
    from fercurate.images import in_threads

    rows = max(1, min(len(q), _BRUTE_BLOCK_BYTES // (8 * len(db))))

    def block(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        stop = min(start + rows, len(q))
        # in a self-join only the part right of the diagonal can hold new pairs
        first = start if self_join else 0
        x = np.bitwise_xor(q[start:stop, None], db[None, first:])
        c = np.bitwise_count(x)
        del x
        qi, dj = np.nonzero(c <= radius)
        if self_join:
            right = dj + first > qi + start
            qi, dj = qi[right], dj[right]
        if keep is not None:
            wanted = keep(qi + start, dj + first)
            qi, dj = qi[wanted], dj[wanted]
        return qi + start, dj + first, c[qi, dj]

    parts = in_threads(block, range(0, len(q), rows))
    return HammingPairs(
        np.concatenate([p[0] for p in parts]).astype(np.int64),
        np.concatenate([p[1] for p in parts]).astype(np.int64),
        np.concatenate([p[2] for p in parts]).astype(np.uint8),
    )


# -- multi-index hashing ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MihPlan:
    """How multi-index hashing cuts the bits: chunk widths, the sub-radius probed in each, the engine."""

    widths: tuple[int, ...]
    radii: tuple[int, ...]
    cost: float
    compiled: bool = True


@dataclass(frozen=True)
class _Engine:
    """CPU nanoseconds per probe, per bucket member checked and per hash indexed (per chunk), the
    fixed price of starting, and the widest chunk worth a table. Measured on a 2-core AMD EPYC."""

    probe: float
    hit: float
    index: float
    start: float
    max_bits: int
    compiled: bool


#: numpy materialises every probe and hit as array elements (several passes of 8-byte values), but
#: needs nothing loaded; its probes are vectorised gathers, so wide chunks (fewer hits) pay off.
_NUMPY = _Engine(probe=18.0, hit=67.0, index=18.0, start=0.0, max_bits=22, compiled=False)
#: Compiled, a hit costs a nanosecond and a probe a few (two loads from the bucket table, which must
#: stay in the L2 cache: 2**16 starts, 512 KB; with 2**22 every probe misses it). Starting costs
#: numba's import and the load of the cached machine code, about 0.5 s on one thread.
_COMPILED = _Engine(probe=8.0, hit=1.0, index=100.0, start=1e9, max_bits=16, compiled=True)
_ENGINES = (_NUMPY, _COMPILED)


@functools.lru_cache(maxsize=1)
def numba_available() -> bool:
    """Whether the compiled engine can load (numba is a dependency, but a platform may lack its wheels)."""
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def _volume(bits: int, radius: int) -> int:
    """Masks of ``bits`` bits with at most ``radius`` ones."""
    return sum(math.comb(bits, k) for k in range(min(radius, bits) + 1))


def plan_mih(
    queries: np.ndarray,
    database: np.ndarray,
    radius: int,
    budget: float = math.inf,
    *,
    self_join: bool = False,
    compiled: bool | None = None,
) -> MihPlan | None:
    """The cheapest chunking and engine for this search, or None when none costs less than ``budget``.

    Chunk ``k`` of ``b_k`` bits probed at sub-radius ``r_k`` costs ``V(b_k, r_k)`` probes per query,
    and every database hash in a probed bucket costs a check. How full the probed buckets are is
    counted on a sample of the queries rather than assumed: perceptual hashes of faces are far from
    uniform, and the chunk values of similar faces pile up in a few buckets. The compiled engine
    probes each unordered pair of buckets of a self-join once. Costs are CPU nanoseconds, as
    ``budget`` is. ``compiled`` True or False plans for that engine only.
    """
    rng = np.random.default_rng(0)
    sample = _sample(queries, _PLAN_SAMPLE, rng)
    db_sample = _sample(database, _PLAN_DB_SAMPLE, rng)
    # hits counted on samples of both sides, scaled to the full search
    scale = (len(queries) / max(1, len(sample))) * (len(database) / max(1, len(db_sample)))
    sorted_keys: dict[tuple[int, int], np.ndarray] = {}
    counted: dict[tuple[int, int, int], int] = {}
    best: MihPlan | None = None
    engines = [e for e in _ENGINES if compiled in (None, e.compiled) and (not e.compiled or numba_available())]
    for m, engine in itertools.product(range(2, 9), engines):
        widths, radii = chunking(m, radius)
        if max(widths) > engine.max_bits:
            continue
        half = 0.5 if self_join and engine.compiled else 1.0
        loaded = engine.compiled and "fercurate.dedup._mih" in sys.modules  # its start is paid
        probes = sum(_volume(w, r) for w, r in zip(widths, radii, strict=True))
        floor = (0.0 if loaded else engine.start) + len(queries) * engine.probe * probes * half
        if floor >= min(budget, best.cost if best else math.inf):
            continue  # its probes alone cost more than the best plan so far
        hits = 0
        start = 0
        for w, r in zip(widths, radii, strict=True):
            if (start, w) not in sorted_keys:
                sorted_keys[(start, w)] = np.sort(_chunk(db_sample, start, w))
            if (start, w, r) not in counted:
                counted[(start, w, r)] = _bucket_hits(_chunk(sample, start, w), sorted_keys[(start, w)], w, r)
            hits += counted[(start, w, r)]
            start += w
        cost = floor + scale * engine.hit * hits * half + engine.index * m * len(database)
        if cost < min(budget, best.cost if best else math.inf):
            best = MihPlan(widths, radii, cost, engine.compiled)
    return best


def chunking(m: int, radius: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``m`` chunks of (nearly) equal width and sub-radii for an exact search at ``radius``.

    ``sum(r_k + 1)`` must exceed the radius: the ``radius + 1 - m`` extra units are spread evenly,
    the wider chunks first.
    """
    base, extra = divmod(64, m)
    widths = tuple(base + (1 if k < extra else 0) for k in range(m))
    per, rest = divmod(max(0, radius + 1 - m), m)
    return widths, tuple(per + (1 if k < rest else 0) for k in range(m))


def _fallback_plan(radius: int, compiled: bool) -> MihPlan:
    return MihPlan(*chunking(max(4, min(16, radius + 1)), radius), math.inf, compiled)


def _chunk(values: np.ndarray, start: int, width: int) -> np.ndarray:
    return ((values >> np.uint64(64 - start - width)) & np.uint64((1 << width) - 1)).astype(np.int64)


def _sample(values: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    return values if len(values) <= size else values[rng.choice(len(values), size, replace=False)]


def _bucket_hits(sample_keys: np.ndarray, sorted_db_keys: np.ndarray, width: int, radius: int) -> int:
    """Database keys (of a sorted sample) that the sample's probes of one chunk would check."""
    probes = (sample_keys[:, None] ^ _masks(width, radius)[None, :]).ravel()
    found = np.searchsorted(sorted_db_keys, probes, "right") - np.searchsorted(sorted_db_keys, probes, "left")
    return int(found.sum())


@functools.lru_cache(maxsize=32)
def _masks(bits: int, radius: int) -> np.ndarray:
    """All ``bits``-bit masks with at most ``radius`` ones (read-only int64)."""
    masks = [0]
    for k in range(1, min(radius, bits) + 1):
        masks.extend(sum(1 << b for b in combo) for combo in itertools.combinations(range(bits), k))
    out = np.array(masks, dtype=np.int64)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class _ChunkIndex:
    """One chunk's direct-address table: bucket ``k`` holds ``order[starts[k] : starts[k] + counts[k]]``."""

    order: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    q_keys: np.ndarray
    masks: np.ndarray
    slab: int


def _mih_numpy(
    q: np.ndarray, db: np.ndarray, radius: int, self_join: bool, plan: MihPlan, keep: Keep | None
) -> HammingPairs:
    """Multi-index hashing in numpy: each slab of queries' probes and bucket hits as arrays."""
    from fercurate.images import in_threads

    found_q: list[np.ndarray] = [np.zeros(0, np.int64)]
    found_d: list[np.ndarray] = [np.zeros(0, np.int64)]
    start_bit = 0
    for width, sub_radius in zip(plan.widths, plan.radii, strict=True):
        db_keys = _chunk(db, start_bit, width)
        counts = np.bincount(db_keys, minlength=1 << width).astype(np.int32)
        masks = _masks(width, sub_radius).astype(np.int32)
        index = _ChunkIndex(
            order=np.argsort(db_keys, kind="stable"),
            starts=np.cumsum(counts, dtype=np.int64) - counts,
            counts=counts,
            q_keys=_chunk(q, start_bit, width).astype(np.int32),
            masks=masks,
            slab=max(1, _PROBE_SLAB // len(masks)),
        )
        start_bit += width
        slabs = range(0, len(q), index.slab)
        probe = functools.partial(_probe, index, q, db, radius, self_join, keep)
        for qi, dj in in_threads(probe, slabs):
            found_q.append(qi)
            found_d.append(dj)
    qi, dj = np.concatenate(found_q).astype(np.int64), np.concatenate(found_d).astype(np.int64)
    # a pair close on several chunks was found once per chunk
    key = np.unique(qi * len(db) + dj)
    qi, dj = key // len(db), key % len(db)
    return HammingPairs(qi, dj, np.bitwise_count(q[qi] ^ db[dj]).astype(np.uint8))


def _probe(
    index: _ChunkIndex, q: np.ndarray, db: np.ndarray, radius: int, self_join: bool, keep: Keep | None, s: int
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs one slab of queries finds through one chunk's table."""
    probes = (index.q_keys[s : s + index.slab, None] ^ index.masks[None, :]).ravel()
    n = index.counts[probes]
    hit = np.flatnonzero(n)  # most probes find an empty bucket: drop them first
    n = n[hit]
    total = int(n.sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    qi = np.repeat(s + hit // len(index.masks), n)
    offset = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    dj = index.order[np.repeat(index.starts[probes[hit]], n) + offset]
    near = np.bitwise_count(q[qi] ^ db[dj]) <= radius
    if self_join:
        near &= dj > qi
    qi, dj = qi[near], dj[near]
    if keep is not None:
        wanted = keep(qi, dj)
        qi, dj = qi[wanted], dj[wanted]
    return qi, dj


def _mih_compiled(
    q: np.ndarray, db: np.ndarray, radius: int, self_join: bool, plan: MihPlan, keep: Keep | None
) -> HammingPairs:
    """Multi-index hashing, the probing loop compiled (:mod:`fercurate.dedup._mih`), blocks in threads."""
    from fercurate.dedup._mih import probe_block
    from fercurate.images import in_threads

    m = len(plan.widths)
    ends = np.cumsum(plan.widths)
    shifts = (64 - ends).astype(np.uint64)
    key_masks = np.array([(1 << w) - 1 for w in plan.widths], dtype=np.uint64)
    order = np.empty((m, len(db)), dtype=np.int64)
    sorted_hashes = np.empty((m, len(db)), dtype=np.uint64)
    bucket_starts = np.zeros((m, (1 << max(plan.widths)) + 1), dtype=np.int64)
    for c, width in enumerate(plan.widths):
        keys = ((db >> shifts[c]) & key_masks[c]).astype(np.int64)
        order[c] = np.argsort(keys, kind="stable")
        sorted_hashes[c] = db[order[c]]
        bucket_starts[c, 1 : (1 << width) + 1] = np.cumsum(np.bincount(keys, minlength=1 << width))
    mask_lists = [_masks(w, r).astype(np.uint64) for w, r in zip(plan.widths, plan.radii, strict=True)]
    masks = np.concatenate(mask_lists)
    mask_starts = np.concatenate([[0], np.cumsum([len(x) for x in mask_lists])]).astype(np.int64)
    tables = (shifts, key_masks, np.array(plan.radii, dtype=np.int64), bucket_starts, sorted_hashes, order)

    n = len(db) if self_join else len(q)
    block = min(_MIH_BLOCK_MAX, max(256, -(-n // _MIH_BLOCKS)))
    tasks = [(c, lo, min(lo + block, n)) for c in range(m) for lo in range(0, n, block)]

    def run(task: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        qi, dj, dist = probe_block(*task, q, self_join, radius, *tables, masks, mask_starts)
        if keep is not None and len(qi):
            wanted = keep(qi, dj)
            qi, dj, dist = qi[wanted], dj[wanted], dist[wanted]
        return qi, dj, dist

    parts = in_threads(run, tasks)
    qi = np.concatenate([p[0] for p in parts])
    dj = np.concatenate([p[1] for p in parts])
    dist = np.concatenate([p[2] for p in parts])
    first = np.lexsort((dj, qi))  # the order brute force gives, whatever the blocks' order
    return HammingPairs(qi[first], dj[first], dist[first])
