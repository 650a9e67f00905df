"""``fercurate dedup``: find the same photo twice (re-encoded, brightened, resized, shifted, flipped).

The stage reads one manifest version, hashes every active row (``hashers``: pHash by default, equal
to ``imagehash.phash`` bit for bit, cached by sha256), finds candidate pairs by Hamming search
(``search``) and verifies each with a pixel-level similarity (``match``), groups duplicates
transitively and writes a new version (``stage``) plus reports: a pairs table, contact sheets of
cross-split pairs and of the largest groups, and a leakage summary per pair of splits.

Columns written (null for rows that are not active, or not duplicated):

- ``phash`` (or the chosen hasher's name): 16 hex digits, as ``str(imagehash.phash(img))``;
- ``dup_group``: ``g`` + the smallest ``image_id`` of the group; ``dup_group_size``;
- ``dup_kind``: ``exact`` (all its links are identical pixels), ``near``, ``recrop`` (the same photo
  cut with another face box: zoomed and shifted), or ``mirror`` (found only
  through the flipped image, with ``--mirror``);
- ``dup_nearest`` / ``dup_similarity``: the most similar other member and the similarity (1.0 for
  identical pixels).

Resolution rule (deterministic). In every group one member stays active: the first by

1. its label is the group's majority label (more than half of the members carry it);
2. its split: train before val before test (so the copies leaking into val/test go);
3. the larger original image (width x height);
4. the path, in string order.

The others get ``status=removed`` and ``reason=duplicate_of:<kept image_id>``. Groups whose members
carry different labels (label conflicts) follow ``--conflicts``:

- ``remove-all`` (default): with a majority label, as above; without one, every member is removed
  with ``reason=duplicate_conflict:<dup_group>`` (nobody knows which label is right);
- ``keep-majority``: always keep one member: of the majority label, or without a majority of the
  most frequent labels (rules 2-4 decide among them); never remove a whole group;
- ``keep-all``: leave every member of a conflict group active (they keep their ``dup_group``, so
  ``fercurate split`` keeps them in one split); label-consistent groups are resolved as above.

Invalid and already removed rows are never touched.
"""

from fercurate.dedup.cache import HashCache
from fercurate.dedup.hashers import HASHERS, Hasher
from fercurate.dedup.match import find_duplicate_pairs, match_against
from fercurate.dedup.params import CONFLICT_MODES, RANGES, DedupParams
from fercurate.dedup.search import hamming_pairs
from fercurate.dedup.stage import DUP_COLUMNS, DedupResult, dedup, lineage_tolerances

__all__ = [
    "CONFLICT_MODES",
    "DUP_COLUMNS",
    "HASHERS",
    "RANGES",
    "DedupParams",
    "DedupResult",
    "HashCache",
    "Hasher",
    "dedup",
    "find_duplicate_pairs",
    "hamming_pairs",
    "lineage_tolerances",
    "match_against",
]
